"""What the agents' side reads from a ticket, and how it records an agent's mail.

Functions of a connection inside the caller's transaction; no decisions here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select

from maild.agents.changes import TicketState
from maild.config import Settings
from maild.db.models import Contact, Event, Message, Ticket, TicketContact
from maild.pipeline.apply import store_incoming
from maild.rules.teams import Directory
from maild.types import Direction, MailClass, MessageKind, ParsedMail, TicketStatus

# How much of the customer's history and of the internal notes a notification shows.
_HISTORY = 5
_NOTES = 5


class SqlTickets:
    """The lookups `recognise` needs, from the database."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def ticket_number(self, ticket_id: int) -> str | None:
        return self._conn.scalar(select(Ticket.number).where(Ticket.id == ticket_id))

    def ticket_for_number(self, number: str) -> int | None:
        return self._conn.scalar(select(Ticket.id).where(func.lower(Ticket.number) == number))


def customers(
    conn: Connection, ticket_id: int, settings: Settings, directory: Directory
) -> tuple[tuple[str, str], ...]:
    """The requester, then the cc'd contacts; never an agent or one of our addresses."""
    rows = conn.execute(
        select(Contact.address, Contact.name, TicketContact.role)
        .join(TicketContact, TicketContact.contact_id == Contact.id)
        .where(TicketContact.ticket_id == ticket_id)
        .order_by(TicketContact.role != "requester", Contact.address)
    ).all()
    return tuple(
        (row.address, row.name)
        for row in rows
        if not settings.is_support_address(row.address)
        # Customers cc agents; an agent is never "the customer".
        and not directory.is_agent(row.address)
    )


def ticket_state(conn: Connection, ticket_id: int) -> TicketState:
    row = conn.execute(
        select(
            Ticket.status,
            Ticket.priority,
            Ticket.tier,
            Ticket.queue,
            Ticket.type,
            Ticket.tags,
            Ticket.assignee,
            Ticket.team,
        ).where(Ticket.id == ticket_id)
    ).one()
    return TicketState(
        row.status,
        row.priority,
        row.tier,
        row.queue,
        row.type,
        tuple(row.tags or ()),
        row.assignee,
        row.team,
    )


def store_agent_mail(
    conn: Connection,
    ticket_id: int,
    mail: ParsedMail,
    kind: MessageKind,
    text_stripped: str,
    spool_id: int,
    now: datetime,
) -> None:
    """The agent's mail on the ticket: its stripped text is what was relayed."""
    store_incoming(
        conn,
        ticket_id,
        mail,
        kind=kind,
        mail_class=MailClass.HUMAN,
        text_stripped=text_stripped,
        spool_id=spool_id,
        now=now,
    )


def resolved_at(conn: Connection, ticket_id: int) -> datetime | None:
    """When the ticket was last set to resolved, from its events."""
    rows = conn.execute(
        select(Event.at, Event.data)
        .where(Event.ticket_id == ticket_id, Event.kind == "status_changed")
        .order_by(Event.id.desc())
        .limit(20)
    ).all()
    return next((r.at for r in rows if r.data.get("to") == TicketStatus.RESOLVED), None)


def latest_customer_message(ticket_id: int, *columns: Any) -> Select[Any]:
    """`columns` of the customer's latest mail on the ticket."""
    return (
        select(*columns)
        .where(
            Message.ticket_id == ticket_id,
            Message.direction == Direction.IN,
            Message.kind == MessageKind.CUSTOMER,
        )
        .order_by(Message.id.desc())
        .limit(1)
    )


def last_customer_mail(conn: Connection, ticket_id: int) -> tuple[str, tuple[str, ...]] | None:
    row = conn.execute(
        latest_customer_message(ticket_id, Message.message_id, Message.references)
    ).first()
    return (row.message_id, tuple(row.references or ())) if row else None


def responded_before(conn: Connection, ticket_id: int) -> bool:
    found = conn.scalar(
        select(Event.id).where(Event.ticket_id == ticket_id, Event.kind == "first_response")
    )
    return found is not None


def history(conn: Connection, ticket_id: int) -> list[dict[str, str]]:
    """The requester's latest other tickets."""
    requester = select(Ticket.requester_id).where(Ticket.id == ticket_id).scalar_subquery()
    rows = conn.execute(
        select(Ticket.number, Ticket.subject, Ticket.status, Ticket.created_at)
        .where(Ticket.requester_id == requester, Ticket.id != ticket_id)
        .order_by(Ticket.id.desc())
        .limit(_HISTORY)
    ).all()
    return [
        {
            "number": str(r.number),
            "subject": r.subject,
            "status": r.status,
            "created_at": r.created_at.date().isoformat(),
        }
        for r in rows
    ]


def notes(conn: Connection, ticket_id: int) -> list[dict[str, str]]:
    """The ticket's latest internal notes, oldest first: for agents' eyes only."""
    rows = conn.execute(
        select(Message.from_address, Message.text_stripped, Message.created_at)
        .where(
            Message.ticket_id == ticket_id,
            Message.kind == MessageKind.INTERNAL_NOTE,
            Message.text_stripped != "",
        )
        .order_by(Message.id.desc())
        .limit(_NOTES)
    ).all()
    return [
        {"agent": r.from_address or "", "text": r.text_stripped, "at": r.created_at.isoformat()}
        for r in reversed(rows)
    ]
