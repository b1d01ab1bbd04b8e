"""Copy SQLite's write-ahead log into the database file from a thread of its own.

Left alone, SQLite checkpoints inside whichever commit takes the log past
`wal_autocheckpoint` pages: that one commit copies the whole log into the database file
and waits for the disk (80-90 ms for a bulk import's 64 MB, measured with
bench/ingest.py), while the writer lock is held. A PASSIVE checkpoint from another
connection does the same work beside the writers without blocking them, and SQLite
releases the GIL while it copies and syncs, so the writing thread goes on meanwhile.
The per-connection autocheckpoint stays as the backstop for writers without one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from types import TracebackType

from sqlalchemy import Engine

from maild.logs import event

log = logging.getLogger("maild.db")

_INTERVAL = 0.25


class Checkpointer:
    """Checkpoints every `interval` seconds from `start` (or entering a `with` block) to
    `stop`. Does nothing for PostgreSQL or an in-memory SQLite database."""

    def __init__(self, engine: Engine, interval: float = _INTERVAL) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set after each checkpoint (for tests, which clear it and wait).
        self.checkpointed = threading.Event()

    def start(self) -> None:
        url = self._engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            self._thread = threading.Thread(target=self._run, name="maild-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Checkpointer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            connection = self._engine.raw_connection()
        except Exception as exc:  # SQLite's own checkpoints still happen
            event(log, "background checkpoints off", logging.WARNING, reason=str(exc))
            return
        # Without implicit transactions (session.py), so this takes no lock a writer
        # would wait for.
        driver = connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            while not self._stop.wait(self._interval):
                try:
                    driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpointed.set()
                except sqlite3.Error as exc:  # busy or gone for now: next time
                    event(log, "background checkpoint failed", logging.DEBUG, reason=str(exc))
        finally:
            connection.close()
