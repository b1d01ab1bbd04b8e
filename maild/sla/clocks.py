"""The SLA clocks of one ticket: how they start, stop, pause, re-arm and move. Pure.

A target is running while its due time is set; meeting it (or resolving the ticket)
clears it. Which stages of the escalation ladder are due is a function of the due times,
the policy and what the ledger says has fired.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from maild.sla.policy import Policy, Stage
from maild.sla.schema import TARGETS, TargetName
from maild.types import TicketStatus

_DONE = (TicketStatus.RESOLVED.value, TicketStatus.CLOSED.value)
StageKey = tuple[str, int, str, int]  # target, cycle, stage, occurrence
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Clocks:
    """The SLA columns of a ticket (db/models.py: Ticket)."""

    applied: str | None = None
    priority: str | None = None
    first_response_due_at: datetime | None = None
    next_response_due_at: datetime | None = None
    resolution_due_at: datetime | None = None
    paused_at: datetime | None = None
    response_cycle: int = 0
    resolution_cycle: int = 0

    def due(self, target: TargetName) -> datetime | None:
        value: datetime | None = getattr(self, f"{target}_due_at")
        return value

    def cycle(self, target: TargetName) -> int:
        if target == "next_response":
            return self.response_cycle
        if target == "resolution":
            return self.resolution_cycle
        return 0

    def with_due(self, target: TargetName, due: datetime | None) -> Clocks:
        if target == "first_response":
            return replace(self, first_response_due_at=due)
        if target == "next_response":
            return replace(self, next_response_due_at=due)
        return replace(self, resolution_due_at=due)

    def running(self) -> Iterable[tuple[TargetName, datetime]]:
        for target in TARGETS:
            due = self.due(target)
            if due is not None:
                yield target, due

    def columns(self) -> dict[str, Any]:
        """As ticket column values."""
        return {
            "sla_applied": self.applied,
            "sla_priority": self.priority,
            "first_response_due_at": self.first_response_due_at,
            "next_response_due_at": self.next_response_due_at,
            "resolution_due_at": self.resolution_due_at,
            "sla_paused_at": self.paused_at,
            "sla_response_cycle": self.response_cycle,
            "sla_resolution_cycle": self.resolution_cycle,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def update(
    clocks: Clocks,
    policy: Policy | None,
    previous: Policy | None,
    *,
    status: str,
    priority: str,
    now: datetime,
    customer_replied: bool = False,
    agent_replied: bool = False,
) -> tuple[Clocks, list[Event]]:
    """The clocks after something happened to the ticket, and events saying what changed.

    `policy` is the one that applies now, `previous` the one the clocks were computed
    for (None if it is gone). `customer_replied`: a customer mail joined an existing
    ticket; `agent_replied`: an agent's reply went to the customer (not a note).
    """
    events: list[Event] = []
    if policy is None:
        if clocks.applied is None:
            return clocks, events
        events.append(("sla_removed", {"policy": clocks.applied}))
        return Clocks(
            response_cycle=clocks.response_cycle, resolution_cycle=clocks.resolution_cycle
        ), events
    calendar = policy.calendar

    if clocks.applied is None:
        clocks = replace(clocks, applied=policy.name, priority=priority, paused_at=None)
        started: tuple[TargetName, ...] = ("first_response", "resolution")
        for target in started:
            total = policy.target(target, priority)
            clocks = clocks.with_due(target, calendar.add(now, total) if total else None)
        events.append(("sla_started", {"policy": policy.name, **_dues(clocks)}))
    elif clocks.applied != policy.name or clocks.priority != priority:
        reference = clocks.paused_at or now
        for target, due in list(clocks.running()):
            total = policy.target(target, priority)
            old = previous.target(target, clocks.priority or priority) if previous else None
            if total is None:
                clocks = clocks.with_due(target, None)
            elif old is None:
                clocks = clocks.with_due(target, calendar.add(reference, total))
            else:
                old_calendar = previous.calendar if previous else calendar
                elapsed = old - old_calendar.between(reference, due)
                clocks = clocks.with_due(target, calendar.add(reference, total - elapsed))
        events.append(
            (
                "sla_retargeted",
                {
                    "from": {"policy": clocks.applied, "priority": clocks.priority},
                    "to": {"policy": policy.name, "priority": priority},
                },
            )
        )
        clocks = replace(clocks, applied=policy.name, priority=priority)
        events[-1][1].update(_dues(clocks))

    if agent_replied:
        answered: tuple[TargetName, ...] = ("first_response", "next_response")
        for target in answered:
            clocks, met = _stop(clocks, target, now)
            events += met

    if customer_replied:
        total = policy.target("next_response", priority)
        if clocks.first_response_due_at is None and clocks.next_response_due_at is None and total:
            clocks = replace(clocks, response_cycle=clocks.response_cycle + 1)
            clocks = clocks.with_due("next_response", _start(policy, now, total, clocks))
            events.append(("sla_rearmed", {"target": "next_response", **_dues(clocks)}))
        total = policy.target("resolution", priority)
        if clocks.resolution_due_at is None and status not in _DONE and total:
            clocks = replace(clocks, resolution_cycle=clocks.resolution_cycle + 1)
            clocks = clocks.with_due("resolution", _start(policy, now, total, clocks))
            events.append(("sla_rearmed", {"target": "resolution", **_dues(clocks)}))

    if status in _DONE:
        for target in TARGETS:
            clocks, met = _stop(clocks, target, now)
            events += met
        return replace(clocks, paused_at=None), events

    paused = status in policy.pause_on
    if paused and clocks.paused_at is None:
        clocks = replace(clocks, paused_at=now)
        events.append(("sla_paused", {"status": status}))
    elif not paused and clocks.paused_at is not None:
        held = calendar.between(clocks.paused_at, now)
        for target, due in list(clocks.running()):
            clocks = clocks.with_due(target, calendar.add(due, held))
        clocks = replace(clocks, paused_at=None)
        events.append(
            ("sla_resumed", {"held_minutes": held / timedelta(minutes=1), **_dues(clocks)})
        )
    return clocks, events


def _start(policy: Policy, now: datetime, total: timedelta, clocks: Clocks) -> datetime:
    # A target armed while the clock is paused starts counting when it resumes.
    return policy.calendar.add(clocks.paused_at or now, total)


def _stop(clocks: Clocks, target: TargetName, now: datetime) -> tuple[Clocks, list[Event]]:
    due = clocks.due(target)
    if due is None:
        return clocks, []
    met = {"target": target, "cycle": clocks.cycle(target), "due_at": due.isoformat()}
    return clocks.with_due(target, None), [("sla_met" if now <= due else "sla_met_late", met)]


def _dues(clocks: Clocks) -> dict[str, Any]:
    return {f"{t}_due_at": _iso(clocks.due(t)) for t in TARGETS}


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of a stage for one target cycle, and when it is due."""

    target: TargetName
    cycle: int
    stage: Stage
    occurrence: int
    at: datetime

    @property
    def key(self) -> StageKey:
        return (self.target, self.cycle, self.stage.name, self.occurrence)


