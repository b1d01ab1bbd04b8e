"""The SLA sweep: fire the escalation stages that are due, each exactly once.

Tickets are found by the indexed `next_sla_check_at`, so a sweep costs what is due, not
what exists. Per batch, one transaction writes the ledger rows, the outbox rows, the
ticket changes and the events: a crash loses all of a batch or none. The ledger's unique
key stops a second sweeper (another instance) from firing a stage again; on PostgreSQL
`SKIP LOCKED` keeps two sweepers off the same tickets in the first place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import TemplateError
from sqlalchemy import Connection, bindparam, insert, update

from maild.db.models import Event, Outbox
from maild.db.session import Database
from maild.logs import event
from maild.numbering import Numbering
from maild.pipeline.apply import SYSTEM_ACTOR
from maild.rules import Directory
from maild.sla import clocks as sla_clocks
from maild.sla.clocks import Occurrence
from maild.sla.notify import Notifier, human
from maild.sla.policy import Policy, PolicySet
from maild.sla.track import LEDGER, TICKET, _table, clocks_of, fired_keys, select_tickets
from maild.templating import TemplateMissing

log = logging.getLogger("maild.sla")
OUTBOX = _table(Outbox)
EVENT = _table(Event)
TOP_TIER = 3
_TITLES = {
    "first_response": "first response",
    "next_response": "next response",
    "resolution": "resolution",
}
# A sweep stops after this many full batches even if more is due (the next one goes on).
_MAX_BATCHES = 1000

# A plain INSERT: the unique key makes a stage recorded twice fail the whole batch. The
# ticket locks make that impossible among sweepers (the ledger row's foreign key holds
# a key-share lock on its ticket until commit, which `FOR UPDATE SKIP LOCKED` skips).
_RECORD = insert(LEDGER)
_SET_NEXT = (
    update(TICKET)
    .where(TICKET.c.id == bindparam("ticket_id"))
    .values(next_sla_check_at=bindparam("next_check"))
)


@dataclass
class SweepResult:
    tickets: int = 0
    fired: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    mails: int = 0


@dataclass
class _Ticket:
    """A due ticket's fields as the stages change them."""

    row: Any
    team: str | None
    tier: int | None
    assignee: str | None
    priority: str
    changes: dict[str, Any] = field(default_factory=dict)


