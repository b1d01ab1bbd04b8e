"""Two maild instances answering each other, the per-ticket limit, and the rules' choice.

Mail between the two instances goes through a real aiosmtpd sink: what A sends is taken
off the sink and delivered to B, exactly as received (or with the automatic-mail
headers stripped, as a careless gateway would).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from maild.app import App
from maild.clock import FixedClock
from maild.config import parse_settings
from maild.db.models import Outbox, SpoolEntry
from maild.types import Envelope
from tests.conftest import AppFactory, deliver, make_mail
from tests.test_outbox import (
    ALICE,
    SUPPORT,
    Sink,
    events,
    rows,
    sender,
    to_support,
)

# Answer every mail, follow-ups too: the worst case for loops.
ACK_EVERYTHING = """\
rules:
  - name: acknowledge everything
    on: [new, reply]
    then: {auto_reply: requester/ticket_created}
"""
_AUTOMATIC_HEADERS = re.compile(
    rb"^(Auto-Submitted|X-Auto-Response-Suppress|X-Maild-Loop):[^\r\n]*\r\n", re.M | re.I
)


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


def instance(
    tmp_path: Path, name: str, port: int, clock: FixedClock, rules: str | None = None
) -> App:
    """A maild of its own (own SQLite file, support address and instance id)."""
    home = tmp_path / name
    (home / "rules").mkdir(parents=True)
    if rules is not None:
        (home / "rules" / "routing.yaml").write_text(rules)
    settings = parse_settings(
        {
            "database": {"url": f"sqlite:///{home / 'maild.db'}"},
            "mail": {"support_addresses": [f"support@{name}.example"]},
            "paths": {"rules": str(home / "rules")},
            "outbound": {
                "enabled": True,
                "port": port,
                "instance_id": name,
                "max_per_hour": 3,
                "max_per_day": 100,
                "max_per_ticket": 100,
            },
        },
        source="<test>",
    )
    app = App(settings, clock=clock)
    app.prepare_schema()
    return app


def relay(source: App, target: App, sink: Sink, *, strip: bool) -> bool:
    """Send what `source` has due and deliver it to `target`; False when nothing was due."""
    if not sender(source).send_due():
        return False
    mail_from, rcpts, raw = sink.handler.accepted.get(timeout=10)
    if strip:
        raw = _AUTOMATIC_HEADERS.sub(b"", raw)
    deliver(target, raw, Envelope(mail_from=mail_from, rcpt_to=tuple(rcpts)))
    return True


def ping_pong(a: App, b: App, sink: Sink, clock: FixedClock, *, strip: bool) -> int:
    """B's address writes to A; relay until nobody answers (or 50 turns). Turns taken."""
    deliver(
        a,
        make_mail(sender="support@b.example", to="support@a.example", subject="Hello"),
        Envelope(mail_from="support@b.example", rcpt_to=("support@a.example",)),
    )
    for turn in range(50):
        source, target = (a, b) if turn % 2 == 0 else (b, a)
        if not relay(source, target, sink, strip=strip):
            return turn
        clock.advance(timedelta(seconds=30))
    return 50


def test_two_mailds_stop_at_once_when_the_headers_arrive(
    tmp_path: Path, sink: Sink, clock: FixedClock
) -> None:
    a = instance(tmp_path, "a", sink.port, clock, ACK_EVERYTHING)
    b = instance(tmp_path, "b", sink.port, clock, ACK_EVERYTHING)
    try:
        assert ping_pong(a, b, sink, clock, strip=False) == 1
        # A answered the first mail; B saw Auto-Submitted, answered nothing, and (as the
        # ack threads to none of its tickets) kept it as ignored.
        assert len(rows(a, Outbox)) == 1 and rows(b, Outbox) == []
        (kept,) = rows(b, SpoolEntry)
        assert kept.state == "ignored" and kept.reason == "auto_reply that belongs to no ticket"
    finally:
        a.close()
        b.close()


