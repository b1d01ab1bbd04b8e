"""Apply: turn the steps' decisions into rows, inside a transaction the caller opened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maild.config import Settings
from maild.db import queries
from maild.db.models import Attachment, Event, Message, Ticket
from maild.numbering import Numbering
from maild.pipeline.thread import ThreadDecision, ThreadReason
from maild.types import Direction, MailClass, MessageKind, ParsedMail, TicketStatus

SYSTEM_ACTOR = "maild"
_MESSAGE_ID_LIMIT = 998
# A customer writing again reopens the ticket, so the follow-up is seen.
_REOPENED_BY_CUSTOMER = {TicketStatus.PENDING, TicketStatus.RESOLVED, TicketStatus.CLOSED}


@dataclass(frozen=True, slots=True)
class Applied:
    ticket_number: str
    message_row_id: int
    created_ticket: bool


def record_event(
    session: Session, ticket: Ticket, kind: str, now: datetime, data: dict[str, Any]
) -> None:
    session.add(Event(ticket_id=ticket.id, at=now, kind=kind, actor=SYSTEM_ACTOR, data=data))


def apply(
    session: Session,
    *,
    mail: ParsedMail,
    mail_class: MailClass,
    decision: ThreadDecision,
    requester: tuple[str, str],
    spool_id: int,
    settings: Settings,
    numbering: Numbering,
    now: datetime,
) -> Applied:
    """Store the mail in its ticket (opening one if the decision says so)."""
    created = decision.ticket_id is None
    if decision.ticket_id is None:
        ticket = _open_ticket(session, mail, requester, numbering, now)
        record_event(
            session,
            ticket,
            "ticket_created",
            now,
            {"spool_id": spool_id, "message_id": mail.message_id, "thread": decision.reason},
        )
        if decision.reason is ThreadReason.STRANGER_TAG and decision.claimed_ticket_id:
            _note_stranger(session, ticket, decision.claimed_ticket_id, requester[0], now)
    else:
        ticket = session.get_one(Ticket, decision.ticket_id)
        _update_status(session, ticket, mail_class, now)

    message = _store_message(session, ticket, mail, mail_class, spool_id, now)
    _add_participants(session, ticket, mail, settings, now)
    ticket.updated_at = now
    assert ticket.number is not None
    return Applied(ticket.number, message.id, created)


def _open_ticket(
    session: Session,
    mail: ParsedMail,
    requester: tuple[str, str],
    numbering: Numbering,
    now: datetime,
) -> Ticket:
    contact = queries.contact_for(session, requester[0], requester[1], now)
    ticket = Ticket(
        subject=mail.subject or "(no subject)",
        status=TicketStatus.NEW,
        priority="normal",
        requester=contact,
        requester_id=contact.id,
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    session.flush()  # the id is the sequence the number is made from
    ticket.number = numbering.number(ticket.id, now)
    queries.add_participant(session, ticket.id, contact.id, "requester")
    return ticket


def _note_stranger(
    session: Session, ticket: Ticket, claimed_ticket_id: int, sender: str, now: datetime
) -> None:
    claimed = session.get_one(Ticket, claimed_ticket_id)
    record_event(
        session,
        ticket,
        "stranger_tag",
        now,
        {"sender": sender, "claimed_ticket": claimed.number, "outcome": "new ticket"},
    )
    record_event(
        session,
        claimed,
        "stranger_tag_refused",
        now,
        {"sender": sender, "new_ticket": ticket.number},
    )


def _update_status(session: Session, ticket: Ticket, mail_class: MailClass, now: datetime) -> None:
    if mail_class in (MailClass.AUTO_REPLY, MailClass.BOUNCE):
        return
    if ticket.status in _REOPENED_BY_CUSTOMER:
        record_event(
            session,
            ticket,
            "status_changed",
            now,
            {"from": ticket.status, "to": TicketStatus.OPEN, "why": "customer replied"},
        )
        ticket.status = TicketStatus.OPEN


def _store_message(
    session: Session,
    ticket: Ticket,
    mail: ParsedMail,
    mail_class: MailClass,
    spool_id: int,
    now: datetime,
) -> Message:
    message = Message(
        ticket_id=ticket.id,
        spool_id=spool_id,
        direction=Direction.IN,
        kind=MessageKind.AUTO_REPLY
        if mail_class in (MailClass.AUTO_REPLY, MailClass.BOUNCE)
        else MessageKind.CUSTOMER,
        mail_class=mail_class,
        message_id=mail.message_id[:_MESSAGE_ID_LIMIT],
        body_hash=mail.body_hash,
        in_reply_to=list(mail.in_reply_to),
        references=list(mail.references),
        from_address=mail.from_.address if mail.from_ else None,
        from_name=mail.from_.name if mail.from_ else "",
        to=[a.address for a in mail.to],
        cc=[a.address for a in mail.cc],
        subject=mail.subject,
        date=mail.date,
        text=mail.text,
        text_stripped=mail.text_stripped,
        html=mail.html,
        created_at=now,
    )
    message.attachments = [
        Attachment(
            filename=a.filename,
            content_type=a.content_type,
            size=a.size,
            sha256=a.sha256,
            content_id=a.content_id,
            inline=a.inline,
        )
        for a in mail.attachments
    ]
    session.add(message)
    session.flush()
    return message


def _add_participants(
    session: Session, ticket: Ticket, mail: ParsedMail, settings: Settings, now: datetime
) -> None:
    """Everyone on From/To/Cc received or wrote this mail, so may follow up by tag."""
    people = [*([mail.from_] if mail.from_ else []), *mail.to, *mail.cc]
    for person in people:
        if not person.address or settings.is_support_address(person.address):
            continue
        contact = queries.contact_for(session, person.address, person.name, now)
        queries.add_participant(session, ticket.id, contact.id, "cc")
