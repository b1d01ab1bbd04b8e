"""Backpressure: past the spool's high mark SMTP answers 451 4.3.2 and IMAP stops fetching,
until the spool drains below the low mark; shown in /healthz and /metrics."""

from __future__ import annotations

import json
import smtplib
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from maild import spool
from maild.app import App
from maild.config import parse_settings
from maild.errors import ConfigError
from maild.receive.backpressure import Backpressure
from maild.receive.imap import make_pollers
from maild.types import Envelope
from tests.conftest import AppFactory, make_mail
from tests.daemon import Daemon, write_config
from tests.dovecot import Dovecot, mailbox, running_dovecot
from tests.listener import running_listener

BUSY = (451, b"4.3.2 System busy, try again later")


def backpressure_for(app: App) -> Backpressure:
    def pending() -> int:
        with app.db.transaction() as session:
            return spool.count_pending(session, app.settings.daemon.spool_high_mark)

    return Backpressure.of(app.settings.daemon, pending)


def put(app: App, count: int) -> None:
    for _ in range(count):
        spool.put(app.db, make_mail(), Envelope(), "test", app.clock.now())


def send(port: int, sender: str = "alice@customer.example") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(sender, ["support@example.com"], make_mail(sender=sender))
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients["support@example.com"]
    return 250, b""


def test_between_the_marks_the_state_holds(make_app: AppFactory) -> None:
    app = make_app(daemon={"spool_high_mark": 4, "spool_low_mark": 2})
    pressure = backpressure_for(app)
    put(app, 3)
    pressure.refresh()
    assert pressure.accepting()
    put(app, 1)
    pressure.refresh()
    assert not pressure.accepting()
    assert pressure.status() == {"accepting": False, "depth": 4, "high_mark": 4, "low_mark": 2}
    app.processor.process_next()
    pressure.refresh()
    assert not pressure.accepting(), "3 pending is not below the low mark"
    app.processor.process_next()
    app.processor.process_next()
    pressure.refresh()
    assert pressure.accepting()
    assert pressure.status()["depth"] == 1


def test_the_depth_count_stops_at_the_high_mark(app: App) -> None:
    put(app, 5)
    with app.db.transaction() as session:
        assert spool.count_pending(session, 3) == 3
        assert spool.count_pending(session, 10) == 5


def test_smtp_refuses_at_rcpt_past_the_high_mark_and_resumes_below_the_low(
    make_app: AppFactory,
) -> None:
    app = make_app(daemon={"spool_high_mark": 3, "spool_low_mark": 1})
    pressure = backpressure_for(app)
    pressure.refresh()
    with running_listener(app, accepting=pressure.accepting, on_spooled=pressure.spooled) as smtp:
        assert [send(smtp.port)[0] for _ in range(3)] == [250] * 3
        # No refresh yet: the mails this process spooled count at once.
        assert send(smtp.port) == BUSY
        assert smtp.observed["backpressure"] == 1
        app.processor.drain()
        pressure.refresh()
        assert send(smtp.port)[0] == 250
    with app.db.transaction() as session:
        assert spool.count_pending(session, 100) == 1


def test_a_high_mark_of_zero_turns_it_off(make_app: AppFactory) -> None:
    app = make_app(daemon={"spool_high_mark": 0})
    pressure = backpressure_for(app)
    put(app, 3)
    pressure.refresh()
    pressure.spooled(1000)
    assert pressure.accepting()


