"""What routing decided for one mail: frozen, built by the engine, applied by the caller."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from maild.types import TicketStatus

Phase = Literal["new", "reply"]
PHASES: tuple[Phase, ...] = ("new", "reply")
Priority = Literal["low", "normal", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high", "urgent")
TicketType = Literal["service_request", "incident", "problem", "question"]
TICKET_TYPES: tuple[TicketType, ...] = ("service_request", "incident", "problem", "question")
AssignMethod = Literal["round_robin", "least_loaded"]
ASSIGN_METHODS: tuple[AssignMethod, ...] = ("round_robin", "least_loaded")


@dataclass(frozen=True, slots=True)
class AssignRequest:
    """Assign to `agent`, or to a member of `team` chosen `by` a method (see assign.py)."""

    agent: str | None = None
    team: str | None = None
    by: AssignMethod = "round_robin"
    skill: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    agents: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    template: str | None = None


@dataclass(frozen=True, slots=True)
class AutoReply:
    """The rules' choice of automatic reply: a template, or None for no reply at all;
    optionally its language, when the customer's mail states none."""

    template: str | None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Disposition:
    """The mail makes no ticket: `quarantine` it, or `drop` it (kept in the spool, ignored)."""

    action: Literal["quarantine", "drop"]
    reason: str


@dataclass(frozen=True, slots=True)
class MatchedCondition:
    condition: str
    seen: str


@dataclass(frozen=True, slots=True)
class FiredRule:
    """A rule that applied, where it is written, and the conditions that made it apply."""

    name: str
    file: str
    line: int
    matched: tuple[MatchedCondition, ...]
    actions: tuple[str, ...]
    stop: bool


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The ticket fields the rules set (None: not set, keep the default), tags to add and to
    remove, an assignment request, notifications, the auto-reply choice, a quarantine or
    drop, and every rule that fired, in order.

    `tier` is the last `tier` action's value, else the tier of the decided team.
    """

    queue: str | None = None
    team: str | None = None
    tier: int | None = None
    priority: Priority | None = None
    ticket_type: TicketType | None = None
    status: TicketStatus | None = None
    sla: str | None = None
    tags: tuple[str, ...] = ()
    tags_removed: tuple[str, ...] = ()
    assign: AssignRequest | None = None
    notify: tuple[Notify, ...] = ()
    auto_reply: AutoReply | None = None
    disposition: Disposition | None = None
    fired: tuple[FiredRule, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready data (for events, logs and `maild rules test --json`)."""
        data = asdict(self)
        data["type"] = data.pop("ticket_type")
        if self.status is not None:
            data["status"] = self.status.value
        return data


class Draft:
    """The decision while rules apply: mutable, private to one evaluation."""

    def __init__(self) -> None:
        self.queue: str | None = None
        self.team: str | None = None
        self.tier: int | None = None
        self.priority: Priority | None = None
        self.ticket_type: TicketType | None = None
        self.status: TicketStatus | None = None
        self.sla: str | None = None
        # Insertion-ordered sets: a tag removed after being added is no longer added.
        self.tags: dict[str, None] = {}
        self.tags_removed: dict[str, None] = {}
        self.assign: AssignRequest | None = None
        self.notify: list[Notify] = []
        self.auto_reply: AutoReply | None = None
        self.disposition: Disposition | None = None

    def add_tag(self, tag: str) -> None:
        self.tags_removed.pop(tag, None)
        self.tags[tag] = None

    def remove_tag(self, tag: str) -> None:
        self.tags.pop(tag, None)
        self.tags_removed[tag] = None

    def freeze(self, fired: tuple[FiredRule, ...], team_tier: int | None) -> RouteDecision:
        return RouteDecision(
            queue=self.queue,
            team=self.team,
            tier=self.tier if self.tier is not None else team_tier,
            priority=self.priority,
            ticket_type=self.ticket_type,
            status=self.status,
            sla=self.sla,
            tags=tuple(self.tags),
            tags_removed=tuple(self.tags_removed),
            assign=self.assign,
            notify=tuple(self.notify),
            auto_reply=self.auto_reply,
            disposition=self.disposition,
            fired=fired,
        )
