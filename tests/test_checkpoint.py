"""The background checkpointer copies the write-ahead log into the database file beside
the writers: a writer holding its transaction open is not waited for, and does not wait."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from maild.db.checkpoint import Checkpointer
from maild.db.session import Database


def test_the_log_is_copied_while_a_writer_holds_its_transaction(tmp_path: Path) -> None:
    path = tmp_path / "maild.db"
    db = Database(f"sqlite:///{path}")
    with db.begin() as connection:
        connection.execute(text("CREATE TABLE t (x BLOB)"))
    with Checkpointer(db.engine, interval=0.01) as checkpointer:
        with db.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))
        checkpointer.checkpointed.clear()
        # A writer in the middle of its transaction, holding SQLite's writer lock.
        with db.begin() as writer:
            writer.execute(text("INSERT INTO t VALUES (zeroblob(10))"))
            assert checkpointer.checkpointed.wait(10)
            # The committed row left the log for the database file; the open one did not.
            assert path.stat().st_size > 100_000
        assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (2,)
    db.dispose()


def test_nothing_runs_for_postgresql_or_memory() -> None:
    for url in ("sqlite://", "postgresql+psycopg://nobody@127.0.0.1:1/none"):
        db = Database(url)
        with Checkpointer(db.engine, interval=0.01) as checkpointer:
            assert checkpointer._thread is None
        db.dispose()