class Sweeper:
    def __init__(
        self,
        db: Database,
        policies: Callable[[], PolicySet],
        directory: Callable[[], Directory],
        notifier: Notifier,
        numbering: Numbering,
        batch_size: int = 500,
    ) -> None:
        self._db = db
        self._policies = policies
        self._directory = directory
        self._notifier = notifier
        self._numbering = numbering
        self._batch_size = batch_size

    def sweep(self, now: datetime) -> SweepResult:
        """Fire every stage due at `now`, batch by batch."""
        result = SweepResult()
        self._notifier.forget()
        for _ in range(_MAX_BATCHES):
            # Replayable: a commit lost to a power cut takes its ledger rows with it, so
            # the stages are simply fired again (a crash of maild loses nothing).
            with self._db.transaction(replayable=True) as session:
                taken = self._batch(session.connection(), now, result)
            if taken < self._batch_size:
                break
        if result.fired or result.skipped:
            event(
                log,
                "SLA sweep",
                tickets=result.tickets,
                fired=len(result.fired),
                skipped=result.skipped,
                mails=result.mails,
            )
        return result

    def _batch(self, conn: Connection, now: datetime, result: SweepResult) -> int:
        query = (
            select_tickets()
            .where(TICKET.c.next_sla_check_at <= now)
            .order_by(TICKET.c.next_sla_check_at)
            .limit(self._batch_size)
        )
        if self._db.is_postgres:
            query = query.with_for_update(skip_locked=True, of=TICKET)
        rows = conn.execute(query).all()
        if not rows:
            return 0
        result.tickets += len(rows)
        policies = self._policies()
        directory = self._directory()
        fired = fired_keys(conn, [row.id for row in rows])
        plans: dict[int, tuple[Policy | None, sla_clocks.Plan]] = {}
        ledger: list[dict[str, Any]] = []
        for row in rows:
            policy = policies.policies.get(row.sla_applied) if row.sla_applied else None
            planned = sla_clocks.plan(clocks_of(row), policy, fired[row.id], now)
            plans[row.id] = (policy, planned)
            for outcome, items in (("fired", planned.fire), ("skipped", planned.skip)):
                ledger += [_ledger_row(row.id, o, outcome, now) for o in items]
        if ledger:
            conn.execute(_RECORD, ledger)

        outbox: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        next_checks: list[dict[str, Any]] = []
        for row in rows:
            policy, planned = plans[row.id]
            ticket = _Ticket(row, row.team, row.tier, row.assignee, row.priority)
            for occurrence in planned.fire:
                assert policy is not None
                fired_event = self._fire(ticket, policy, occurrence, directory, now, outbox)
                events.append(_event(row.id, "sla_stage_fired", fired_event, now))
                if fired_event["escalated"]:
                    moved = {**fired_event["escalated"], "stage": occurrence.stage.name}
                    events.append(_event(row.id, "escalated", moved, now))
                result.fired.append({"ticket": row.number, **fired_event})
            result.skipped += len(planned.skip)
            done = fired[row.id] | {o.key for o in (*planned.fire, *planned.skip)}
            if ticket.changes:
                clocks = self._apply(conn, ticket, policy, now, events)
                check = sla_clocks.next_check(clocks, policy, done)
            else:
                check = planned.next_check(done)
            next_checks.append({"ticket_id": row.id, "next_check": check})
        conn.execute(_SET_NEXT, next_checks)
        if outbox:
            conn.execute(insert(OUTBOX), outbox)
            result.mails += len(outbox)
        if events:
            conn.execute(insert(EVENT), events)
        return len(rows)

    def _fire(
        self,
        ticket: _Ticket,
        policy: Policy,
        occurrence: Occurrence,
        directory: Directory,
        now: datetime,
        outbox: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Apply one stage to `ticket` and compose its mails; the event's data."""
        stage = occurrence.stage
        row = ticket.row
        old_team, old_assignee = ticket.team, ticket.assignee
        escalated: dict[str, Any] | None = None
        if stage.escalate:
            escalated = _escalate(ticket, stage.team, directory)
        if stage.priority is not None and stage.priority != ticket.priority:
            ticket.changes["priority"] = ticket.priority = stage.priority
        due = clocks_of(row).due(occurrence.target)
        data: dict[str, Any] = {
            "target": occurrence.target,
            "cycle": occurrence.cycle,
            "stage": stage.name,
            "occurrence": occurrence.occurrence,
            "due_at": occurrence.at.isoformat(),
            "target_due_at": due.isoformat() if due else None,
            "escalated": escalated,
            "priority": stage.priority,
        }
        old = directory.teams.get(old_team) if old_team is not None else None
        lead = old.lead if old is not None else None
        members = [a.address for a in directory.members(ticket.team)] if ticket.team else []
        recipients: dict[tuple[str, str], str] = {}
        for notify in stage.notify:
            roles: dict[str, list[str | None]] = {
                "assignee": [old_assignee],
                "lead": [lead],
                "team": list(members),
            }
            found = roles.get(notify.to, [notify.to])
            for address in found:
                if address:
                    recipients.setdefault((address, notify.template), notify.to)
        sent: list[dict[str, str]] = []
        problems: list[str] = []
        zone = ZoneInfo(policy.calendar.timezone)
        for (address, template), role in recipients.items():
            if not self._notifier.enabled:
                problems.append(f"{address}: not queued, [outbound] enabled is false")
                continue
            context = self._context(ticket, policy, occurrence, due, escalated, zone, now)
            context["recipient"] = {"address": address, "role": role}
            try:
                outbox.append(self._notifier.compose(template, context, address, row.id, now))
            except (TemplateError, TemplateMissing, TypeError, ValueError, ArithmeticError) as exc:
                # An operator's template that cannot render (a filter given None, too)
                # must not hold back every other stage of the batch: the stage fires and
                # its event says which notice is missing and why.
                problems.append(f"{address}: template {template}: {type(exc).__name__}: {exc}")
                continue
            sent.append({"to": address, "role": role, "template": template})
        data["notified"] = sent
        if problems:
            data["problems"] = problems
            event(log, "SLA notice not queued", logging.ERROR, ticket=row.number, problems=problems)
        return data

    def _context(
        self,
        ticket: _Ticket,
        policy: Policy,
        occurrence: Occurrence,
        due: datetime | None,
        escalated: dict[str, Any] | None,
        zone: ZoneInfo,
        now: datetime,
    ) -> dict[str, Any]:
        """The variables of the agent/sla_* and lead/sla_* templates (templates/README.md)."""
        row = ticket.row
        number = str(row.number)
        late = due is not None and now > due
        return {
            "ticket": {
                "number": number,
                "tag": self._numbering.tag(number),
                "subject": row.subject,
                "status": row.status,
                "priority": ticket.priority,
                "type": row.type,
                "queue": row.queue,
                "created_at": format_datetime(row.created_at),
                "team": ticket.team,
                "tier": ticket.tier,
                "assignee": ticket.assignee,
            },
            "requester": {"address": row.requester_address, "name": row.requester_name or ""},
            "sla": {
                "policy": policy.name,
                "target": occurrence.target,
                "target_title": _TITLES[occurrence.target],
                "stage": occurrence.stage.name,
                "occurrence": occurrence.occurrence + 1,
                "due_at": due.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if due else "",
                "late": late,
                "overdue": human(policy.calendar.between(due, now)) if due and late else "",
                "remaining": human(policy.calendar.between(now, due)) if due and not late else "",
                "escalated": escalated,
            },
            "support_address": self._notifier.sender,
        }

    def _apply(
        self,
        conn: Connection,
        ticket: _Ticket,
        policy: Policy | None,
        now: datetime,
        events: list[dict[str, Any]],
    ) -> sla_clocks.Clocks:
        """Write the stages' ticket changes; a new priority moves the due times."""
        row = ticket.row
        clocks = clocks_of(row)
        if "priority" in ticket.changes and policy is not None:
            clocks, moved = sla_clocks.update(
                clocks, policy, policy, status=row.status, priority=ticket.priority, now=now
            )
            events += [_event(row.id, kind, data, now) for kind, data in moved]
            events.append(
                _event(
                    row.id,
                    "priority_changed",
                    {"from": row.priority, "to": ticket.priority, "why": "SLA escalation"},
                    now,
                )
            )
        conn.execute(
            update(TICKET)
            .where(TICKET.c.id == row.id)
            .values(**ticket.changes, **clocks.columns(), updated_at=now)
        )
        return clocks


def _escalate(ticket: _Ticket, team: str | None, directory: Directory) -> dict[str, Any]:
    """Tier + 1 and the ticket to `team` (else the first team of that tier), unassigned."""
    current = ticket.tier
    if current is None and ticket.team is not None and ticket.team in directory.teams:
        current = directory.teams[ticket.team].tier
    current = current or 1
    if current >= TOP_TIER and team is None:
        return {"from_tier": current, "to_tier": current, "note": "already at the top tier"}
    tier = min(current + 1, TOP_TIER)
    target = team or next((t.name for t in directory.teams.values() if t.tier == tier), None)
    moved: dict[str, Any] = {"from_tier": current, "to_tier": tier, "from_team": ticket.team}
    ticket.changes["tier"] = ticket.tier = tier
    if target is None:
        moved["note"] = f"no team of tier {tier} in teams.yaml; the team stays"
        return moved
    if team is not None and team in directory.teams:
        ticket.changes["tier"] = ticket.tier = directory.teams[team].tier
        moved["to_tier"] = ticket.tier
    moved["to_team"] = target
    ticket.changes["team"] = ticket.team = target
    ticket.changes["assignee"] = ticket.assignee = None
    ticket.changes["assigned_at"] = None
    return moved


def _ledger_row(ticket_id: int, o: Occurrence, outcome: str, now: datetime) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "target": o.target,
        "cycle": o.cycle,
        "stage": o.stage.name,
        "occurrence": o.occurrence,
        "outcome": outcome,
        "due_at": o.at,
        "fired_at": now,
        "data": {},
    }


def _event(ticket_id: int, kind: str, data: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "at": now, "kind": kind, "actor": SYSTEM_ACTOR, "data": data}
