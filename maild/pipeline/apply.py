"""Apply: turn the steps' decisions into rows, inside a transaction the caller opened.

This is the hot path of every mail, so it writes with Core statements (a handful per mail)
rather than through the ORM's unit of work; the models stay the schema and the read side.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from maild.config import Settings
from maild.db import queries
from maild.db.base import Base
from maild.db.models import Attachment, Event, Message, MessageRef, Ticket
from maild.numbering import Numbering
from maild.pipeline.thread import ThreadDecision, ThreadReason
from maild.rules import Assignment, RouteDecision
from maild.types import Address, Direction, MailClass, MessageKind, ParsedMail, TicketStatus

SYSTEM_ACTOR = "maild"
_MESSAGE_ID_LIMIT = 998
# A customer writing again reopens the ticket, so the follow-up is seen.
_REOPENED_BY_CUSTOMER = {TicketStatus.PENDING, TicketStatus.RESOLVED, TicketStatus.CLOSED}


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# Built once: parameters are passed at execution, so each compiles once and is cached.
_TICKET = _table(Ticket)
_INSERT_TICKET = insert(_TICKET).returning(_TICKET.c.id)
_SET_NUMBER = (
    update(_TICKET).where(_TICKET.c.id == bindparam("ticket_id")).values(number=bindparam("number"))
)
_INSERT_MESSAGE = insert(_table(Message)).returning(_table(Message).c.id)
_INSERT_ATTACHMENT = insert(_table(Attachment))
_INSERT_REF = insert(_table(MessageRef))
_INSERT_EVENT = insert(_table(Event))


@dataclass(frozen=True, slots=True)
class Applied:
    ticket_id: int
    ticket_number: str
    message_row_id: int
    created_ticket: bool


@dataclass(frozen=True, slots=True)
class EventRow:
    ticket_id: int
    kind: str
    data: dict[str, Any]


def record_events(
    conn: Connection, events: list[EventRow], now: datetime, actor: str = SYSTEM_ACTOR
) -> None:
    if events:
        conn.execute(
            _INSERT_EVENT,
            [
                {
                    "ticket_id": e.ticket_id,
                    "at": now,
                    "kind": e.kind,
                    "actor": actor,
                    "data": e.data,
                }
                for e in events
            ],
        )


def apply(
    conn: Connection,
    *,
    mail: ParsedMail,
    mail_class: MailClass,
    decision: ThreadDecision,
    requester: tuple[str, str],
    spool_id: int,
    route: RouteDecision,
    assignment: Assignment | None,
    settings: Settings,
    numbering: Numbering,
    now: datetime,
    looked_up: dict[str, int | None] | None = None,
    new_ticket: Mapping[str, Any] | None = None,
    current: queries.CurrentTicket | None = None,
) -> Applied:
    """Store the mail in its ticket (opening one if the decision says so), with the fields,
    tags and assignee routing chose. `looked_up`: contacts this transaction has looked
    up already (`queries.look_up_contacts`). `new_ticket`: the columns of the ticket to
    open (`opening_fields`, with its SLA clocks added), so that its row is written once.
    `current`: the ticket the decision names, if any, as this transaction read it."""
    people = _participants(mail, requester, settings)
    contact_ids = queries.contacts_for(conn, people, now, looked_up=looked_up)
    events: list[EventRow] = []

    if decision.ticket_id is None:
        fields = dict(new_ticket or opening_fields(route, assignment, now))
        ticket_id, number = _open_ticket(
            conn, mail, contact_ids[requester[0]], fields, route.tags, numbering, now
        )
        events.append(
            EventRow(
                ticket_id,
                "ticket_created",
                {"spool_id": spool_id, "message_id": mail.message_id, "thread": decision.reason},
            )
        )
        if decision.reason is ThreadReason.STRANGER_TAG and decision.claimed_ticket_id:
            events += _stranger_events(
                conn, ticket_id, number, decision.claimed_ticket_id, requester[0]
            )
        if decision.reason is ThreadReason.FOLLOW_UP and decision.claimed_ticket_id:
            events += _follow_up_events(conn, ticket_id, number, decision.claimed_ticket_id)
    else:
        ticket_id = decision.ticket_id
        assert current is not None and current.id == ticket_id, "read by the caller"
        number, status = current.number, current.status
        changes: dict[str, Any] = {"updated_at": now}
        if mail_class not in (MailClass.AUTO_REPLY, MailClass.BOUNCE) and (
            status in _REOPENED_BY_CUSTOMER
        ):
            changes["status"] = TicketStatus.OPEN
        routed = _routed_fields(route, assignment, now)
        changes.update({k: v for k, v in routed.items() if v is not None})
        if route.tags or route.tags_removed:
            changes["tags"] = _merge_tags(current.tags, route.tags, route.tags_removed)
        if changes.get("status", status) != status:
            why = "routing rule" if route.status else "customer replied"
            events.append(
                EventRow(
                    ticket_id,
                    "status_changed",
                    {"from": status, "to": changes["status"], "why": why},
                )
            )
        conn.execute(_update_ticket(frozenset(changes)), {"ticket_id": ticket_id, **changes})
    events += _route_events(ticket_id, route, assignment)

    roles = {address: "cc" for address in contact_ids}
    if decision.ticket_id is None:
        roles[requester[0]] = "requester"
    queries.add_participants(
        conn, ticket_id, {contact_ids[address]: role for address, role in roles.items()}
    )
    message_id = _store_message(conn, ticket_id, mail, mail_class, spool_id, now)
    record_events(conn, events, now)
    return Applied(ticket_id, number, message_id, decision.ticket_id is None)


@functools.cache
def _update_ticket(columns: frozenset[str]) -> Any:
    """UPDATE ticket SET these columns, one statement per set of columns: there are few
    sets, and building the statement for each mail cost more than running it."""
    return (
        update(_TICKET)
        .where(_TICKET.c.id == bindparam("ticket_id"))
        .values({column: bindparam(column) for column in columns})
    )


def _participants(
    mail: ParsedMail, requester: tuple[str, str], settings: Settings
) -> dict[str, str]:
    """Everyone on From/To/Cc received or wrote this mail, so may follow up by tag."""
    people: dict[str, str] = {}
    if requester[0]:
        people[requester[0]] = requester[1]
    everyone: list[Address] = [*([mail.from_] if mail.from_ else []), *mail.to, *mail.cc]
    for person in everyone:
        if person.address and not settings.is_support_address(person.address):
            people.setdefault(person.address, person.name)
    return people


def _routed_fields(
    route: RouteDecision, assignment: Assignment | None, now: datetime
) -> dict[str, Any]:
    """Ticket columns routing sets; None means "not set by the rules"."""
    agent = assignment.agent if assignment else None
    return {
        "queue": route.queue,
        "team": route.team,
        "tier": route.tier,
        "priority": route.priority,
        "type": route.ticket_type,
        "status": route.status.value if route.status else None,
        "sla_policy": route.sla,
        "assignee": agent,
        "assigned_at": now if agent else None,
    }


def opening_fields(
    route: RouteDecision, assignment: Assignment | None, now: datetime
) -> dict[str, Any]:
    """A new ticket's columns from routing, with the defaults for what routing left unset."""
    routed = _routed_fields(route, assignment, now)
    return {
        **routed,
        "status": routed["status"] or TicketStatus.NEW,
        "priority": routed["priority"] or "normal",
    }


