"""Reads and upserts for the pipeline and the read interface, in a caller's session."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maild.db.models import Contact, Message, Ticket, TicketContact


class SqlThreadIndex:
    """The lookups `pipeline.thread` needs, answered from the database."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def ticket_for_message_ids(self, message_ids: list[str]) -> int | None:
        rows = self._session.execute(
            select(Message.message_id, Message.ticket_id).where(Message.message_id.in_(message_ids))
        ).all()
        by_id = {message_id: ticket_id for message_id, ticket_id in rows}
        for message_id in message_ids:
            if message_id in by_id:
                return by_id[message_id]
        return None

    def ticket_for_number(self, number: str) -> int | None:
        return self._session.scalar(select(Ticket.id).where(Ticket.number == number))

    def is_participant(self, ticket_id: int, address: str) -> bool:
        found = self._session.scalar(
            select(TicketContact.contact_id)
            .join(Contact, Contact.id == TicketContact.contact_id)
            .where(TicketContact.ticket_id == ticket_id, Contact.address == address.lower())
        )
        return found is not None


def find_message(session: Session, message_id: str, body_hash: str) -> Message | None:
    return session.scalars(
        select(Message).where(Message.message_id == message_id, Message.body_hash == body_hash)
    ).first()


def contact_for(session: Session, address: str, name: str, now: datetime) -> Contact:
    """The contact for an address, created if new; safe against a concurrent creator."""
    address = address.lower()
    contact = session.scalars(select(Contact).where(Contact.address == address)).first()
    if contact is not None:
        if name and not contact.name:
            contact.name = name
        return contact
    try:
        with session.begin_nested():
            contact = Contact(address=address, name=name, created_at=now)
            session.add(contact)
    except IntegrityError:
        contact = session.scalars(select(Contact).where(Contact.address == address)).one()
    return contact


def add_participant(session: Session, ticket_id: int, contact_id: int, role: str) -> None:
    exists = session.get(TicketContact, (ticket_id, contact_id))
    if exists is None:
        session.add(TicketContact(ticket_id=ticket_id, contact_id=contact_id, role=role))


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
