"""Engines and transactions. Only the spool, the processor and the CLI's readers open one."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from maild.errors import TemporaryFailure


def make_engine(
    url: str,
    *,
    busy_timeout_ms: int = 10_000,
    durable: bool = True,
    connect_timeout: int = 10,
    read_only: bool = False,
) -> Engine:
    """An engine whose commits are on disk when they return (`durable`), or not quite:
    a non-durable commit may be lost to a power cut (never to a crash of maild), which
    is fine for work the spool can replay.

    `read_only` (SQLite): its transactions take no write lock, see `Database.read`.

    `connect_timeout` (PostgreSQL): a server host that stops answering would otherwise
    hold a connection attempt, and the SMTP session waiting on it, for the system's TCP
    timeout (minutes) instead of failing into a prompt 451.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
        _configure_sqlite(engine, busy_timeout_ms, durable, read_only)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": connect_timeout}
    if not durable:
        connect_args["options"] = "-c synchronous_commit=off"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, durable: bool, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN IMMEDIATE below
        # is the only BEGIN; otherwise reads start deferred transactions that later fail
        # to upgrade to writes under a concurrent writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # Spooled raw mail makes the WAL grow fast; at the default 1,000 pages (4 MB) a
        # bulk ingest paid a checkpoint with two fsyncs every few dozen mails.
        cursor.execute("PRAGMA wal_autocheckpoint=16384")
        cursor.close()

    # Set on the dialect, not in a "begin" event: an engine with a connection event
    # dispatches events around every statement, some 3 µs each, a dozen times a mail.
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
    engine.dialect.do_begin = (  # type: ignore[method-assign]
        lambda dbapi_connection: dbapi_connection.execute(begin)
    )


class WriterLock:
    """An exclusive lock beside the SQLite file, taken around each transaction.

    SQLite lets one writer in at a time, and a connection that finds the database locked
    polls with growing sleeps (1, 2, 5, 10 … ms), so an SMTP session waiting behind a
    worker's transaction slept well past the moment the lock was free. Waiting on a
    file lock instead wakes the next writer as soon as the last one commits, across the
    daemon's threads and worker processes and a concurrent `maild ingest`. SQLite's own
    busy timeout stays as the safety net for anything that writes without this lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._holding = threading.local()

    @contextmanager
    def held(self) -> Iterator[None]:
        if getattr(self._holding, "fd", None) is not None:
            # A transaction opened inside another on the same thread: waiting for our own
            # lock would hang for ever, so leave it to SQLite (as without this lock).
            yield
            return
        # A descriptor per holder: flock() conflicts between open file descriptions, so
        # two threads sharing one descriptor would both get in.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise TemporaryFailure(f"database lock file unavailable: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._holding.fd = fd
            yield
        finally:
            self._holding.fd = None
            os.close(fd)  # closing releases the lock


def writer_lock_for(url: str) -> WriterLock | None:
    """The lock file of an SQLite database file (None for PostgreSQL or in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return WriterLock(f"{parsed.database}.lock")


class _Pin(threading.local):
    """This thread's `Database.pinned` block, if it is in one."""

    active = False
    connection: Connection | None = None


class Database:
    """Two engines on one database — durable commits for what we acknowledge, replayable
    ones for what the spool can redo — and `transaction()`, the unit of work."""

    def __init__(
        self, url: str, *, busy_timeout_ms: int = 10_000, connect_timeout: int = 10
    ) -> None:
        self.engine = make_engine(
            url, busy_timeout_ms=busy_timeout_ms, connect_timeout=connect_timeout
        )
        self._replayable_engine = make_engine(
            url, busy_timeout_ms=busy_timeout_ms, durable=False, connect_timeout=connect_timeout
        )
        # PostgreSQL has no write lock to leave alone: its readers share the engine.
        self._read_engine = (
            make_engine(url, busy_timeout_ms=busy_timeout_ms, read_only=True)
            if self.engine.dialect.name == "sqlite"
            else self.engine
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)
        self._replayable = sessionmaker(self._replayable_engine, expire_on_commit=False)
        self._writer_lock = writer_lock_for(url)
        self._pin = _Pin()

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self, *, replayable: bool = False) -> Iterator[Session]:
        """Commit on success, roll back on error; database outages become TemporaryFailure.

        `replayable=True` is for work derived from durable spool rows: if its commit is
        lost to a power cut, the spool still says pending and the work is simply redone,
        so it need not wait for the disk.
        """
        factory = self._replayable if replayable else self._sessions
        with self._guarded(), factory.begin() as session:
            yield session

    @contextmanager
    def begin(self, *, replayable: bool = False) -> Iterator[Connection]:
        """`transaction` on a bare connection, for the paths that run once per mail and
        issue statements only: setting up and tearing down an ORM session for each cost
        as much as half the statements of a mail."""
        if replayable and self._pin.active:
            try:
                with self._guarded():
                    if self._pin.connection is None:
                        self._pin.connection = self._replayable_engine.connect()
                    with self._pin.connection.begin():
                        yield self._pin.connection
            except TemporaryFailure:
                # The next transaction takes a connection from the pool, which checks
                # it before handing it out (a PostgreSQL restart, say).
                self._unpin()
                raise
            return
        engine = self._replayable_engine if replayable else self.engine
        with self._guarded(), engine.begin() as connection:
            yield connection

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Within this block, the thread's replayable `begin` transactions share one
        connection rather than each taking one from the pool and giving it back, which
        was a twentieth of the work of filing a mail. For a loop that files mail after
        mail: a bulk import, a worker."""
        self._pin.active = True
        try:
            yield
        finally:
            self._pin.active = False
            self._unpin()

    def _unpin(self) -> None:
        connection, self._pin.connection = self._pin.connection, None
        if connection is not None:
            connection.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it takes neither the writer lock nor
        SQLite's own (a WAL reader sees the last commit, and writers go on meanwhile):
        a worker reading the next mails, or a health check counting them, would otherwise
        hold up every SMTP session waiting to commit the mail it is about to acknowledge.
        """
        with self._guarded(writing=False), self._readers.begin() as session:
            yield session

    @contextmanager
    def _guarded(self, *, writing: bool = True) -> Iterator[None]:
        lock = self._writer_lock.held() if self._writer_lock and writing else nullcontext()
        try:
            with lock:
                yield
        except OperationalError as exc:
            raise TemporaryFailure(f"database unavailable: {_first_line(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise TemporaryFailure(f"database connection lost: {_first_line(exc)}") from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()
        self._replayable_engine.dispose()
        self._read_engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
