"""Outbound mail end to end: a real aiosmtpd sink on loopback as the relay, both databases.

Time-dependent behaviour (backoff, expiry, rate limits) runs on the fixed clock; arrival at
the sink is awaited on a queue, never slept for.
"""

from __future__ import annotations

import io
import json
import queue
import smtplib
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from maild.app import App
from maild.cli import EX_NOINPUT, EX_OK, main
from maild.clock import FixedClock
from maild.db.models import Event, Message, Outbox, Ticket
from maild.outbox.send import Attempt, Sender, claim
from maild.types import Envelope, SpoolState
from tests.conftest import AppFactory, deliver, make_mail
from tests.daemon import Daemon, write_config

SUPPORT = "support@example.com"
ALICE = "alice@customer.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SinkHandler:
    """Answers DATA with `reply`; keeps what it accepted (exact bytes) on a queue."""

    def __init__(self) -> None:
        self.reply = "250 2.0.0 OK"
        self.accepted: queue.Queue[tuple[str, list[str], bytes]] = queue.Queue()
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            self.accepted.put(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        else:
            self.refused += 1
        return self.reply


class Sink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> Sink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def next_mail(self, timeout: float = 10.0) -> tuple[str, list[str], EmailMessage]:
        mail_from, rcpts, raw = self.handler.accepted.get(timeout=timeout)
        return mail_from, rcpts, message_from_bytes(raw, policy=default)

    def count(self) -> int:
        return self.handler.accepted.qsize()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


# Does not exist: no routing rules, so every default applies (and the repository's
# example rules, which notify agents, stay out of these tests).
NO_RULES = {"rules": str(Path(__file__).parent / "data" / "outbox-no-rules")}


def outbound_app(make_app: AppFactory, port: int, **outbound: Any) -> App:
    return make_app(
        outbound={"enabled": True, "host": "127.0.0.1", "port": port, **outbound},
        mail={"support_addresses": [SUPPORT, "billing@example.com"]},
        paths=NO_RULES,
    )


def sender(app: App) -> Sender:
    return Sender(app.db, app.settings.outbound, app.clock)


def rows(app: App, model: Any, *where: Any) -> list[Any]:
    with app.db.transaction() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))


def events(app: App, kind: str) -> list[Event]:
    return rows(app, Event, Event.kind == kind)


def to_support(address: str = SUPPORT) -> Envelope:
    return Envelope(mail_from=ALICE, rcpt_to=(address,))


