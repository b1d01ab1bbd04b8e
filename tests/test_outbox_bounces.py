"""Bounces and automatic answers to our mail: recognised, noted, contained.

The sisimai corpus (../shared/corpus-dev/sisimai, labels in labels.tsv) gives real
non-delivery reports of ~60 MTAs and providers; the rest runs against a real aiosmtpd
sink and both databases.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from maild.app import App
from maild.clock import FixedClock
from maild.db.models import BouncingAddress, Event, Message, Outbox, Ticket
from maild.pipeline.classify import classify
from maild.pipeline.parse import parse
from maild.types import Envelope, MailClass, SpoolState
from tests.conftest import CORPUS_DEV, AppFactory, deliver, make_mail, need_corpus
from tests.test_outbox import (
    ALICE,
    SUPPORT,
    Sink,
    events,
    outbound_app,
    postfix_dsn,
    rows,
    sender,
    to_support,
)

SISIMAI = CORPUS_DEV / "sisimai"
# sisimai's reasons for mail that is not a non-delivery report.
NOT_BOUNCES = {"vacation": MailClass.AUTO_REPLY, "feedback": MailClass.AUTO_REPLY}
NULL_SENDER = Envelope(mail_from="", rcpt_to=(SUPPORT,))


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


def sisimai_labels() -> dict[str, str]:
    """File name -> sisimai's reason (one row per bounced recipient; one file may repeat)."""
    need_corpus(SISIMAI)
    with (SISIMAI / "labels.tsv").open(newline="") as handle:
        return {row["file"]: row["reason"] for row in csv.DictReader(handle, delimiter="\t")}


def test_every_real_bounce_in_the_sisimai_corpus_is_recognised() -> None:
    labels = sisimai_labels()
    wrong = []
    for name, reason in sorted(labels.items()):
        mail = parse((SISIMAI / name).read_bytes())
        # As `maild ingest` files them: no envelope, only what the final MTA wrote.
        found = classify(mail, Envelope())
        expected = NOT_BOUNCES.get(reason, MailClass.BOUNCE)
        if found is not expected:
            wrong.append(f"{name} ({reason}): {found.value}, expected {expected.value}")
    bounces = [n for n, r in labels.items() if r not in NOT_BOUNCES]
    assert len(bounces) == 60 and len(labels) == 64
    assert wrong == []


@pytest.mark.parametrize(
    ("sender", "subject", "body", "headers", "expected"),
    [
        # People and shops talking about deliveries are not bounces.
        ("alice@customer.example", "My delivery failed", "Undeliverable parcel!\n", {}, False),
        ("noreply@shop.example", "Delivery failed", "We could not deliver your parcel.\n", {},
         False),
        ("postmaster@customer.example", "A question", "Can you call me?\n", {}, False),
        # Non-delivery notices without a multipart/report.
        ("MAILER-DAEMON@mx.example", "failure notice", "Hi. This is the qmail-send program\n",
         {}, True),
        ("postmaster@mx.example", "Re: Test", "550 - Requested action not taken: no such user\n",
         {}, True),
        ("alice@customer.example", "x", "y\n", {"X-Failed-Recipients": "bob@x.example"}, True),
    ],
)  # fmt: skip
def test_non_standard_bounces_are_told_from_people(
    sender: str, subject: str, body: str, headers: dict[str, str], expected: bool
) -> None:
    mail = parse(make_mail(sender=sender, subject=subject, body=body, headers=headers))
    assert (classify(mail, Envelope(mail_from=sender)) is MailClass.BOUNCE) is expected


def test_auto_submitted_no_is_a_human_and_is_acknowledged(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, b"Auto-Submitted: no\r\n" + make_mail(), to_support())
    assert len(rows(app, Outbox)) == 1