def test_marks_are_validated() -> None:
    daemon = parse_settings({"daemon": {"spool_high_mark": 100}}, source="<test>").daemon
    assert Backpressure.of(daemon, lambda: 0).low == 50
    with pytest.raises(ConfigError, match="spool_low_mark"):
        parse_settings({"daemon": {"spool_high_mark": 100, "spool_low_mark": 100}}, source="<test>")


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def test_the_daemon_refuses_pauses_and_reports(
    make_app: AppFactory, db_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """`maild run` with a backlog it cannot work off yet: the pending rows are locked by
    this test (the daemon's claim skips locked rows), as if other instances held them."""
    if not db_url.startswith("postgresql"):
        pytest.skip("holding spool rows locked needs PostgreSQL's SKIP LOCKED")
    put(make_app(), 4)
    engine = create_engine(db_url)
    holder = engine.connect()
    try:
        transaction = holder.begin()
        holder.execute(text("SELECT id FROM spool WHERE state = 'pending' FOR UPDATE"))
        config = write_config(
            tmp_path,
            db_url,
            daemon={"spool_high_mark": 3, "backpressure_interval": 0.2, "poll_interval": 0.2},
        )
        daemon = Daemon(config, tmp_path).start()
        daemons.append(daemon)
        daemon.wait_for(lambda e: e.get("event") == "backpressure on")
        assert send(daemon.smtp_port) == BUSY
        health = json.loads(_get(daemon.http_port, "/healthz"))
        assert health["backpressure"] == {
            "accepting": False,
            "depth": 3,
            "high_mark": 3,
            "low_mark": 1,
        }
        metrics = _get(daemon.http_port, "/metrics").decode()
        assert "maild_backpressure 1.0" in metrics
        assert 'maild_mails_received_total{result="backpressure",source="smtp"} 1.0' in metrics

        transaction.commit()  # the backlog can be worked off now
        daemon.wait_for(lambda e: e.get("event") == "backpressure off")
        assert send(daemon.smtp_port)[0] == 250
        daemon.processed(5)
        health = json.loads(_get(daemon.http_port, "/healthz"))
        assert health["backpressure"]["accepting"] is True
        assert "maild_backpressure 0.0" in _get(daemon.http_port, "/metrics").decode()
    finally:
        holder.close()
        engine.dispose()


# --- IMAP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    yield from running_dovecot()


def imap_app(make_app: AppFactory, server: Dovecot, **daemon: Any) -> App:
    return make_app(imap=[mailbox(server, batch_size=2, poll_interval=0.2)], daemon=daemon)


def inbox(server: Dovecot) -> int:
    with server.client() as client:
        return int(client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"])


def test_imap_stops_fetching_past_the_high_mark(make_app: AppFactory, dovecot: Dovecot) -> None:
    dovecot.reset()
    app = imap_app(make_app, dovecot, spool_high_mark=3, spool_low_mark=1)
    pressure = backpressure_for(app)
    with dovecot.client() as client:
        for i in range(5):
            client.append("INBOX", make_mail(message_id=f"<bp-imap-{i}@customer.example>"))
    # The daemon refreshes on a timer; here after each spooled batch, to be exact.
    pollers = make_pollers(
        app.settings, app.db, app.clock, pressure.refresh, accepting=pressure.accepting
    )
    poller = pollers.pollers[0]
    assert poller.sync_once() == 4  # 2, then 4 pending: the third batch is not fetched
    assert not pressure.accepting()
    assert inbox(dovecot) == 1
    app.processor.drain()
    pressure.refresh()
    assert poller.sync_once() == 1
    assert inbox(dovecot) == 0


def test_a_paused_idle_poller_resumes_without_new_mail(
    make_app: AppFactory, dovecot: Dovecot
) -> None:
    """While held back a poller polls instead of waiting in IDLE: IDLE would only wake
    for new mail, and the mail it left behind would wait for the next one."""
    dovecot.reset()
    app = imap_app(make_app, dovecot)
    with dovecot.client() as client:
        client.append("INBOX", make_mail(message_id="<bp-idle@customer.example>"))
    open_ = threading.Event()
    spooled = threading.Event()
    pollers = make_pollers(
        app.settings, app.db, app.clock, spooled.set, accepting=open_.is_set
    ).start()
    try:
        deadline = time.monotonic() + 15
        while pollers.status()["support"]["last_fetch"] is None:
            assert time.monotonic() < deadline, "the poller never finished a pass"
            time.sleep(0.02)
        assert not spooled.is_set()
        assert inbox(dovecot) == 1
        open_.set()
        assert spooled.wait(10), "the poller did not come back for the mail it left"
    finally:
        pollers.stop(10)
    app.processor.drain()
    assert inbox(dovecot) == 0