def test_new_mail_gets_an_acknowledgement_threaded_and_rfc3834(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    customer_id = "<first@customer.example>"
    outcome = deliver(
        app,
        make_mail(message_id=customer_id, to="billing@example.com"),
        to_support("billing@example.com"),
    )
    assert outcome.state is SpoolState.DONE
    assert [a.result for a in sender(app).send_due()] == ["sent"]

    mail_from, rcpts, ack = sink.next_mail()
    assert rcpts == [ALICE]
    # From the address the mail came in on; our Message-ID domain.
    assert mail_from == "billing@example.com"
    assert ack["From"] == "billing@example.com"
    assert ack["Reply-To"] == "billing@example.com"
    assert ack["Subject"] == f"Re: Printer on fire [#{outcome.ticket_number}]"
    assert ack["In-Reply-To"] == customer_id
    assert ack["References"] == customer_id
    assert ack["Message-ID"].endswith("@example.com>")
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["X-Maild-Loop"] == "maild"
    assert "Alice Customer" in ack["To"]
    text = ack.get_body(("plain",))
    assert text is not None and outcome.ticket_number in text.get_content()

    (row,) = rows(app, Outbox)
    assert row.state == "sent" and row.sent_at == app.clock.now() and row.attempts == 1
    # The recorded message is the one sent, under the same Message-ID.
    (recorded,) = rows(app, Message, Message.direction == "out")
    assert recorded.kind == "auto_reply" and recorded.message_id == ack["Message-ID"]
    assert recorded.id == row.message_row_id
    assert [e.data["outbox_id"] for e in events(app, "auto_reply_queued")] == [row.id]


def test_reply_to_the_acknowledgement_with_only_in_reply_to_threads(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    first = deliver(app, make_mail(), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()

    reply = make_mail(subject="a question without any tag", in_reply_to=ack["Message-ID"])
    second = deliver(app, reply, to_support())
    assert second.ticket_number == first.ticket_number
    # A follow-up gets no acknowledgement of its own.
    assert len(rows(app, Outbox)) == 1
    assert len(rows(app, Ticket)) == 1


@pytest.mark.parametrize(
    ("headers", "envelope_from"),
    [
        ({"Auto-Submitted": "auto-replied"}, ALICE),
        ({}, ""),  # the null envelope sender
        ({"List-Id": "<news.customer.example>", "Precedence": "list"}, ALICE),
        ({"X-Maild-Loop": "maild"}, ALICE),
    ],
    ids=["auto-reply", "bounce", "list", "loop-header"],
)
def test_automatic_mail_gets_no_acknowledgement(
    make_app: AppFactory, sink: Sink, headers: dict[str, str], envelope_from: str
) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(headers=headers), Envelope(mail_from=envelope_from, rcpt_to=(SUPPORT,)))
    assert sender(app).send_due() == []
    assert rows(app, Outbox) == []
    assert sink.count() == 0


def test_list_mail_suppression_is_an_event_on_its_ticket(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(headers={"List-Id": "<news.customer.example>"}), to_support())
    (suppressed,) = events(app, "auto_reply_suppressed")
    assert suppressed.data["reason"] == "bulk mail is never answered automatically"


@pytest.mark.parametrize(
    "sender_address", ["noreply@shop.example", "MAILER-DAEMON@mx.example", "billing@example.com"]
)
def test_no_reply_and_own_senders_get_no_acknowledgement(
    make_app: AppFactory, sink: Sink, sender_address: str
) -> None:
    app = outbound_app(make_app, sink.port, no_reply_patterns=[r"^no-?reply", "^mailer-daemon$"])
    deliver(app, make_mail(sender=sender_address), to_support())
    assert rows(app, Outbox) == []


def test_rules_can_turn_the_acknowledgement_off(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(
        "rules:\n  - name: quiet\n    when: {from: alice@customer.example}\n"
        "    then: [{auto_reply: none}]\n"
    )
    app = make_app(
        outbound={"enabled": True, "host": "127.0.0.1", "port": sink.port},
        paths={"rules": str(rules)},
    )
    deliver(app, make_mail(), to_support())
    assert rows(app, Outbox) == []


def test_two_auto_responders_facing_each_other_stop_at_the_rate_limit(
    make_app: AppFactory, sink: Sink, clock: FixedClock
) -> None:
    """The other side answers every mail with a fresh, untagged, unmarked mail: each one
    opens a ticket here. The per-recipient limit breaks the loop."""
    app = outbound_app(make_app, sink.port, max_per_hour=3, max_per_day=5)
    bot = "robot@other.example"
    deliver(app, make_mail(sender=bot, subject="We received your mail"), to_support())
    for turn in range(20):
        sender(app).send_due()
        if sink.count() == 0:
            break
        sink.next_mail()
        clock.advance(timedelta(minutes=1))
        deliver(app, make_mail(sender=bot, subject=f"We received your mail {turn}"), to_support())
    assert len(rows(app, Outbox)) == 3
    assert "rate limit" in events(app, "auto_reply_suppressed")[-1].data["reason"]

    # An hour later the hourly limit allows more, until the daily one stops them.
    for _ in range(5):
        clock.advance(timedelta(minutes=61))
        deliver(app, make_mail(sender=bot, subject="again"), to_support())
    assert len(rows(app, Outbox)) == 5


def test_temporary_failure_retries_with_backoff_and_delivers_once(
    make_app: AppFactory, sink: Sink, clock: FixedClock
) -> None:
    app = outbound_app(make_app, sink.port, retry_base=60, retry_max=600)
    deliver(app, make_mail(), to_support())
    sink.handler.reply = "451 4.3.0 try again later"

    assert [a.result for a in sender(app).send_due()] == ["retry"]
    (row,) = rows(app, Outbox)
    assert row.state == "pending" and row.next_attempt_at == clock.now() + timedelta(seconds=60)
    assert row.last_error is not None and row.last_error.startswith("451")
    assert sender(app).send_due() == []  # not due yet

    clock.advance(timedelta(seconds=60))
    assert [a.result for a in sender(app).send_due()] == ["retry"]
    (row,) = rows(app, Outbox)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=120)

    sink.handler.reply = "250 2.0.0 OK"
    clock.advance(timedelta(seconds=120))
    assert [a.result for a in sender(app).send_due()] == ["sent"]
    sink.next_mail()
    assert sink.count() == 0 and sink.handler.refused == 2
    assert sender(app).send_due() == []
    assert rows(app, Outbox)[0].state == "sent"


def test_relay_down_then_back_delivers(make_app: AppFactory, clock: FixedClock) -> None:
    port = free_port()  # nothing listens here yet
    app = outbound_app(make_app, port)
    deliver(app, make_mail(), to_support())
    deliver(app, make_mail(subject="second"), to_support())
    attempts = sender(app).send_due()
    assert [a.result for a in attempts] == ["retry", "retry"]
    assert all("cannot connect" in (a.error or "") for a in attempts)

    server = Sink(port).start()
    try:
        clock.advance(timedelta(hours=1))
        assert [a.result for a in sender(app).send_due()] == ["sent", "sent"]
        subjects = sorted(str(server.next_mail()[2]["Subject"]) for _ in range(2))
        assert subjects == ["Re: Printer on fire [#1]", "Re: second [#2]"]
    finally:
        server.stop()


def test_temporary_failures_expire_into_a_failure_event(
    make_app: AppFactory, sink: Sink, clock: FixedClock
) -> None:
    app = outbound_app(make_app, sink.port, max_age=3600, retry_base=1000)
    deliver(app, make_mail(), to_support())
    sink.handler.reply = "421 4.7.0 busy"
    results: list[Attempt] = []
    for _ in range(10):  # attempts at 0, 1000, 3000 s; then 7000 s is past the 3600 s age
        results += sender(app).send_due()
        clock.advance(timedelta(seconds=1000))
    assert [a.result for a in results] == ["retry", "retry", "retry", "failed"]
    (failed,) = events(app, "outbound_failed")
    assert failed.data["why"] == "expired" and failed.data["recipient"] == ALICE


def test_permanent_failure_is_an_event_on_the_ticket(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    outcome = deliver(app, make_mail(), to_support())
    sink.handler.reply = "550 5.1.1 no such user"
    assert [a.result for a in sender(app).send_due()] == ["failed"]
    (row,) = rows(app, Outbox)
    assert row.state == "failed" and row.last_error == "550 5.1.1 no such user"
    (failed,) = events(app, "outbound_failed")
    (ticket,) = rows(app, Ticket)
    assert ticket.number == outcome.ticket_number and failed.ticket_id == ticket.id
    assert failed.data["why"] == "rejected" and failed.data["error"].startswith("550")
    assert sender(app).send_due() == []


def test_script_in_the_customer_subject_stays_escaped_in_html(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(subject="<script>alert(1)</script> help"), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()
    html = ack.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<script>" not in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt; help" in content
    # The text part is not HTML: the subject is kept as written there.
    text = ack.get_body(("plain",))
    assert text is not None and "<script>alert(1)</script> help" in text.get_content()


def test_hungarian_when_the_mail_says_so(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    # A top-level header (make_mail's headers would be dropped by set_content).
    deliver(app, b"Content-Language: hu-HU\r\n" + make_mail(), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()
    text = ack.get_body(("plain",))
    assert text is not None and "Köszönjük" in text.get_content()
    assert events(app, "auto_reply_queued")[0].data["language"] == "hu"


def test_broken_operator_template_keeps_the_ticket_and_says_why(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    templates = tmp_path / "templates" / "requester"
    templates.mkdir(parents=True)
    (templates / "ticket_created.txt.j2").write_text("Hello {{ requester.nickname }}\n")
    app = make_app(
        outbound={"enabled": True, "host": "127.0.0.1", "port": sink.port},
        paths={**NO_RULES, "templates": str(tmp_path / "templates")},
    )
    outcome = deliver(app, make_mail(), to_support())
    assert outcome.state is SpoolState.DONE
    assert rows(app, Outbox) == []
    (failed,) = events(app, "auto_reply_failed")
    assert "nickname" in failed.data["reason"]


def test_disabled_by_default_queues_nothing(make_app: AppFactory) -> None:
    app = make_app(paths=NO_RULES)
    deliver(app, make_mail(), to_support())
    assert rows(app, Outbox) == []


def test_cli_outbox_list_and_retry(
    make_app: AppFactory, sink: Sink, db_url: str, tmp_path: Path, clock: FixedClock
) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(), to_support())
    sink.handler.reply = "550 5.1.1 no such user"
    sender(app).send_due()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')

    out = io.StringIO()
    assert main(["outbox", "list", "--config", str(config), "--json"], stdout=out) == EX_OK
    (listed,) = json.loads(out.getvalue())
    assert listed["state"] == "failed" and listed["ticket"] == "1"
    assert listed["recipient"] == ALICE and listed["last_error"].startswith("550")
    out = io.StringIO()
    assert main(["outbox", "list", "--config", str(config), "--state", "sent"], stdout=out) == 0
    assert out.getvalue().strip() == "(none)"

    assert main(["outbox", "retry", "--config", str(config), "1"], stdout=io.StringIO()) == EX_OK
    assert main(["outbox", "retry", "--config", str(config), "99"]) == EX_NOINPUT
    sink.handler.reply = "250 2.0.0 OK"
    clock.set(datetime.now(UTC) + timedelta(seconds=1))  # the CLI made it due on the system clock
    assert [a.result for a in sender(app).send_due()] == ["sent"]
    sink.next_mail()
    # A sent mail is never sent again.
    assert main(["outbox", "retry", "--config", str(config), "1"]) == EX_NOINPUT


def test_maild_run_acknowledges_end_to_end(tmp_path: Path, db_url: str, sink: Sink) -> None:
    config = write_config(
        tmp_path,
        db_url,
        outbound={"enabled": True, "host": "127.0.0.1", "port": sink.port, "interval": 0.2},
    )
    daemon = Daemon(config, tmp_path).start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            client.sendmail(ALICE, [SUPPORT], make_mail(message_id="<run-1@customer.example>"))
            client.sendmail(ALICE, [SUPPORT], make_mail(headers={"List-Id": "<l.example>"}))
        mail_from, rcpts, ack = sink.next_mail(timeout=60)
        assert (mail_from, rcpts) == (SUPPORT, [ALICE])
        assert ack["In-Reply-To"] == "<run-1@customer.example>"
        assert ack["Subject"] == "Re: Printer on fire [#1]"
        assert ack["Auto-Submitted"] == "auto-replied" and ack["X-Maild-Loop"] == "maild"
        daemon.wait_for(lambda e: e.get("event") == "outbound mail" and e.get("result") == "sent")
        # The list mail made a ticket but no acknowledgement: both counted.
        wanted = [
            'maild_auto_replies_suppressed_total{rule="bulk"} 1.0',
            'maild_outbound_attempts_total{result="sent"} 1.0',
        ]
        assert wait_for_metrics(daemon.http_port, wanted) == []
        assert sink.count() == 0
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()


def test_maild_run_keeps_the_mail_while_the_relay_is_down(tmp_path: Path, db_url: str) -> None:
    port = free_port()  # the relay is down: nothing listens here yet
    outbound = {"enabled": True, "port": port, "interval": 0.2, "retry_base": 0.2}
    daemon = Daemon(write_config(tmp_path, db_url, outbound=outbound), tmp_path).start()
    relay: Sink | None = None
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            client.sendmail(ALICE, [SUPPORT], make_mail(message_id="<down-1@customer.example>"))
        daemon.wait_for(lambda e: e.get("event") == "outbound mail" and e.get("result") == "retry")
        # The backlog shows while the relay is down.
        assert wait_for_metrics(daemon.http_port, ["maild_outbox_pending 1.0"]) == []
        relay = Sink(port).start()
        _, rcpts, ack = relay.next_mail(timeout=60)
        assert rcpts == [ALICE] and ack["In-Reply-To"] == "<down-1@customer.example>"
        daemon.wait_for(lambda e: e.get("event") == "outbound mail" and e.get("result") == "sent")
        assert wait_for_metrics(daemon.http_port, ["maild_outbox_pending 0.0"]) == []
        assert daemon.terminate() == 0
        assert relay.count() == 0  # delivered once
    finally:
        daemon.stop_quietly()
        if relay is not None:
            relay.stop()


def wait_for_metrics(port: int, lines: list[str], timeout: float = 30.0) -> list[str]:
    """Scrape /metrics until every line is there; the lines still missing at the deadline.
    (The workers report to the daemon's counters a moment after their log line.)"""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        missing = [line for line in lines if line not in text.splitlines()]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def test_senders_on_postgresql_skip_each_others_rows(
    make_app: AppFactory, sink: Sink, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer; SKIP LOCKED is PostgreSQL's")
    app = outbound_app(make_app, sink.port, batch_size=1)
    deliver(app, make_mail(), to_support())
    deliver(app, make_mail(subject="second"), to_support())
    first, second = (row.id for row in rows(app, Outbox))
    with app.db.transaction() as session:
        # Another instance's sender, mid-claim: its row stays locked until it commits.
        held = claim(session.connection(), app.clock.now(), app.settings.outbound, app.db)
        assert [row.id for row in held] == [first]
        assert [(a.outbox_id, a.result) for a in sender(app).send_due()] == [(second, "sent")]
    # The held row was moved past its send by its claim: nobody takes it now.
    assert sender(app).send_due() == []
    assert sink.count() == 1


def postfix_dsn(original: bytes, recipient: str, *, headers_only: bool = False) -> bytes:
    """A bounce as Postfix writes it: explanation, delivery-status, the original."""
    boundary = "dsn-boundary"
    if headers_only:
        head = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        third = b"Content-Type: text/rfc822-headers\r\n\r\n" + head
    else:
        third = b"Content-Type: message/rfc822\r\n\r\n" + original
    return b"\r\n".join(
        [
            b"From: MAILER-DAEMON@mx.customer.example (Mail Delivery System)",
            b"To: support@example.com",
            b"Subject: Undelivered Mail Returned to Sender",
            b"Message-ID: <dsn-1@mx.customer.example>",
            b"Date: Mon, 02 Mar 2026 09:05:00 +0000",
            b"MIME-Version: 1.0",
            b"Content-Type: multipart/report; report-type=delivery-status;",
            b' boundary="' + boundary.encode() + b'"',
            b"",
            b"--" + boundary.encode(),
            b"Content-Type: text/plain",
            b"",
            b"I'm sorry to have to inform you that your message could not be delivered.",
            b"--" + boundary.encode(),
            b"Content-Type: message/delivery-status",
            b"",
            b"Reporting-MTA: dns; mx.customer.example",
            b"",
            b"Final-Recipient: rfc822; " + recipient.encode(),
            b"Action: failed",
            b"Status: 5.1.1",
            b"Diagnostic-Code: smtp; 550 5.1.1 <" + recipient.encode() + b">: no such user",
            b"",
            b"--" + boundary.encode(),
            third,
            b"--" + boundary.encode() + b"--",
            b"",
        ]
    )


@pytest.mark.parametrize("headers_only", [False, True], ids=["rfc822", "rfc822-headers"])
def test_bounce_of_our_mail_is_an_event_and_no_ticket(
    make_app: AppFactory, sink: Sink, headers_only: bool
) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(), to_support())
    sender(app).send_due()
    raw = sink.handler.accepted.get(timeout=10)[2]

    outcome = deliver(
        app,
        postfix_dsn(raw, ALICE, headers_only=headers_only),
        Envelope(mail_from="", rcpt_to=(SUPPORT,)),
    )
    assert outcome.state is SpoolState.IGNORED
    assert outcome.reason is not None and outcome.reason.startswith("bounce of our mail")
    assert len(rows(app, Ticket)) == 1
    (bounced,) = events(app, "outbound_bounced")
    assert bounced.data["recipient"] == ALICE and bounced.data["status"] == "5.1.1"
    (row,) = rows(app, Outbox)
    assert row.state == "bounced" and bounced.data["outbox_id"] == row.id
    assert row.last_error is not None and "no such user" in row.last_error


def test_bounce_of_a_mail_not_ours_is_ignored_without_event(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    stranger = make_mail(message_id="<not-ours@elsewhere.example>")
    outcome = deliver(app, postfix_dsn(stranger, ALICE), Envelope(mail_from="", rcpt_to=(SUPPORT,)))
    assert outcome.state is SpoolState.IGNORED and outcome.reason == (
        "bounce that belongs to no ticket"
    )
    assert rows(app, Event) == [] and rows(app, Ticket) == []
