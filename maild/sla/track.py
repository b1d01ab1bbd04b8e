"""Keep a ticket's SLA clocks current, inside the caller's transaction.

The pipeline calls these when a ticket is created or a customer writes; the agents' side
calls `on_agent_reply` when an agent's reply goes to the customer (never for an internal
note) and `on_ticket_change` after it changes status, priority or policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, select, update

from maild.db.models import Contact, Message, SlaStage, Ticket
from maild.db.queries import CurrentTicket
from maild.pipeline.apply import EventRow, record_events
from maild.sla import clocks as sla_clocks
from maild.sla.calendar import Calendar
from maild.sla.clocks import Clocks, StageKey
from maild.sla.policy import PolicySet, TicketFacts
from maild.types import MessageKind


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


TICKET = _table(Ticket)
CONTACT = _table(Contact)
LEDGER = _table(SlaStage)
MESSAGE = _table(Message)

# What policy matching and the clocks read, and what a sweep needs to notify.
TICKET_COLUMNS = (
    TICKET.c.id,
    TICKET.c.number,
    TICKET.c.subject,
    TICKET.c.status,
    TICKET.c.priority,
    TICKET.c.type,
    TICKET.c.queue,
    TICKET.c.team,
    TICKET.c.tier,
    TICKET.c.assignee,
    TICKET.c.created_at,
    TICKET.c.sla_policy,
    TICKET.c.sla_applied,
    TICKET.c.sla_priority,
    TICKET.c.first_response_due_at,
    TICKET.c.next_response_due_at,
    TICKET.c.resolution_due_at,
    TICKET.c.sla_paused_at,
    TICKET.c.sla_response_cycle,
    TICKET.c.sla_resolution_cycle,
    TICKET.c.next_sla_check_at,
    CONTACT.c.address.label("requester_address"),
    CONTACT.c.name.label("requester_name"),
)


def select_tickets() -> Any:
    return select(*TICKET_COLUMNS).join(CONTACT, CONTACT.c.id == TICKET.c.requester_id)


# Built once: this runs for every mail, and building the statement cost more than running it.
_ONE_TICKET = select_tickets().where(TICKET.c.id == bindparam("ticket_id"))


def clocks_of(row: Row[Any]) -> Clocks:
    return Clocks(
        applied=row.sla_applied,
        priority=row.sla_priority,
        first_response_due_at=row.first_response_due_at,
        next_response_due_at=row.next_response_due_at,
        resolution_due_at=row.resolution_due_at,
        paused_at=row.sla_paused_at,
        response_cycle=row.sla_response_cycle,
        resolution_cycle=row.sla_resolution_cycle,
    )


def facts_of(columns: Mapping[Any, Any], requester_address: str | None) -> TicketFacts:
    """What policy matching reads of a ticket: its columns, and its requester's domain."""
    return TicketFacts(
        queue=columns["queue"],
        priority=columns["priority"],
        type=columns["type"],
        customer_domain=(requester_address or "").rpartition("@")[2].lower(),
    )


_LEDGER_OF = select(
    LEDGER.c.ticket_id, LEDGER.c.target, LEDGER.c.cycle, LEDGER.c.stage, LEDGER.c.occurrence
).where(LEDGER.c.ticket_id.in_(bindparam("ticket_ids", expanding=True)))


def fired_keys(conn: Connection, ticket_ids: list[int]) -> dict[int, set[StageKey]]:
    """The ledger's stage keys of each ticket."""
    found: dict[int, set[StageKey]] = {i: set() for i in ticket_ids}
    if not ticket_ids:
        return found
    for row in conn.execute(_LEDGER_OF, {"ticket_ids": ticket_ids}):
        found[row.ticket_id].add((row.target, row.cycle, row.stage, row.occurrence))
    return found


# Every clock column is written each time, so the statement is one shape and compiles once.
_SET_CLOCKS = (
    update(TICKET)
    .where(TICKET.c.id == bindparam("ticket_id"))
    .values({column: bindparam(column) for column in (*Clocks().columns(), "next_sla_check_at")})
)


@dataclass(frozen=True, slots=True)
class Opening:
    """A new ticket's SLA columns, and the events to record once it exists."""

    columns: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]