def _merge_tags(current: list[str], added: tuple[str, ...], removed: tuple[str, ...]) -> list[str]:
    merged = [tag for tag in current if tag not in removed]
    merged += [tag for tag in added if tag not in merged]
    return merged


def _route_events(
    ticket_id: int, route: RouteDecision, assignment: Assignment | None
) -> list[EventRow]:
    """One event per rule that fired (with the conditions that matched), and the assignment."""
    events = [EventRow(ticket_id, "rule_fired", asdict(fired)) for fired in route.fired]
    if assignment is not None:
        events.append(
            EventRow(ticket_id, "assigned", {"agent": assignment.agent, "why": assignment.note})
        )
    return events


def _open_ticket(
    conn: Connection,
    mail: ParsedMail,
    requester_id: int,
    fields: dict[str, Any],
    tags: tuple[str, ...],
    numbering: Numbering,
    now: datetime,
) -> tuple[int, str]:
    ticket_id = conn.execute(
        _INSERT_TICKET,
        {
            **fields,
            "subject": mail.subject or "(no subject)",
            "tags": list(tags),
            "requester_id": requester_id,
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    # The id is the sequence the number is made from: unique across instances, gaps allowed.
    number = numbering.number(ticket_id, now)
    conn.execute(_SET_NUMBER, {"ticket_id": ticket_id, "number": number})
    return ticket_id, number


def _stranger_events(
    conn: Connection, ticket_id: int, number: str, claimed_id: int, sender: str
) -> list[EventRow]:
    claimed_number = conn.scalar(select(Ticket.number).where(Ticket.id == claimed_id))
    return [
        EventRow(
            ticket_id,
            "stranger_tag",
            {"sender": sender, "claimed_ticket": claimed_number, "outcome": "new ticket"},
        ),
        EventRow(claimed_id, "stranger_tag_refused", {"sender": sender, "new_ticket": number}),
    ]


def _follow_up_events(conn: Connection, ticket_id: int, number: str, old_id: int) -> list[EventRow]:
    old_number = conn.scalar(select(Ticket.number).where(Ticket.id == old_id))
    return [
        EventRow(ticket_id, "follow_up_of", {"ticket": old_number}),
        EventRow(old_id, "followed_up_by", {"ticket": number}),
    ]


def _store_message(
    conn: Connection,
    ticket_id: int,
    mail: ParsedMail,
    mail_class: MailClass,
    spool_id: int,
    now: datetime,
) -> int:
    automatic = mail_class in (MailClass.AUTO_REPLY, MailClass.BOUNCE)
    return store_incoming(
        conn,
        ticket_id,
        mail,
        kind=MessageKind.AUTO_REPLY if automatic else MessageKind.CUSTOMER,
        mail_class=mail_class,
        text_stripped=mail.text_stripped,
        spool_id=spool_id,
        now=now,
    )


def store_incoming(
    conn: Connection,
    ticket_id: int,
    mail: ParsedMail,
    *,
    kind: MessageKind,
    mail_class: MailClass,
    text_stripped: str,
    spool_id: int,
    now: datetime,
) -> int:
    """An incoming mail as a message of the ticket, with its attachments; returns its row id."""
    message_id: int = conn.execute(
        _INSERT_MESSAGE,
        {
            "ticket_id": ticket_id,
            "spool_id": spool_id,
            "direction": Direction.IN,
            "kind": kind,
            "mail_class": mail_class,
            "message_id": mail.message_id[:_MESSAGE_ID_LIMIT],
            "body_hash": mail.body_hash,
            "in_reply_to": list(mail.in_reply_to),
            "references": list(mail.references),
            "from_address": mail.from_.address if mail.from_ else None,
            "from_name": mail.from_.name if mail.from_ else "",
            "to": [a.address for a in mail.to],
            "cc": [a.address for a in mail.cc],
            "subject": mail.subject,
            "date": mail.date,
            "text": mail.text,
            "text_stripped": text_stripped,
            "html": mail.html,
            "created_at": now,
        },
    ).scalar_one()
    refs = dict.fromkeys(ref[:_MESSAGE_ID_LIMIT] for ref in (*mail.in_reply_to, *mail.references))
    if refs:
        conn.execute(_INSERT_REF, [{"message_id": message_id, "ref": ref} for ref in refs])
    if mail.attachments:
        conn.execute(
            _INSERT_ATTACHMENT,
            [
                {
                    "message_id": message_id,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                    "content_id": a.content_id,
                    "inline": a.inline,
                }
                for a in mail.attachments
            ],
        )
    return message_id