def test_two_mailds_behind_a_header_stripping_gateway_stop_at_the_rate_limit(
    tmp_path: Path, sink: Sink, clock: FixedClock
) -> None:
    a = instance(tmp_path, "a", sink.port, clock, ACK_EVERYTHING)
    b = instance(tmp_path, "b", sink.port, clock, ACK_EVERYTHING)
    try:
        turns = ping_pong(a, b, sink, clock, strip=True)
        # Each side sends at most max_per_hour (3) to the other; A, the first to reach
        # it, answers B's third mail with nothing, and the loop is dead.
        assert len(rows(a, Outbox)) == 3 and len(rows(b, Outbox)) == 3
        assert turns == 6
        (stopped,) = events(a, "auto_reply_suppressed")
        assert stopped.data["rule"] == "rate_recipient"
        assert stopped.data["recipient"] == "support@b.example"
    finally:
        a.close()
        b.close()


def test_per_ticket_limit_holds_whoever_writes(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(ACK_EVERYTHING)
    app = make_app(
        outbound={"enabled": True, "port": sink.port, "max_per_ticket": 2, "max_per_hour": 99},
        paths={"rules": str(rules)},
    )
    first_id = "<first@customer.example>"
    first = deliver(app, make_mail(message_id=first_id), to_support())
    # Several people on the thread, each within their own per-recipient limit.
    for who in ("bob", "carol", "dave"):
        reply = make_mail(sender=f"{who}@customer.example", in_reply_to=first_id)
        outcome = deliver(
            app, reply, Envelope(mail_from=f"{who}@customer.example", rcpt_to=(SUPPORT,))
        )
        assert outcome.ticket_number == first.ticket_number
    assert [r.recipient for r in rows(app, Outbox)] == [ALICE, "bob@customer.example"]
    rules_hit = [e.data["rule"] for e in events(app, "auto_reply_suppressed")]
    assert rules_hit == ["rate_ticket", "rate_ticket"]


def test_rules_choose_the_acknowledgement_template(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    templates = tmp_path / "templates" / "custom"
    templates.mkdir(parents=True)
    (templates / "vip.subject.j2").write_text("Priority handling: {{ message.subject }}\n")
    (templates / "vip.txt.j2").write_text("Dear {{ requester.name }}, {{ ticket.tag }}\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(
        "rules:\n  - name: vip\n    when: {from_domain: [customer.example]}\n"
        "    then: {auto_reply: custom/vip}\n"
    )
    app = make_app(
        outbound={"enabled": True, "port": sink.port},
        paths={"rules": str(rules), "templates": str(tmp_path / "templates")},
    )
    outcome = deliver(app, make_mail(), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()
    assert ack["Subject"] == f"Priority handling: Printer on fire [#{outcome.ticket_number}]"
    text = ack.get_body(("plain",))
    assert text is not None
    assert text.get_content().rstrip() == f"Dear Alice Customer, [#{outcome.ticket_number}]"
    (row,) = rows(app, Outbox)
    assert row.template == "custom/vip"
    # A follow-up gets nothing: the rule runs on new tickets only (the default `on`).
    deliver(app, make_mail(subject=f"Re: [#{outcome.ticket_number}]"), to_support())
    assert len(rows(app, Outbox)) == 1


def test_a_rule_chooses_the_language_unless_the_mail_states_one(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(
        "rules:\n  - name: hungarian desk\n    when: {recipient: [support@example.com]}\n"
        "    then: {auto_reply: {template: requester/ticket_created, language: hu}}\n"
    )
    app = make_app(outbound={"enabled": True, "port": sink.port}, paths={"rules": str(rules)})
    deliver(app, make_mail(), to_support())
    deliver(app, b"Content-Language: en-GB\r\n" + make_mail(subject="second"), to_support())
    assert [e.data["language"] for e in events(app, "auto_reply_queued")] == ["hu", "en"]
