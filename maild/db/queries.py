"""Reads and upserts for the pipeline and the read interface, in a caller's session."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text
from sqlalchemy.orm import Session

from maild.db.base import Base
from maild.db.dialects import dialect_insert
from maild.db.models import Contact, Message, MessageRef, Ticket, TicketContact

# Statements built once with bound parameters, so each compiles once: this is per mail.
_TICKETS_BY_MESSAGE_IDS = select(Message.message_id, Message.ticket_id).where(
    Message.message_id.in_(bindparam("ids", expanding=True))
)
_TICKET_BY_NUMBER = select(Ticket.id).where(Ticket.number == bindparam("number"))
_ANSWERING = (
    select(Message.ticket_id)
    .join(MessageRef, MessageRef.message_id == Message.id)
    .order_by(Message.id)
    .limit(1)
)
_TICKET_ANSWERING = _ANSWERING.where(MessageRef.ref == bindparam("mid"))
_TICKET_ANSWERING_ANY = _ANSWERING.where(MessageRef.ref.in_(bindparam("ids", expanding=True)))
_PARTICIPANT = (
    select(TicketContact.contact_id)
    .join(Contact, Contact.id == TicketContact.contact_id)
    .where(TicketContact.ticket_id == bindparam("ticket_id"), Contact.address == bindparam("a"))
)
_DUPLICATE = (
    select(Ticket.number)
    .join(Message, Message.ticket_id == Ticket.id)
    .where(Message.message_id == bindparam("mid"), Message.body_hash == bindparam("hash"))
    .limit(1)
)
_CONTACT_IDS = select(Contact.address, Contact.id).where(
    Contact.address.in_(bindparam("addresses", expanding=True))
)
_CONTACT_ID = select(Contact.id).where(Contact.address == bindparam("address"))
_CURRENT_TICKET = select(
    Ticket.number,
    Ticket.status,
    Ticket.tags,
    Ticket.updated_at,
    Ticket.sla_applied,
    Ticket.next_sla_check_at,
).where(Ticket.id == bindparam("ticket_id"))


@dataclass(frozen=True, slots=True)
class CurrentTicket:
    """A ticket as a mail that threads to it finds it, read once for every step that
    decides what the mail does to it (reopen, follow up, SLA clocks)."""

    id: int
    number: str
    status: str
    tags: list[str]
    updated_at: datetime
    sla_applied: str | None
    next_sla_check_at: datetime | None


def current_ticket(conn: Connection, ticket_id: int) -> CurrentTicket:
    row = conn.execute(_CURRENT_TICKET, {"ticket_id": ticket_id}).one()
    return CurrentTicket(
        ticket_id,
        str(row.number),
        row.status,
        row.tags or [],
        row.updated_at,
        row.sla_applied,
        row.next_sla_check_at,
    )


class SqlThreadIndex:
    """The lookups `pipeline.thread` needs, answered from the database."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def ticket_for_message_ids(self, message_ids: list[str]) -> int | None:
        rows = self._conn.execute(_TICKETS_BY_MESSAGE_IDS, {"ids": message_ids}).all()
        by_id = {message_id: ticket_id for message_id, ticket_id in rows}
        for message_id in message_ids:
            if message_id in by_id:
                return by_id[message_id]
        return None

    def ticket_for_number(self, number: str) -> int | None:
        return self._conn.scalar(_TICKET_BY_NUMBER, {"number": number})

    def is_participant(self, ticket_id: int, address: str) -> bool:
        found = self._conn.scalar(_PARTICIPANT, {"ticket_id": ticket_id, "a": address.lower()})
        return found is not None

    def ticket_answering(self, message_ids: list[str]) -> int | None:
        """The ticket of the earliest received mail that names one of these ids."""
        if len(message_ids) == 1:  # a new mail's own id: no IN list to render
            return self._conn.scalar(_TICKET_ANSWERING, {"mid": message_ids[0]})
        return self._conn.scalar(_TICKET_ANSWERING_ANY, {"ids": message_ids})


def find_duplicate(conn: Connection, message_id: str, body_hash: str) -> str | None:
    """The number of the ticket that already holds this mail, or None."""
    return conn.scalar(_DUPLICATE, {"mid": message_id, "hash": body_hash})


