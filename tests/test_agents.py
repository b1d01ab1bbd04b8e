"""Agents by mail through the pipeline (in process, SQLite and PostgreSQL): recognising
agent replies, identity, commands, relays to the customer, notes, notifications.

What would be sent is read from the outbox rows (the exact bytes); tests/test_agents_smtp.py
sends them over real SMTP through `maild run`.
"""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage as Mail
from email.policy import SMTP as SMTP_POLICY
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maild.agents.tokens import Keyring
from maild.app import App
from maild.clock import FixedClock
from maild.db.models import Event, Message, Outbox, Ticket
from maild.types import Envelope, SpoolState
from tests.conftest import AppFactory, deliver, make_mail

SUPPORT = "support@example.com"
INTERNAL = "support-comment@example.com"
ALICE = "alice@customer.example"
CAROL = "carol@customer.example"
ANNA = "anna@example.com"
BENCE = "bence@example.com"
SECRET = "agent-key-for-tests-only-0123456789"
TRUSTED = "mx.example.net"

TEAMS = """
teams:
  - name: first-line
    tier: 1
    members: [anna@example.com, bence@example.com]
  - name: tier2
    tier: 2
    members: [bence@example.com]
agents:
  - {address: anna@example.com, name: Anna Kovács}
  - {address: bence@example.com, name: Bence Tóth}
  - {address: old@example.com, name: Former Agent, active: false}
"""
ROUTING = """
rules:
  - name: printers go to anna
    when: {subject: {contains: printer}}
    then: {assign: {agent: anna@example.com}}
  - name: the rest to first line
    when: {not: {subject: {contains: printer}}}
    then: {team: first-line}
"""


def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(parents=True)
    (folder / "teams.yaml").write_text(TEAMS)
    (folder / "routing.yaml").write_text(ROUTING)
    return folder


def agents_config(**overrides: Any) -> dict[str, Any]:
    return {
        "keys": [{"id": 1, "secret": SECRET}],
        "trusted_authserv_ids": [TRUSTED],
        "internal_address": INTERNAL,
        **overrides,
    }


def agents_app(make_app: AppFactory, tmp_path: Path, **agents: Any) -> App:
    return make_app(
        paths={"rules": str(rules_dir(tmp_path)), "templates": str(tmp_path / "no-templates")},
        outbound={"enabled": True, "port": 2},
        agents=agents_config(**agents),
    )


def rows(app: App, model: Any, *where: Any) -> list[Any]:
    with app.db.transaction() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))


def kinds(app: App) -> list[str]:
    return [e.kind for e in rows(app, Event)]


def sent(app: App, template: str) -> list[tuple[str, Mail]]:
    """(recipient, parsed mail) of the outbox rows made from `template`."""
    found = rows(app, Outbox, Outbox.template == template)
    return [(r.recipient, message_from_bytes(r.raw, policy=default)) for r in found]


def body(mail: Mail) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def customer_ticket(app: App, subject: str = "The printer is broken") -> tuple[str, str]:
    """A customer's new ticket (assigned to Anna); its number and the customer's Message-ID."""
    message_id = f"<{subject.replace(' ', '.')}@customer.example>"
    raw = make_mail(subject=subject, message_id=message_id, cc=CAROL)
    outcome = deliver(app, raw, Envelope(mail_from=ALICE, rcpt_to=(SUPPORT,)))
    assert outcome.state is SpoolState.DONE and outcome.ticket_number
    return outcome.ticket_number, message_id


def reply_address(number: str, agent: str = ANNA) -> str:
    return Keyring({1: SECRET.encode()}, None).reply_address(SUPPORT, number, agent)


