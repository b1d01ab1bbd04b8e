"""A validated rule set, compiled for evaluation, and the evaluation itself.

Per mail and per phase, the cost is: one dict lookup per value of each field some rule
compares for equality, one literal scan per text field some rule searches, then only
the rules that one of those raised (plus the few whose conditions cannot be indexed),
in order. Evaluation is pure: no database, no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from maild.rules.compiler import CompiledRule
from maild.rules.decision import (
    PHASES,
    Draft,
    FiredRule,
    MatchedCondition,
    Phase,
    RouteDecision,
)
from maild.rules.facts import MailFacts, OpeningHours, SenderKind
from maild.rules.literals import LiteralScanner
from maild.rules.nodes import ConditionTrace, Evaluation, Mode, matched_conditions
from maild.rules.teams import Directory
from maild.types import Envelope, MailClass, ParsedMail

RuleStatus = Literal["fired", "not matched", "not reached", "skipped"]


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule on one mail, for `maild rules test`.

    status: fired; not matched; not reached (an earlier rule stopped; the condition is
    still shown); skipped (the rule does not run in this phase).
    """

    name: str
    file: str
    line: int
    on: tuple[Phase, ...]
    status: RuleStatus
    condition: ConditionTrace | None
    actions: tuple[str, ...]
    stop: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    phase: Phase
    rules: tuple[RuleTrace, ...]
    decision: RouteDecision