def contacts_for(
    conn: Connection,
    people: dict[str, str],
    now: datetime,
    *,
    looked_up: dict[str, int | None] | None = None,
) -> dict[str, int]:
    """Contact ids for these addresses (address -> display name), creating the missing ones.

    `looked_up`: what `look_up_contacts` said earlier in this transaction, not asked again.
    Safe against a concurrent creator: the insert skips addresses that exist by then.
    """
    if not people:
        return {}
    wanted = {address.lower(): name for address, name in people.items()}
    known = looked_up or {}
    found = {a: i for a, i in known.items() if a in wanted and i is not None}
    unasked = [a for a in wanted if a not in known]
    if unasked:
        found.update(_contact_ids(conn, unasked))
    missing = [a for a in wanted if a not in found]
    if missing:
        rows = [{"address": a, "name": wanted[a], "created_at": now} for a in missing]
        created = conn.execute(_create_contacts(conn.dialect.name), rows).all()
        found.update({address: contact_id for address, contact_id in created})
        # Those another transaction created meanwhile were skipped, and are not returned.
        raced = [a for a in missing if a not in found]
        if raced:
            found.update(_contact_ids(conn, raced))
    return found


def look_up_contacts(conn: Connection, addresses: list[str]) -> dict[str, int | None]:
    """Each address, lower-cased, with its contact's id, or None if it has no contact."""
    if not addresses:
        return {}
    wanted = [address.lower() for address in addresses]
    if len(wanted) == 1:
        # The usual case (the sender), without the IN list: rendering it for each
        # execution cost more than the lookup.
        return {wanted[0]: conn.scalar(_CONTACT_ID, {"address": wanted[0]})}
    found = _contact_ids(conn, wanted)
    return {address: found.get(address) for address in wanted}


def _contact_ids(conn: Connection, addresses: list[str]) -> dict[str, int]:
    rows = conn.execute(_CONTACT_IDS, {"addresses": addresses}).all()
    return {address: contact_id for address, contact_id in rows}


def add_participants(conn: Connection, ticket_id: int, roles: dict[int, str]) -> None:
    """Add contacts to a ticket; those already taking part keep their role."""
    if roles:
        rows = [
            {"ticket_id": ticket_id, "contact_id": contact_id, "role": role}
            for contact_id, role in roles.items()
        ]
        conn.execute(_insert_ignoring_conflicts(conn, TicketContact), rows)


def _insert_ignoring_conflicts(conn: Connection, model: type[Base]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING; parameters go separately, so it compiles once."""
    return _ignoring_conflicts(conn.dialect.name, model.__tablename__)


@functools.cache
def _ignoring_conflicts(dialect_name: str, table_name: str) -> Any:
    return dialect_insert(dialect_name, Base.metadata.tables[table_name]).on_conflict_do_nothing()


@functools.cache
def _create_contacts(dialect_name: str) -> Any:
    return _ignoring_conflicts(dialect_name, Contact.__tablename__).returning(
        Contact.address, Contact.id
    )


def participants(session: Session, ticket_id: int) -> list[tuple[str, str, str]]:
    """(address, name, role) of everyone taking part, requester first."""
    rows = session.execute(
        select(Contact.address, Contact.name, TicketContact.role)
        .join(TicketContact, TicketContact.contact_id == Contact.id)
        .where(TicketContact.ticket_id == ticket_id)
        .order_by((TicketContact.role != "requester"), Contact.address)
    ).all()
    return [(address, name, role) for address, name, role in rows]


def message_counts(session: Session, ticket_ids: list[int]) -> dict[int, int]:
    if not ticket_ids:
        return {}
    rows = session.execute(
        select(Message.ticket_id, func.count())
        .where(Message.ticket_id.in_(ticket_ids))
        .group_by(Message.ticket_id)
    ).all()
    return {ticket_id: int(count) for ticket_id, count in rows}


_OPEN_TICKETS_OF = select(func.count()).where(
    Ticket.assignee == bindparam("agent"), Ticket.status.not_in(["resolved", "closed"])
)
_LAST_ASSIGNED_IN = (
    select(Ticket.assignee)
    .where(Ticket.team == bindparam("team"), Ticket.assigned_at.is_not(None))
    .order_by(Ticket.assigned_at.desc(), Ticket.id.desc())
    .limit(1)
)
# A namespace of our own for the two-key advisory lock (migrations use 727274).
_ROTATION_LOCK = text("SELECT pg_advisory_xact_lock(727275, hashtext(:team))")


class SqlAgentLoad:
    """The rules' AgentLoad, answered from the tickets table."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def open_tickets(self, agent_address: str) -> int:
        return int(self._conn.scalar(_OPEN_TICKETS_OF, {"agent": agent_address}) or 0)

    def last_assigned(self, team: str) -> str | None:
        if self._conn.dialect.name == "postgresql":
            # Instances assigning in one team at once would each read the same last
            # assignee and pick the same next one; the lock (held to commit) lines them
            # up, and the read after it sees the assignment committed before. (SQLite
            # has one writer at a time anyway.)
            self._conn.execute(_ROTATION_LOCK, {"team": team})
        return self._conn.scalar(_LAST_ASSIGNED_IN, {"team": team})
