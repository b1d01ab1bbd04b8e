"""The variables a template sees, built from the database (documented in templates/README.md).

Every template gets `ticket`, `requester`, `message`, `support_address` and `language`;
`maild/templating.py:sample_context` holds the same shape with sample values, and a
change here changes both and the README.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Any

from sqlalchemy import Connection, select

from maild.db.models import Contact, Message, SpoolEntry, Ticket
from maild.numbering import Numbering
from maild.types import Direction, ParsedMail

NO_SUBJECT = "(no subject)"


def ticket_context(conn: Connection, ticket_id: int, numbering: Numbering) -> dict[str, Any]:
    """`ticket` and `requester` of a stored ticket."""
    row = conn.execute(
        select(
            Ticket.number,
            Ticket.subject,
            Ticket.status,
            Ticket.priority,
            Ticket.type,
            Ticket.queue,
            Ticket.team,
            Ticket.assignee,
            Ticket.created_at,
            Contact.address,
            Contact.name,
        )
        .join(Contact, Contact.id == Ticket.requester_id)
        .where(Ticket.id == ticket_id)
    ).one()
    number = row.number or ""
    return {
        "ticket": {
            "number": number,
            "tag": numbering.tag(number),
            "subject": row.subject or NO_SUBJECT,
            "status": row.status,
            "priority": row.priority,
            "type": row.type,
            "queue": row.queue,
            "team": row.team,
            "assignee": row.assignee,
            "created_at": _date(row.created_at),
        },
        "requester": {"address": row.address, "name": row.name},
    }


def mail_context(mail: ParsedMail) -> dict[str, Any]:
    """`message`: the mail being answered."""
    return {
        "subject": mail.subject,
        "text": mail.text,
        "message_id": mail.message_id,
        "date": _date(mail.date),
    }


def stored_message_context(conn: Connection, ticket_id: int) -> dict[str, Any] | None:
    """`message` from the ticket's latest inbound message; None when it has none."""
    row = conn.execute(
        select(Message.subject, Message.text, Message.message_id, Message.date)
        .where(Message.ticket_id == ticket_id, Message.direction == Direction.IN)
        .order_by(Message.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {
        "subject": row.subject,
        "text": row.text,
        "message_id": row.message_id,
        "date": _date(row.date),
    }


def first_recipients(conn: Connection, ticket_id: int) -> tuple[str, ...]:
    """The envelope recipients of the ticket's first mail (the address it came in on)."""
    stored = conn.scalar(
        select(SpoolEntry.envelope)
        .join(Message, Message.spool_id == SpoolEntry.id)
        .where(Message.ticket_id == ticket_id)
        .order_by(Message.id)
        .limit(1)
    )
    return tuple(stored.get("rcpt_to", ())) if isinstance(stored, dict) else ()


def _date(value: datetime | None) -> str:
    return format_datetime(value) if value is not None else ""