def occurrences(clocks: Clocks, policy: Policy) -> list[Occurrence]:
    """Every stage occurrence of the running targets; none while the clock is paused."""
    return [
        Occurrence(target, cycle, stage, k, stage.when(due, total, policy.calendar, k))
        for target, cycle, due, total, stage in _staged(clocks, policy)
        for k in range(stage.times)
    ]


def _staged(
    clocks: Clocks, policy: Policy
) -> Iterator[tuple[TargetName, int, datetime, timedelta, Stage]]:
    """Each running target with each stage that watches it; none while paused."""
    if clocks.paused_at is not None:
        return
    for target, due in clocks.running():
        total = policy.target(target, clocks.priority or "normal")
        if total is None:
            continue
        cycle = clocks.cycle(target)
        for stage in policy.stages:
            if target in stage.targets:
                yield target, cycle, due, total, stage


@dataclass(frozen=True, slots=True)
class Plan:
    fire: tuple[Occurrence, ...]
    skip: tuple[Occurrence, ...]
    # Not fired before this plan (for the next check once `fire` and `skip` are done).
    pending: tuple[Occurrence, ...]

    def next_check(self, done: set[StageKey]) -> datetime | None:
        return min((o.at for o in self.pending if o.key not in done), default=None)


def plan(clocks: Clocks, policy: Policy | None, fired: set[StageKey], now: datetime) -> Plan:
    """Which stage occurrences fire at `now`, and which are passed over (catch_up:
    most_severe, several missed for one target)."""
    if policy is None:
        return Plan((), (), ())
    pending = [o for o in occurrences(clocks, policy) if o.key not in fired]
    due = sorted((o for o in pending if o.at <= now), key=lambda o: (o.at, o.stage.severity))
    fire: list[Occurrence] = []
    skip: list[Occurrence] = []
    if policy.catch_up == "all":
        fire = due
    else:
        for target in TARGETS:
            missed = [o for o in due if o.target == target]
            if missed:
                worst = max(missed, key=lambda o: (o.stage.severity, o.at, o.occurrence))
                fire.append(worst)
                skip += [o for o in missed if o is not worst]
    fire.sort(key=lambda o: (o.at, o.stage.severity))
    return Plan(tuple(fire), tuple(skip), tuple(pending))


def next_check(clocks: Clocks, policy: Policy | None, fired: set[StageKey]) -> datetime | None:
    """The earliest occurrence not in the ledger yet, due or not."""
    if policy is None:
        return None
    earliest: datetime | None = None
    for target, cycle, due, total, stage in _staged(clocks, policy):
        # A stage's occurrences come one after the other, so the first one not fired
        # is the earliest of those left: the rest need no calendar arithmetic (this
        # runs for every mail).
        left = (k for k in range(stage.times) if (target, cycle, stage.name, k) not in fired)
        k = next(left, None)
        if k is not None:
            at = stage.when(due, total, policy.calendar, k)
            earliest = at if earliest is None else min(earliest, at)
    return earliest