class SlaTracker:
    """`policies` gives the SLA policies in force (asked on every call, so a reload
    applies from the next change on)."""

    def __init__(self, policies: Callable[[], PolicySet]) -> None:
        self._policies = policies

    def calendars(self) -> Mapping[str, Calendar]:
        """The calendars of the policies in force (routing's `business_hours` asks them)."""
        return self._policies().calendars

    def opening(
        self, fields: Mapping[str, Any], requester_address: str, now: datetime
    ) -> Opening | None:
        """The clocks of a ticket about to be created with these columns (pipeline/apply.py:
        opening_fields), for its INSERT: worked out before it, so the new row need not be
        read back and written again. None when no policy applies to it."""
        policies = self._policies()
        if not policies.policies:
            return None
        policy = policies.choose(fields["sla_policy"], facts_of(fields, requester_address))
        if policy is None:
            return None
        clocks, events = sla_clocks.update(
            Clocks(), policy, None, status=fields["status"], priority=fields["priority"], now=now
        )
        # A new ticket has no stage in the ledger yet.
        check = sla_clocks.next_check(clocks, policy, set())
        return Opening({**clocks.columns(), "next_sla_check_at": check}, events)

    def opened(self, conn: Connection, ticket_id: int, opening: Opening, now: datetime) -> None:
        """Record the events of the clocks the new ticket `ticket_id` was created with."""
        record_events(conn, [EventRow(ticket_id, kind, data) for kind, data in opening.events], now)

    def on_customer_reply(
        self, conn: Connection, ticket_id: int, now: datetime, found: CurrentTicket | None = None
    ) -> None:
        """A customer's mail joined the ticket: next response re-arms; a resolved ticket
        that reopened gets a new resolution cycle. `found`: the ticket as the mail's
        transaction read it before changing it."""
        if found is None or not self._keeps_no_clocks(found):
            self.refresh(conn, ticket_id, now, customer_replied=True)

    def on_agent_reply(self, conn: Connection, ticket_id: int, now: datetime) -> None:
        """An agent's reply went to the customer: first and next response are met."""
        self.refresh(conn, ticket_id, now, agent_replied=True)

    def after_agent_mail(
        self, conn: Connection, ticket_id: int, spool_id: int, now: datetime
    ) -> None:
        """An agent's mail was handled: a reply to the customer (stored as an agent
        reply from that spool row, not an internal note) meets the response targets;
        any commands in it may have changed status or priority."""
        kinds = set(
            conn.scalars(
                select(MESSAGE.c.kind).where(
                    MESSAGE.c.spool_id == spool_id, MESSAGE.c.ticket_id == ticket_id
                )
            )
        )
        self.refresh(conn, ticket_id, now, agent_replied=MessageKind.AGENT_REPLY in kinds)

    def on_ticket_change(
        self, conn: Connection, ticket_id: int, now: datetime, found: CurrentTicket | None = None
    ) -> None:
        """Status, priority, queue, type or the named policy changed. `found`: as in
        `on_customer_reply`."""
        if found is None or not self._keeps_no_clocks(found):
            self.refresh(conn, ticket_id, now)

    def _keeps_no_clocks(self, found: CurrentTicket) -> bool:
        """What `refresh` would find out by reading the ticket again: no policy can apply
        (there are none) and the ticket has no clocks to stop."""
        return (
            not self._policies().policies
            and found.sla_applied is None
            and found.next_sla_check_at is None
        )

    def refresh(
        self,
        conn: Connection,
        ticket_id: int,
        now: datetime,
        *,
        customer_replied: bool = False,
        agent_replied: bool = False,
        policies: PolicySet | None = None,
    ) -> Clocks:
        """Bring the ticket's clocks and `next_sla_check_at` up to date; returns the clocks."""
        row = conn.execute(_ONE_TICKET, {"ticket_id": ticket_id}).one()
        policies = self._policies() if policies is None else policies
        policy = policies.choose(row.sla_policy, facts_of(row._mapping, row.requester_address))
        before = clocks_of(row)
        if policy is None and before.applied is None and row.next_sla_check_at is None:
            return before  # no service level, before or now
        previous = policies.policies.get(before.applied) if before.applied else None
        after, events = sla_clocks.update(
            before,
            policy,
            previous,
            status=row.status,
            priority=row.priority,
            now=now,
            customer_replied=customer_replied,
            agent_replied=agent_replied,
        )
        check = sla_clocks.next_check(after, policy, fired_keys(conn, [ticket_id])[ticket_id])
        if after != before or check != row.next_sla_check_at:
            conn.execute(
                _SET_CLOCKS, {"ticket_id": ticket_id, **after.columns(), "next_sla_check_at": check}
            )
        record_events(conn, [EventRow(ticket_id, kind, data) for kind, data in events], now)
        return after