def test_sisimai_bounces_make_no_ticket_and_no_acknowledgement(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    labels = sisimai_labels()
    outcomes = [deliver(app, (SISIMAI / name).read_bytes()) for name in sorted(labels)]
    assert {o.state for o in outcomes} == {SpoolState.IGNORED}
    assert rows(app, Ticket) == [] and rows(app, Outbox) == []


def bouncing(app: App) -> list[BouncingAddress]:
    with app.db.transaction() as session:
        return list(session.scalars(select(BouncingAddress).order_by(BouncingAddress.address)))


def dsn_for_our_ack(app: App, sink: Sink, **kwargs: bool) -> tuple[bytes, str]:
    """Deliver a customer mail, send its acknowledgement, return (DSN for it, ticket)."""
    outcome = deliver(app, make_mail(), to_support())
    sender(app).send_due()
    raw = sink.handler.accepted.get(timeout=10)[2]
    assert outcome.ticket_number is not None
    return postfix_dsn(raw, ALICE, **kwargs), outcome.ticket_number


def test_bounced_address_gets_no_automatic_mail_for_the_configured_time(
    make_app: AppFactory, sink: Sink, clock: FixedClock
) -> None:
    app = outbound_app(make_app, sink.port, bounce_suppress=3600)
    dsn, _ = dsn_for_our_ack(app, sink)
    deliver(app, dsn, NULL_SENDER)
    (marked,) = bouncing(app)
    assert marked.address == ALICE and marked.until == clock.now() + timedelta(hours=1)
    assert marked.reason.startswith("5.1.1")

    # A new mail from the dead address still makes a ticket, but no acknowledgement.
    second = deliver(app, make_mail(subject="again"), to_support())
    assert second.state is SpoolState.DONE and second.auto_reply_suppressed == "bouncing"
    (suppressed,) = events(app, "auto_reply_suppressed")
    assert suppressed.data["rule"] == "bouncing" and suppressed.data["recipient"] == ALICE
    assert len(rows(app, Outbox)) == 1

    clock.advance(timedelta(hours=1, seconds=1))
    third = deliver(app, make_mail(subject="once more"), to_support())
    assert third.auto_reply_suppressed is None and len(rows(app, Outbox)) == 2


def test_a_delay_notice_is_an_event_and_suppresses_nothing(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    dsn, _ = dsn_for_our_ack(app, sink)
    delayed = dsn.replace(b"Action: failed", b"Action: delayed").replace(
        b"Status: 5.1.1", b"Status: 4.4.1"
    )
    outcome = deliver(app, delayed, NULL_SENDER)
    assert outcome.state is SpoolState.IGNORED
    assert outcome.reason is not None and outcome.reason.startswith("delay notice")
    (note,) = events(app, "outbound_delayed")
    assert note.data["status"] == "4.4.1"
    assert bouncing(app) == [] and rows(app, Outbox)[0].state == "sent"


def test_a_bounce_whose_subject_carries_the_tag_adds_nothing_to_the_ticket(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    dsn, number = dsn_for_our_ack(app, sink)
    tagged = dsn.replace(
        b"Subject: Undelivered Mail Returned to Sender",
        f"Subject: Undeliverable: Re: Printer on fire [#{number}]".encode(),
    )
    outcome = deliver(app, tagged, NULL_SENDER)
    assert outcome.state is SpoolState.IGNORED
    assert len(events(app, "outbound_bounced")) == 1
    # The customer's mail and our acknowledgement; the bounce is an event, not a message.
    assert len(rows(app, Message)) == 2


def test_relay_refusing_the_recipient_marks_it_bouncing(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(), to_support())
    sink.handler.reply = "550 5.1.1 no such user"
    assert [a.result for a in sender(app).send_due()] == ["failed"]
    (marked,) = bouncing(app)
    assert marked.address == ALICE and "no such user" in marked.reason
    assert deliver(app, make_mail(), to_support()).auto_reply_suppressed == "bouncing"


def test_relay_policy_refusal_marks_nobody_bouncing(make_app: AppFactory, sink: Sink) -> None:
    app = outbound_app(make_app, sink.port)
    deliver(app, make_mail(), to_support())
    sink.handler.reply = "554 5.7.1 relay access denied"
    assert [a.result for a in sender(app).send_due()] == ["failed"]
    assert bouncing(app) == []
    assert events(app, "outbound_failed")[0].data["why"] == "rejected"


def test_out_of_office_to_our_acknowledgement_threads_and_changes_nothing(
    make_app: AppFactory, sink: Sink
) -> None:
    app = outbound_app(make_app, sink.port)
    first = deliver(app, make_mail(), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()
    with app.db.transaction() as session:
        session.execute(update(Ticket).values(status="pending"))

    # Exchange style: from the null sender (RFC 3834 asks for it), marked as automatic.
    out_of_office = make_mail(
        subject=f"Automatic reply: {ack['Subject']}",
        in_reply_to=ack["Message-ID"],
        body="I am out of the office until Monday.\n",
        headers={"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"},
    )
    outcome = deliver(app, out_of_office, NULL_SENDER)
    assert outcome.state is SpoolState.DONE and outcome.ticket_number == first.ticket_number
    (ticket,) = rows(app, Ticket)
    assert ticket.status == "pending"  # a human reply would have reopened it
    stored = rows(app, Message, Message.direction == "in")
    assert [m.mail_class for m in stored] == ["human", "auto_reply"]
    assert len(rows(app, Outbox)) == 1
    assert rows(app, Event, Event.kind == "outbound_bounced") == []