def agent_reply(
    number: str,
    text: str,
    *,
    sender: str = f"Anna Kovács <{ANNA}>",
    to: str | None = None,
    headers: dict[str, str] | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    quoted = "\n".join(f"> {line}" for line in ("Hello Anna,", "", "a new ticket came in."))
    return make_mail(
        sender=sender,
        to=to or reply_address(number),
        subject=f"Re: New ticket: The printer is broken [#{number}]",
        body=f"{text}\nOn Mon, 2 Mar 2026 at 09:00, support@example.com wrote:\n{quoted}\n",
        headers=headers,
        in_reply_to=in_reply_to,
    )


def send_as_agent(app: App, raw: bytes, rcpt: str) -> SpoolState:
    return deliver(app, raw, Envelope(mail_from=ANNA, rcpt_to=(rcpt,))).state


def ticket(app: App, number: str) -> Ticket:
    return rows(app, Ticket, Ticket.number == number)[0]


# ---------------------------------------------------------------- notifications


def test_new_ticket_notifies_the_assignee_with_a_signed_reply_address(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    notes = sent(app, "agent/new_ticket")
    assert [recipient for recipient, _ in notes] == [ANNA]
    mail = notes[0][1]
    assert mail["Reply-To"] == reply_address(number)
    assert mail["From"] == SUPPORT
    assert mail["Auto-Submitted"] == "auto-generated"
    assert f"[#{number}]" in mail["Subject"]
    text = body(mail)
    assert "the printer is on fire" in text and "#status open|pending|resolved|closed" in text
    # Recorded under its signed Message-ID, so a reply threads by header too.
    recorded = rows(app, Message, Message.message_id == mail["Message-ID"])
    assert len(recorded) == 1 and recorded[0].kind == "system"
    assert mail["Message-ID"].startswith(f"<t{number}.")


def test_unassigned_new_ticket_notifies_the_team(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    customer_ticket(app, subject="Cannot log in")
    assert sorted(r for r, _ in sent(app, "agent/new_ticket")) == [ANNA, BENCE]


def test_customer_follow_up_notifies_the_assignee_and_reopens_pending(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    assert (
        send_as_agent(
            app, agent_reply(number, "#status pending\nPlease restart it."), reply_address(number)
        )
        is SpoolState.DONE
    )
    assert ticket(app, number).status == "pending"
    relayed = sent(app, "requester/agent_reply")[0][1]
    follow_up = make_mail(
        subject=f"Re: The printer is broken [#{number}]",
        in_reply_to=relayed["Message-ID"],
        body="Still broken.\n",
    )
    deliver(app, follow_up, Envelope(mail_from=ALICE, rcpt_to=(SUPPORT,)))
    assert ticket(app, number).status == "open"
    replied = sent(app, "agent/customer_replied")
    assert [r for r, _ in replied] == [ANNA]
    assert "Still broken." in body(replied[0][1])


# ---------------------------------------------------------------- agent replies


def test_agent_reply_is_relayed_from_the_support_address_threaded_without_quotes(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, first = customer_ticket(app)
    raw = agent_reply(number, "Hello Alice,\n\nplease switch it off and on.\n\nAnna")
    assert send_as_agent(app, raw, reply_address(number)) is SpoolState.DONE
    relayed = sent(app, "requester/agent_reply")
    assert sorted(r for r, _ in relayed) == [ALICE, CAROL]  # requester and cc'd contact
    mail = relayed[0][1]
    assert mail["From"].addresses[0].addr_spec == SUPPORT
    assert mail["From"].addresses[0].display_name == "Anna Kovács"
    assert mail["To"] == f"Alice Customer <{ALICE}>" and CAROL in mail["Cc"]
    assert mail["In-Reply-To"] == first and first in mail["References"]
    assert f"[#{number}]" in mail["Subject"] and mail["Auto-Submitted"] is None
    text = body(mail)
    assert "please switch it off and on." in text
    assert ANNA not in mail.as_string() and "a new ticket came in" not in text
    assert "wrote:" not in text
    t = ticket(app, number)
    assert t.status == "open"
    agent_events = [e for e in rows(app, Event) if e.actor == ANNA]
    assert {e.kind for e in agent_events} >= {
        "status_changed",
        "agent_reply_sent",
        "first_response",
    }


def test_first_response_is_recorded_once(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    for text in ("First answer.", "Second answer."):
        send_as_agent(app, agent_reply(number, text), reply_address(number))
    assert kinds(app).count("first_response") == 1
    assert kinds(app).count("agent_reply_sent") == 2


def test_each_command_is_applied_as_an_event_by_the_agent(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    commands = (
        "#priority urgent\n#tier 2\n#queue hardware\n#type incident\n#tag +onsite -x\n"
        "#assign bence@example.com\n#status resolved\n"
    )
    send_as_agent(app, agent_reply(number, commands + "\nFixed on site."), reply_address(number))
    t = ticket(app, number)
    assert (t.priority, t.tier, t.queue, t.type, t.tags, t.assignee, t.status) == (
        "urgent",
        2,
        "hardware",
        "incident",
        ["onsite"],
        BENCE,
        "resolved",
    )
    commands_seen = [e.data["command"] for e in rows(app, Event, Event.kind == "agent_command")]
    assert len(commands_seen) == 7 and all(
        e.actor == ANNA for e in rows(app, Event, Event.kind == "agent_command")
    )
    text = body(sent(app, "requester/agent_reply")[0][1])
    assert text.startswith("Fixed on site.\r\n") and "#priority" not in text


def test_assign_me_and_assign_team(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    send_as_agent(app, agent_reply(number, "#assign tier2\n"), reply_address(number))
    t = ticket(app, number)
    assert (t.team, t.tier, t.assignee) == ("tier2", 2, None)
    handed = sent(app, "agent/assigned")
    assert [r for r, _ in handed] == [BENCE]  # the team's members, not Anna herself
    mail = handed[0][1]
    assert mail["Reply-To"] == reply_address(number, BENCE)
    assert "Anna Kovács handed ticket 1 to team tier2." in body(mail)
    send_as_agent(app, agent_reply(number, "#assign me\n"), reply_address(number))
    assert ticket(app, number).assignee == ANNA
    assert len(sent(app, "agent/assigned")) == 1  # taking it yourself tells nobody


def test_command_only_mail_relays_nothing(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    send_as_agent(
        app, agent_reply(number, "#status pending\n#priority high\n"), reply_address(number)
    )
    assert sent(app, "requester/agent_reply") == []
    t = ticket(app, number)
    assert (t.status, t.priority) == ("pending", "high")
    assert "first_response" not in kinds(app)
    # Not a reply to the customer: kept with the internal mail, out of the notes shown.
    assert rows(app, Message, Message.kind == "agent_reply") == []


def test_invalid_command_applies_nothing_and_mails_the_agent(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    raw = agent_reply(number, "#status sleeping\n#priority high\n#bogus\nHello Alice.")
    assert send_as_agent(app, raw, reply_address(number)) is SpoolState.DONE
    t = ticket(app, number)
    assert (t.status, t.priority) == ("new", "normal")
    assert sent(app, "requester/agent_reply") == []
    errors = sent(app, "agent/command_error")
    assert [r for r, _ in errors] == [ANNA]
    text = body(errors[0][1])
    assert "#status sleeping" in text and "unknown command #bogus" in text
    assert "#assign me|ADDRESS|TEAM" in text
    refused = rows(app, Event, Event.kind == "agent_commands_refused")
    assert len(refused) == 1 and len(refused[0].data["errors"]) == 2


def test_note_and_internal_address_never_reach_the_customer(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    send_as_agent(
        app, agent_reply(number, "#note\nShe called, it is the fuser."), reply_address(number)
    )
    raw = agent_reply(number, "Replacement ordered.", to=f"{INTERNAL}, {reply_address(number)}")
    send_as_agent(app, raw, INTERNAL)
    assert sent(app, "requester/agent_reply") == []
    notes = rows(app, Message, Message.kind == "internal_note")
    assert [n.text_stripped.strip() for n in notes] == [
        "She called, it is the fuser.",
        "Replacement ordered.",
    ]
    assert ticket(app, number).status == "new"
    # Other agents see the notes in later notifications.
    deliver(
        app,
        make_mail(subject=f"Re: printer [#{number}]", body="Any news?\n"),
        Envelope(mail_from=ALICE, rcpt_to=(SUPPORT,)),
    )
    text = body(sent(app, "agent/customer_replied")[0][1])
    assert "it is the fuser" in text and "Replacement ordered." in text
    for row in rows(app, Outbox, Outbox.recipient.in_([ALICE, CAROL])):
        assert b"fuser" not in row.raw


def test_nosend_records_without_relaying(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    send_as_agent(app, agent_reply(number, "#nosend\nTold her by phone."), reply_address(number))
    assert sent(app, "requester/agent_reply") == []
    replies = rows(app, Message, Message.kind == "agent_reply")
    assert [m.text_stripped.strip() for m in replies] == ["Told her by phone."]
    assert "agent_reply_not_sent" in kinds(app)


# ---------------------------------------------------------------- identity


def test_forged_agent_mail_is_treated_as_a_customers(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = agents_app(make_app, tmp_path)
    number, first = customer_ticket(app)
    raw = agent_reply(
        number, "#status closed\nYour refund is approved.", to=SUPPORT, in_reply_to=first
    )
    with caplog.at_level("WARNING", logger="maild.agents"):
        send_as_agent(app, raw, SUPPORT)
    assert ticket(app, number).status == "new"
    assert sent(app, "requester/agent_reply") == []
    unverified = rows(app, Event, Event.kind == "unverified_agent_mail")
    assert len(unverified) == 1 and unverified[0].data["agent"] == ANNA
    assert any("unverified agent mail" in r.getMessage() for r in caplog.records)
    stored = rows(app, Message, Message.from_address == ANNA)
    assert [m.kind for m in stored] == ["customer"]


def test_token_for_another_ticket_or_agent_is_refused(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, first = customer_ticket(app)
    other, _ = customer_ticket(app, subject="printer two")
    # Anna's token for the other ticket, on a reply that threads to this one.
    raw = agent_reply(number, "#status closed\nDone.", to=reply_address(other), in_reply_to=first)
    send_as_agent(app, raw, reply_address(other))
    # Bence's token, used from Anna's address.
    raw = agent_reply(number, "#status closed\nDone.", to=reply_address(number, BENCE))
    send_as_agent(app, raw, reply_address(number, BENCE))
    assert ticket(app, number).status == "new"
    assert sent(app, "requester/agent_reply") == []
    assert kinds(app).count("unverified_agent_mail") == 2


def test_authentication_results_from_a_trusted_relay_verify(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, first = customer_ticket(app)
    untrusted = {"Authentication-Results": "evil.example; dkim=pass header.d=example.com"}
    raw = agent_reply(number, "#status closed\n", to=SUPPORT, in_reply_to=first, headers=untrusted)
    send_as_agent(app, raw, SUPPORT)
    assert ticket(app, number).status == "new"
    trusted = {"Authentication-Results": f"{TRUSTED}; dkim=pass header.d=example.com"}
    raw = agent_reply(number, "#status pending\n", to=SUPPORT, in_reply_to=first, headers=trusted)
    send_as_agent(app, raw, SUPPORT)
    assert ticket(app, number).status == "pending"


def test_token_only_policy_ignores_authentication(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path, identity="token")
    number, first = customer_ticket(app)
    trusted = {"Authentication-Results": f"{TRUSTED}; dkim=pass header.d=example.com"}
    send_as_agent(
        app,
        agent_reply(number, "#status pending\n", to=SUPPORT, in_reply_to=first, headers=trusted),
        SUPPORT,
    )
    assert ticket(app, number).status == "new"
    send_as_agent(app, agent_reply(number, "#status pending\n"), reply_address(number))
    assert ticket(app, number).status == "pending"


def test_reply_by_token_alone_finds_the_ticket(make_app: AppFactory, tmp_path: Path) -> None:
    """A client that drops In-Reply-To and the subject tag still reaches the ticket."""
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    raw = make_mail(
        sender=ANNA,
        to=reply_address(number),
        subject="about that",
        body="#status pending\nWe are on it.\n",
    )
    assert send_as_agent(app, raw, reply_address(number)) is SpoolState.DONE
    assert ticket(app, number).status == "pending"
    assert len(rows(app, Ticket)) == 1


def test_agent_out_of_office_is_not_relayed(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    raw = agent_reply(number, "I am away until Monday.", headers={"Auto-Submitted": "auto-replied"})
    send_as_agent(app, raw, reply_address(number))
    assert sent(app, "requester/agent_reply") == []
    assert ticket(app, number).status == "new"


# ---------------------------------------------------------------- customers on old tickets


def customer_follow_up(app: App, number: str, message_id: str) -> str:
    raw = make_mail(
        subject=f"Re: The printer is broken [#{number}]",
        in_reply_to=message_id,
        body="It is broken again.\n",
    )
    outcome = deliver(app, raw, Envelope(mail_from=ALICE, rcpt_to=(SUPPORT,)))
    assert outcome.ticket_number is not None
    return outcome.ticket_number


@pytest.mark.parametrize(
    ("status", "days_later", "same_ticket"),
    [("resolved", 14, True), ("resolved", 15, False), ("closed", 0, False)],
)
def test_customer_writing_to_an_old_ticket(
    make_app: AppFactory,
    tmp_path: Path,
    clock: FixedClock,
    status: str,
    days_later: int,
    same_ticket: bool,
) -> None:
    app = agents_app(make_app, tmp_path, reopen_days=14)
    number, first = customer_ticket(app)
    send_as_agent(app, agent_reply(number, f"#status {status}\nDone."), reply_address(number))
    assert ticket(app, number).status == status
    clock.advance(timedelta(days=days_later))
    joined = customer_follow_up(app, number, first)
    if same_ticket:
        assert joined == number and ticket(app, number).status == "open"
        return
    assert joined != number and ticket(app, number).status == status
    assert ticket(app, joined).status == "new"
    link = rows(app, Event, Event.kind == "follow_up_of")
    back = rows(app, Event, Event.kind == "followed_up_by")
    assert [e.data["ticket"] for e in link] == [number]
    assert [e.data["ticket"] for e in back] == [joined]
    assert [r for r, _ in sent(app, "agent/new_ticket")] == [ANNA, ANNA]


def test_agent_mail_delivered_twice_is_relayed_once(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    raw = agent_reply(number, "Once is enough.")
    assert send_as_agent(app, raw, reply_address(number)) is SpoolState.DONE
    assert send_as_agent(app, raw, SUPPORT) is SpoolState.IGNORED
    assert len(sent(app, "requester/agent_reply")) == 2  # Alice and Carol, once each


def with_attachment(raw: bytes, filename: str, data: bytes) -> bytes:
    mail = message_from_bytes(raw, policy=default)
    assert isinstance(mail, Mail)
    mail.add_attachment(data, maintype="application", subtype="pdf", filename=filename)
    return mail.as_bytes(policy=SMTP_POLICY)


def attached(mail: Mail) -> dict[str, bytes]:
    return {
        str(part.get_filename()): part.get_payload(decode=True) for part in mail.iter_attachments()
    }


def test_attachments_go_to_the_agent_and_to_the_customer_within_the_limit(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path, attachment_limit=1000)
    raw = with_attachment(make_mail(subject="printer manual"), "manual.pdf", b"%PDF-1 small")
    raw = with_attachment(raw, "scan.pdf", b"x" * 2000)
    number = deliver(app, raw, Envelope(mail_from=ALICE, rcpt_to=(SUPPORT,))).ticket_number
    assert number is not None
    notification = sent(app, "agent/new_ticket")[0][1]
    assert attached(notification) == {"manual.pdf": b"%PDF-1 small"}
    assert "scan.pdf (2000 bytes, not attached: too large)" in body(notification)
    reply = with_attachment(agent_reply(number, "The fix is attached."), "fix.pdf", b"%PDF-fix")
    send_as_agent(app, reply, reply_address(number))
    relayed = sent(app, "requester/agent_reply")[0][1]
    assert attached(relayed) == {"fix.pdf": b"%PDF-fix"}
    assert "The fix is attached." in body(relayed)


def test_relayed_attachments_carry_the_safe_name_the_ticket_shows(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    reply = agent_reply(number, "Here it is.")
    reply = with_attachment(reply, "../../etc/CON.pdf", b"%PDF-fix")
    send_as_agent(app, reply, reply_address(number))
    relayed = sent(app, "requester/agent_reply")[0][1]
    assert attached(relayed) == {"_CON.pdf": b"%PDF-fix"}


def test_reply_by_subject_tag_alone_finds_the_ticket(make_app: AppFactory, tmp_path: Path) -> None:
    """Agents are not participants of the customer's mails; the tag still leads them in."""
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    trusted = {"Authentication-Results": f"{TRUSTED}; spf=pass smtp.mailfrom={ANNA}"}
    raw = agent_reply(number, "#priority high\nLooking into it.", to=SUPPORT, headers=trusted)
    assert send_as_agent(app, raw, SUPPORT) is SpoolState.DONE
    assert ticket(app, number).priority == "high"
    assert len(rows(app, Ticket)) == 1
    assert len(sent(app, "requester/agent_reply")) == 2


def test_an_inactive_agent_cannot_act(make_app: AppFactory, tmp_path: Path) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    old = "old@example.com"
    raw = agent_reply(number, "#status closed\nBye.", sender=old, to=reply_address(number, old))
    deliver(app, raw, Envelope(mail_from=old, rcpt_to=(reply_address(number, old),)))
    assert ticket(app, number).status == "new"
    assert sent(app, "requester/agent_reply") == []
    assert [m.kind for m in rows(app, Message, Message.from_address == old)] == ["customer"]


def test_customers_the_agent_wrote_to_directly_get_no_second_copy(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = agents_app(make_app, tmp_path)
    number, _ = customer_ticket(app)
    raw = agent_reply(number, "Answering all.", to=f"{CAROL}, {reply_address(number)}")
    send_as_agent(app, raw, reply_address(number))
    assert [r for r, _ in sent(app, "requester/agent_reply")] == [ALICE]