class _Plan:
    """The rules of one phase with their lookup tables."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)
        equal: dict[str, dict[str, set[int]]] = {}
        needles: dict[str, dict[str, set[int]]] = {}
        triggered: dict[int, list[int]] = {}
        always: list[int] = []
        seen: set[int] = set()
        for position, rule in enumerate(self.rules):
            trigger = rule.when.trigger() if rule.when is not None else None
            if trigger is None:
                always.append(position)
            else:
                for atom_id in trigger.atoms:
                    triggered.setdefault(atom_id, []).append(position)
            for atom in rule.when.atoms() if rule.when is not None else ():
                if atom.id in seen:
                    continue
                seen.add(atom.id)
                if atom.mode is Mode.INDEXED:
                    table = equal.setdefault(atom.field, {})
                    for value in atom.index_values():
                        table.setdefault(value, set()).add(atom.id)
                elif atom.mode in (Mode.SCANNED, Mode.FILTERED):
                    table = needles.setdefault(atom.field, {})
                    for needle in atom.needles():
                        table.setdefault(needle, set()).add(atom.id)
        self.equal = tuple(
            (field, {value: tuple(ids) for value, ids in table.items()})
            for field, table in equal.items()
        )
        self.scanners = tuple((field, LiteralScanner(table)) for field, table in needles.items())
        self.triggered = {atom_id: tuple(rules_) for atom_id, rules_ in triggered.items()}
        self.always = frozenset(always)

    def raised(self, facts: MailFacts) -> set[int]:
        """The atoms the lookups and scans raise for this mail."""
        raised: set[int] = set()
        for field, table in self.equal:
            for value in facts.folded(field):
                hit = table.get(value)
                if hit is not None:
                    raised.update(hit)
        for field, scanner in self.scanners:
            for value in facts.folded(field):
                scanner.scan(value, raised)
        return raised

    def candidates(self, raised: set[int]) -> list[int]:
        """Positions of the rules that may hold, in order."""
        found = set(self.always)
        triggered = self.triggered
        for atom_id in raised:
            rules = triggered.get(atom_id)
            if rules is not None:
                found.update(rules)
        return sorted(found)


class RuleSet:
    """Teams, agents and compiled rules, validated as a whole; immutable once built."""

    def __init__(
        self, rules: Sequence[CompiledRule], directory: Directory, files: Sequence[str]
    ) -> None:
        self.rules = tuple(rules)
        self.directory = directory
        self.files = tuple(files)
        self._plans = {phase: _Plan([r for r in self.rules if phase in r.on]) for phase in PHASES}
        self._fields = frozenset(
            atom.field for rule in self.rules if rule.when is not None for atom in rule.when.atoms()
        )

    def asks(self, field: str) -> bool:
        """Whether any rule looks at `field`: some facts cost a lookup (is the sender a
        known customer?) that is only worth making for rules that ask."""
        return field in self._fields

    def sender_is(self, address: str | None, *, known_customer: bool) -> SenderKind:
        if address and self.directory.is_agent(address):
            return "agent"
        return "customer" if known_customer else "unknown"

    def facts(
        self,
        mail: ParsedMail,
        envelope: Envelope,
        *,
        mail_class: MailClass,
        is_reply: bool,
        came_in_on: str | None = None,
        known_customer: bool = False,
        received_at: datetime | None = None,
        calendars: Mapping[str, OpeningHours] | None = None,
    ) -> MailFacts:
        """What the rules see of `mail`. `is_reply`: a follow-up on an existing ticket;
        `known_customer`: the sender is a contact we know (the caller looks that up);
        `received_at` and `calendars` (rules/sla.yaml's): for `business_hours`."""
        sender = mail.from_.address if mail.from_ else None
        return MailFacts(
            mail,
            envelope,
            mail_class=mail_class,
            is_reply=is_reply,
            sender_is=self.sender_is(sender, known_customer=known_customer),
            came_in_on=came_in_on,
            received_at=received_at,
            calendars=calendars,
        )

    def route(
        self,
        mail: ParsedMail,
        envelope: Envelope,
        *,
        mail_class: MailClass,
        is_reply: bool,
        came_in_on: str | None = None,
        known_customer: bool = False,
        received_at: datetime | None = None,
        calendars: Mapping[str, OpeningHours] | None = None,
    ) -> RouteDecision:
        """The routing decision for one mail. Pure: never touches the database."""
        facts = self.facts(
            mail,
            envelope,
            mail_class=mail_class,
            is_reply=is_reply,
            came_in_on=came_in_on,
            known_customer=known_customer,
            received_at=received_at,
            calendars=calendars,
        )
        return self.decide(facts)

    def decide(self, facts: MailFacts) -> RouteDecision:
        """Apply every matching rule of the mail's phase in order, until one with stop."""
        plan = self._plans["reply" if facts.is_reply else "new"]
        raised = plan.raised(facts)
        evaluation = Evaluation(facts, raised)
        draft = Draft()
        fired: list[FiredRule] = []
        for position in plan.candidates(raised):
            rule = plan.rules[position]
            if rule.when is not None and not rule.when.holds(evaluation):
                continue
            for action in rule.actions:
                action.apply(draft)
            fired.append(_fired(rule, rule.when.trace(facts) if rule.when else None))
            if rule.stop:
                break
        return self._freeze(draft, fired)

    def considered(self, facts: MailFacts) -> tuple[str, ...]:
        """Names of the rules the lookups and scans leave to evaluate for this mail, in
        order (for diagnostics and benchmarks: the rest cannot match)."""
        plan = self._plans["reply" if facts.is_reply else "new"]
        return tuple(plan.rules[i].name for i in plan.candidates(plan.raised(facts)))

    def explain(self, facts: MailFacts) -> Explanation:
        """Every rule with every condition evaluated; the same decision as `decide`."""
        phase: Phase = "reply" if facts.is_reply else "new"
        draft = Draft()
        fired: list[FiredRule] = []
        traces: list[RuleTrace] = []
        stopped = False
        for rule in self.rules:
            trace = rule.when.trace(facts) if rule.when is not None else None
            matched = trace is None or trace.matched
            status: RuleStatus
            if phase not in rule.on:
                status = "skipped"
            elif stopped:
                status = "not reached"
            elif not matched:
                status = "not matched"
            else:
                status = "fired"
                for action in rule.actions:
                    action.apply(draft)
                fired.append(_fired(rule, trace))
                stopped = rule.stop
            traces.append(
                RuleTrace(
                    name=rule.name,
                    file=rule.file,
                    line=rule.line,
                    on=tuple(p for p in PHASES if p in rule.on),
                    status=status,
                    condition=trace,
                    actions=rule.described,
                    stop=rule.stop,
                )
            )
        return Explanation(phase, tuple(traces), self._freeze(draft, fired))

    def _freeze(self, draft: Draft, fired: list[FiredRule]) -> RouteDecision:
        team = self.directory.teams.get(draft.team) if draft.team is not None else None
        return draft.freeze(tuple(fired), team.tier if team is not None else None)


def _fired(rule: CompiledRule, trace: ConditionTrace | None) -> FiredRule:
    matched: tuple[MatchedCondition, ...] = ()
    if rule.when is not None and trace is not None:
        matched = tuple(
            MatchedCondition(condition, seen)
            for condition, seen in matched_conditions(rule.when, trace)
        )
    return FiredRule(
        name=rule.name,
        file=rule.file,
        line=rule.line,
        matched=matched,
        actions=rule.described,
        stop=rule.stop,
    )
