"""SLA policies from `rules/sla.yaml`: validated whole, compiled once, reloaded when changed.

Errors name `file:line:column`, as for the routing rules; a running maild keeps the last
good set when an edit breaks the file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfoNotFoundError

from maild.logs import event
from maild.rules.errors import RuleError, RuleIssue
from maild.rules.loader import SLA_FILE
from maild.rules.schema import _ADDRESS, suggest, validate
from maild.rules.teams import TEAMS_FILE, build_directory
from maild.rules.yamldoc import Document, load_yaml
from maild.sla.calendar import Calendar, NoBusinessHours, Span, public_holidays
from maild.sla.schema import (
    TARGETS,
    CalendarEntry,
    MatchEntry,
    PolicyEntry,
    SlaFile,
    StageEntry,
    TargetName,
    day_names,
)

RECIPIENT_ROLES = ("assignee", "lead", "team")
log = logging.getLogger("maild.sla")


@dataclass(frozen=True, slots=True)
class Notify:
    to: str  # a role of RECIPIENT_ROLES, or a mail address
    template: str


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    targets: tuple[TargetName, ...]
    at: float | None
    after: timedelta | None
    every: timedelta | None
    times: int
    notify: tuple[Notify, ...]
    escalate: bool
    team: str | None
    priority: str | None
    severity: int

    def when(
        self, due: datetime, total: timedelta, calendar: Calendar, occurrence: int
    ) -> datetime:
        """When occurrence `occurrence` (0-based) of this stage is due, for a target due
        at `due` that allows `total`."""
        if self.at is not None:
            base = calendar.subtract(due, total * (1 - self.at))
        else:
            base = calendar.add(due, self.after or timedelta(0))
        if occurrence and self.every is not None:
            base = calendar.add(base, self.every * occurrence)
        return base


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """What matching a policy looks at."""

    queue: str | None
    priority: str
    type: str | None
    customer_domain: str


@dataclass(frozen=True)
class Policy:
    name: str
    calendar: Calendar
    match: MatchEntry | None
    pause_on: frozenset[str]
    catch_up: str
    targets: Mapping[TargetName, Mapping[str, timedelta]]
    stages: tuple[Stage, ...]

    def target(self, name: TargetName, priority: str) -> timedelta | None:
        return self.targets.get(name, {}).get(priority)

    def matches(self, facts: TicketFacts) -> bool:
        m = self.match
        if m is None:
            return False
        return (
            (not m.queue or facts.queue in m.queue)
            and (not m.priority or facts.priority in m.priority)
            and (not m.type or facts.type in m.type)
            and (not m.customer_domain or facts.customer_domain in m.customer_domain)
        )


@dataclass(frozen=True)
class PolicySet:
    policies: Mapping[str, Policy]
    files: tuple[str, ...] = ()
    # Also for routing rules' `business_hours` conditions.
    calendars: Mapping[str, Calendar] = field(default_factory=dict)

    def choose(self, named: str | None, facts: TicketFacts) -> Policy | None:
        """The policy a routing rule named, else the first whose `match` holds."""
        if named is not None and named in self.policies:
            return self.policies[named]
        return next((p for p in self.policies.values() if p.matches(facts)), None)


EMPTY = PolicySet({})


def load_policies(directory: str | Path) -> PolicySet:
    """Read `sla.yaml` of a rules directory (no file: no policies). Raises RuleError
    with every problem found."""
    root = Path(directory)
    path = root / SLA_FILE
    if not path.is_file():
        return EMPTY
    issues: list[RuleIssue] = []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError([RuleIssue(str(path), 1, 1, f"cannot read: {exc}")]) from None
    doc, found = load_yaml(text, str(path))
    issues += found
    teams = _team_names(root)
    policies: dict[str, Policy] = {}
    calendars: dict[str, Calendar] = {}
    if doc is not None:
        parsed = validate(SlaFile, doc.data if doc.data is not None else {}, doc, (), issues)
        if parsed is not None:
            for name, raw in parsed.calendars.items():
                entry = validate(CalendarEntry, raw, doc, ("calendars", name), issues)
                if entry is not None and (cal := _calendar(name, entry, doc, issues)):
                    calendars[name] = cal
            for name, raw in parsed.policies.items():
                spec = validate(PolicyEntry, raw, doc, ("policies", name), issues)
                if spec is None:
                    continue
                policy = _policy(name, spec, calendars, set(parsed.calendars), teams, doc, issues)
                if policy is not None:
                    policies[name] = policy
    if issues:
        raise RuleError(sorted(issues, key=lambda i: (i.line, i.column)))
    return PolicySet(policies, (str(path),), calendars)


def _team_names(root: Path) -> frozenset[str] | None:
    """Team names from teams.yaml, for checking `team:`; None when it cannot be read
    (the routing rules report that file's problems)."""
    path = root / TEAMS_FILE
    if not path.is_file():
        return frozenset()
    try:
        doc, _ = load_yaml(path.read_text("utf-8"), str(path))
    except (OSError, UnicodeDecodeError):
        return None
    if doc is None:
        return None
    _, names = build_directory(doc, [])
    return names.teams


def _calendar(
    name: str, entry: CalendarEntry, doc: Document, issues: list[RuleIssue]
) -> Calendar | None:
    at = ("calendars", name)
    before = len(issues)
    weekly: list[list[Span]] = [[] for _ in range(7)]
    for key, spans in entry.hours.items():
        days = day_names(key)
        if days is None:
            issues.append(
                doc.issue(
                    (*at, "hours", key), f"'{key}' is not a day or range like mon-fri", key=True
                )
            )
            continue
        for day in days:
            weekly[day] += spans
    holiday = None
    if entry.holidays is not None:
        try:
            holiday = public_holidays(entry.holidays.country, entry.holidays.region)
        except ValueError as exc:
            issues.append(doc.issue((*at, "holidays"), str(exc)))
    if len(issues) > before:
        return None
    try:
        return Calendar(
            entry.timezone,
            weekly,
            is_holiday=holiday or (lambda _: False),
            closed=frozenset(entry.closed),
            opened={day: list(spans) for day, spans in entry.open.items()},
        )
    except (ZoneInfoNotFoundError, ValueError) as exc:
        where = (*at, "timezone") if isinstance(exc, ZoneInfoNotFoundError) else (*at, "hours")
        reason = (
            f"unknown time zone '{entry.timezone}'"
            if isinstance(exc, ZoneInfoNotFoundError)
            else str(exc)
        )
        if isinstance(exc, NoBusinessHours):
            reason = "no opening hours: a business-time target could never be met"
        issues.append(doc.issue(where, reason))
        return None


def _policy(
    name: str,
    entry: PolicyEntry,
    calendars: Mapping[str, Calendar],
    written: set[str],
    teams: frozenset[str] | None,
    doc: Document,
    issues: list[RuleIssue],
) -> Policy | None:
    at = ("policies", name)
    before = len(issues)
    calendar: Calendar | None = None
    if entry.calendar is not None and entry.calendar not in calendars:
        if entry.calendar not in written:  # a broken calendar is reported where it is
            issues.append(
                doc.issue(
                    (*at, "calendar"),
                    f"unknown calendar '{entry.calendar}'{suggest(entry.calendar, written)}",
                )
            )
    elif entry.calendar is not None:
        calendar = calendars[entry.calendar]
    if entry.time == "business" and entry.calendar is None:
        issues.append(doc.issue(at, "business time needs a `calendar` (or say `time: calendar`)"))
    targets = {t: dict(getattr(entry.targets, t)) for t in TARGETS if getattr(entry.targets, t)}
    if not targets:
        issues.append(
            doc.issue(
                (*at, "targets"), "no targets: give first_response, next_response or resolution"
            )
        )
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, stage in enumerate(entry.escalation):
        compiled = _stage(stage, i, targets, teams, doc, (*at, "escalation", i), issues)
        if stage.name in seen:
            issues.append(
                doc.issue((*at, "escalation", i, "name"), f"stage '{stage.name}' is given twice")
            )
        seen.add(stage.name)
        if compiled is not None:
            stages.append(compiled)
    if len(issues) > before:
        return None
    if entry.time == "calendar":
        calendar = Calendar.around_the_clock(calendar.timezone if calendar else "UTC")
    assert calendar is not None
    return Policy(
        name=name,
        calendar=calendar,
        match=entry.match,
        pause_on=frozenset(entry.pause_on),
        catch_up=entry.catch_up,
        targets=targets,
        stages=tuple(stages),
    )


def _stage(
    stage: StageEntry,
    index: int,
    targets: Mapping[TargetName, object],
    teams: frozenset[str] | None,
    doc: Document,
    at: tuple[str | int, ...],
    issues: list[RuleIssue],
) -> Stage | None:
    before = len(issues)
    if (stage.at is None) == (stage.after is None):
        issues.append(doc.issue(at, "a stage needs exactly one of `at` (a fraction) or `after`"))
    if stage.times > 1 and stage.every is None:
        issues.append(doc.issue((*at, "times"), "`times` above 1 needs `every`"))
    for target in stage.target:
        if target not in targets:
            issues.append(doc.issue((*at, "target"), f"the policy has no {target} target"))
    for j, notify in enumerate(stage.notify):
        if notify.to not in RECIPIENT_ROLES and not _ADDRESS.fullmatch(notify.to):
            issues.append(
                doc.issue(
                    (*at, "notify", j, "to"),
                    f"'{notify.to}' is neither a mail address nor one of: "
                    + ", ".join(RECIPIENT_ROLES),
                )
            )
    if stage.team is not None:
        if not stage.escalate:
            issues.append(
                doc.issue((*at, "team"), "`team` says where to escalate: add `escalate: true`")
            )
        elif teams is not None and stage.team not in teams:
            issues.append(
                doc.issue((*at, "team"), f"unknown team '{stage.team}'{suggest(stage.team, teams)}")
            )
    if len(issues) > before:
        return None
    return Stage(
        name=stage.name,
        targets=tuple(stage.target),
        at=stage.at,
        after=stage.after,
        every=stage.every,
        times=stage.times,
        notify=tuple(Notify(n.to.lower(), n.template) for n in stage.notify),
        escalate=stage.escalate,
        team=stage.team,
        priority=stage.priority,
        severity=stage.severity if stage.severity is not None else index,
    )


def _watched(directory: Path) -> tuple[str, ...]:
    return tuple(str(directory / name) for name in (SLA_FILE, TEAMS_FILE))


class SlaHolder:
    """The policies in force. Re-reads the directory when `sla.yaml` or `teams.yaml`
    changed (a stat per look, so every worker process follows edits by itself); a
    broken edit keeps the last good set, logged with file:line once per change."""

    def __init__(self, directory: str | Path, policies: PolicySet) -> None:
        self.directory = Path(directory)
        # As strings, made once: joining Paths on each look cost more than the stat.
        self._files = _watched(self.directory)
        self._current = policies
        self._seen: tuple[tuple[int, int] | None, ...] | None = self._signature()
        self._lock = threading.Lock()
        self.failed_reloads = 0
        self.last_issues: tuple[RuleIssue, ...] = ()

    @classmethod
    def load(cls, directory: str | Path) -> SlaHolder:
        """The first set. Raises RuleError: without good policies there is nothing to keep."""
        signature_before = cls._stat(_watched(Path(directory)))
        holder = cls(directory, load_policies(directory))
        holder._seen = signature_before
        return holder

    @classmethod
    def open(cls, directory: str | Path) -> SlaHolder:
        """Like `load`, but broken policies give a holder with none in force (logged, in
        `last_issues`) that picks the file up once it is fixed: a worker must file mail
        even then. `raise_if_broken` is the strict check for commands."""
        root = Path(directory)
        if not root.exists():
            return cls(root, EMPTY)
        holder = cls(root, EMPTY)
        holder._seen = None
        holder.reload()
        return holder

    def raise_if_broken(self) -> None:
        if self.last_issues:
            raise RuleError(self.last_issues)

    @staticmethod
    def _stat(files: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
        found: list[tuple[int, int] | None] = []
        for name in files:
            try:
                info = os.stat(name)
                found.append((info.st_mtime_ns, info.st_size))
            except OSError:
                found.append(None)
        return tuple(found)

    def _signature(self) -> tuple[tuple[int, int] | None, ...] | None:
        return self._stat(self._files)

    @property
    def current(self) -> PolicySet:
        if self._signature() != self._seen:
            self.reload()
        return self._current

    def reload(self) -> bool:
        with self._lock:
            self._seen = self._signature()
            try:
                policies = load_policies(self.directory)
            except RuleError as exc:
                self.failed_reloads += 1
                self.last_issues = exc.issues
                event(
                    log,
                    "SLA policies reload failed; the last good policies stay in force",
                    logging.ERROR,
                    directory=str(self.directory),
                    errors=[str(issue) for issue in exc.issues],
                )
                return False
            self._current = policies
            self.last_issues = ()
            event(log, "SLA policies reloaded", policies=len(policies.policies))
            return True
