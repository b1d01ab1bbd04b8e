"""The SQLite writer lock and the worker's batched peek at pending mail."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from maild import spool
from maild.app import App
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.pipeline.limits import MailLimits
from maild.pipeline.parse import parse_or_error
from maild.types import Envelope, SpoolState
from tests.conftest import make_mail


def test_a_waiting_writer_outlasts_sqlites_busy_timeout_on_the_lock_file(tmp_path: Path) -> None:
    # A busy timeout this short makes a writer that relied on SQLite's own polling fail
    # with "database is locked" while the first transaction is still open.
    db = Database(f"sqlite:///{tmp_path / 'maild.db'}", busy_timeout_ms=50)
    holding = threading.Event()
    release = threading.Event()
    second: list[object] = []

    def first_writer() -> None:
        with db.transaction():
            holding.set()
            release.wait(30)

    def second_writer() -> None:
        try:
            with db.transaction():
                second.append("committed")
        except Exception as exc:  # recorded: the assertion below says what went wrong
            second.append(exc)

    first = threading.Thread(target=first_writer)
    first.start()
    assert holding.wait(30)
    waiting = threading.Thread(target=second_writer)
    waiting.start()
    waiting.join(0.5)  # ten busy timeouts: without the file lock it has failed by now
    assert second == [] and waiting.is_alive()
    release.set()
    first.join(30)
    waiting.join(30)
    assert second == ["committed"]
    assert (tmp_path / "maild.db.lock").exists()
    db.dispose()


def test_reads_go_on_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    # A worker peeking at the next mails, or a health check counting them, must not
    # hold up (or wait for) an SMTP session committing the mail it will acknowledge.
    db = Database(f"sqlite:///{tmp_path / 'maild.db'}", busy_timeout_ms=50)
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    holding = threading.Event()
    release = threading.Event()
    seen: list[list[int]] = []

    def read() -> list[int]:
        with db.read() as session:
            return list(session.scalars(text("SELECT n FROM t ORDER BY n")))

    def writer() -> None:
        with db.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(30)
        reader = threading.Thread(target=lambda: seen.append(read()))
        reader.start()
        reader.join(5)
        # Done while the writer still holds its lock, and blind to its uncommitted row.
        assert not reader.is_alive() and seen == [[1]]
    finally:
        release.set()
        thread.join(30)
    assert read() == [1, 2]
    db.dispose()


def test_peek_many_takes_the_oldest_pending_within_count_and_bytes(app: App) -> None:
    raws = [make_mail(message_id=f"<p{n}@customer.example>") for n in range(5)]
    ids = spool.put_many(app.db, [(raw, Envelope()) for raw in raws], "test", app.clock.now())

    assert [p.id for p in spool.peek_many(app.db, after_id=0, limit=3, max_bytes=1 << 20)] == (
        ids[:3]
    )
    assert [p.id for p in spool.peek_many(app.db, after_id=ids[2], limit=9, max_bytes=1 << 20)] == (
        ids[3:]
    )
    # Past the first mail, the byte bound stops the batch; the first always comes.
    alone = spool.peek_many(app.db, after_id=0, limit=9, max_bytes=1)
    assert [(p.id, p.raw) for p in alone] == [(ids[0], raws[0])]
    assert spool.peek_many(app.db, after_id=ids[-1], limit=9, max_bytes=1 << 20) == []


def test_put_many_stores_each_mail_with_its_bytes_and_nothing_for_no_mail(app: App) -> None:
    raws = [make_mail(message_id=f"<b{n}@customer.example>") for n in range(3)]
    envelopes = [Envelope(mail_from=f"s{n}@customer.example") for n in range(3)]
    assert spool.put_many(app.db, [], "test", app.clock.now()) == []
    ids = spool.put_many(app.db, list(zip(raws, envelopes, strict=True)), "test", app.clock.now())
    assert ids == sorted(ids) and len(set(ids)) == 3
    with app.db.transaction() as session:
        assert [spool.raw_of(session, i) for i in ids] == raws
        rows = session.execute(text("SELECT id, state, source, size FROM spool ORDER BY id")).all()
        assert [(r.id, r.state, r.source, r.size) for r in rows] == [
            (i, "pending", "test", len(raw)) for i, raw in zip(ids, raws, strict=True)
        ]
        # Each envelope comes back with the mail it belongs to.
        claimed = [spool.claim(session.connection(), i, with_raw=False) for i in ids]
    assert [c.envelope if c else None for c in claimed] == envelopes


def test_a_postgresql_host_that_never_answers_is_a_temporary_failure() -> None:
    """A server that takes the TCP connection and then says nothing (a hung host, a
    black-holing firewall) must not hold a transaction, and the SMTP session behind it,
    for the system's TCP timeout: `[database] connect_timeout` turns it into a 451."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        db = Database(f"postgresql+psycopg://maild@127.0.0.1:{port}/maild", connect_timeout=1)
        outcome: list[BaseException | str] = []

        def attempt() -> None:
            try:
                with db.transaction() as session:
                    session.execute(text("SELECT 1"))
                    outcome.append("connected")
            except BaseException as exc:  # recorded: asserted below
                outcome.append(exc)

        trying = threading.Thread(target=attempt, daemon=True)
        trying.start()
        trying.join(60)  # without the timeout it is still waiting here
        assert len(outcome) == 1, "the connection attempt did not give up"
        assert isinstance(outcome[0], TemporaryFailure), outcome


def test_pinned_transactions_share_a_connection_and_survive_a_failed_one(app: App) -> None:
    db = app.db
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE pinned_t (n INTEGER PRIMARY KEY)"))
    seen: list[object] = []
    with db.pinned():
        for n in (1, 2):
            with db.begin(replayable=True) as conn:
                conn.execute(text("INSERT INTO pinned_t VALUES (:n)"), {"n": n})
                seen.append(conn)
        try:
            with db.begin(replayable=True) as conn:
                conn.execute(text("INSERT INTO pinned_t VALUES (3)"))
                conn.execute(text("INSERT INTO pinned_t VALUES (1)"))  # duplicate key
        except IntegrityError:
            pass
        else:
            raise AssertionError("the duplicate key went in")
        with db.begin(replayable=True) as conn:  # the failed one was rolled back whole
            conn.execute(text("INSERT INTO pinned_t VALUES (4)"))
            seen.append(conn)
        with db.begin() as durable:  # only replayable transactions are pinned
            assert durable is not seen[0]
    assert seen[0] is seen[1] is seen[2]
    with db.begin(replayable=True) as conn:
        assert conn is not seen[0]
        assert list(conn.scalars(text("SELECT n FROM pinned_t ORDER BY n"))) == [1, 2, 4]


def test_a_mail_taken_meanwhile_is_not_filed_from_the_row_the_caller_wrote(app: App) -> None:
    # A bulk import hands the processor the spool row it wrote rather than have it read
    # back; if the row stopped being pending in between, the filing is rolled back whole.
    raw = make_mail(message_id="<entry@customer.example>")
    now = app.clock.now()
    limits = MailLimits.of(app.settings.mail)
    taken, pending = spool.put_many(app.db, [(raw, Envelope()), (raw, Envelope())], "ingest", now)
    with app.db.begin() as conn:
        conn.execute(text("UPDATE spool SET state = 'quarantined' WHERE id = :i"), {"i": taken})
    parsed = parse_or_error(raw, limits)
    entry = spool.Claimed(taken, Envelope(), None, now)
    assert app.processor.process(taken, parsed, entry) is None
    with app.db.begin() as conn:
        assert conn.scalar(text("SELECT count(*) FROM ticket")) == 0
        assert conn.scalar(text("SELECT count(*) FROM message")) == 0
    filed = app.processor.process(pending, parsed, spool.Claimed(pending, Envelope(), None, now))
    assert filed is not None and filed.state is SpoolState.DONE
    with app.db.begin() as conn:
        assert conn.scalar(text("SELECT count(*) FROM message")) == 1
        states = dict(conn.execute(text("SELECT id, state FROM spool")).all())
    assert states == {taken: "quarantined", pending: "done"}


def test_a_pinned_connection_is_given_up_after_an_outage(app: App) -> None:
    # After a database outage the next transaction takes a connection from the pool,
    # which checks it first, rather than go on with one that may be dead.
    db = app.db
    with db.pinned():
        with db.begin(replayable=True) as conn:
            first = conn
        try:
            with db.begin(replayable=True) as conn:
                if db.is_postgres:  # the server ends this connection
                    conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
                else:  # SQLite: any OperationalError counts as an outage
                    conn.execute(text("SELECT * FROM no_such_table"))
        except TemporaryFailure:
            pass
        else:
            raise AssertionError("no TemporaryFailure")
        with db.begin(replayable=True) as conn:
            assert conn is not first
            again = conn
        with db.begin(replayable=True) as conn:
            assert conn is again
