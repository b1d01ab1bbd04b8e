"""Pydantic models of `rules/sla.yaml`; positions come from the rules' YAML document."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from maild.rules.decision import Priority
from maild.rules.schema import Text, Texts
from maild.sla.calendar import DAY_MINUTES, Span

TargetName = Literal["first_response", "next_response", "resolution"]
TARGETS: tuple[TargetName, ...] = ("first_response", "next_response", "resolution")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DURATION = re.compile(r"(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m(?:in)?)?")
_SPAN = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


def _duration(value: object) -> object:
    """`90` (minutes), `45m`, `4h`, `1h30m`, `2d` (48 hours of the policy's time)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(minutes=value)
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.strip().lower())
        if value.strip() and found and any(found.groups()):
            d, h, m = (int(g or 0) for g in found.groups())
            return timedelta(days=d, hours=h, minutes=m)
        raise ValueError(f"'{value}' is not a duration (like 30m, 4h, 1h30m, 2d or minutes)")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]


def parse_span(text: str) -> Span:
    """`09:00-17:00`; an end before the start runs past midnight (`22:00-06:00`)."""
    found = _SPAN.fullmatch(text.strip())
    if not found:
        raise ValueError(f"'{text}' is not a time span (like 09:00-17:00 or 22:00-06:00)")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"'{text}' is not a time span: no such time of day")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        end += DAY_MINUTES
    return start, end


def _spans(value: object) -> object:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return value
    return [parse_span(item) if isinstance(item, str) else item for item in items]


Spans = Annotated[list[tuple[int, int]], BeforeValidator(_spans)]


def _percent(value: object) -> object:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"'{value}' is not a percentage") from None
    return value


Fraction = Annotated[float, BeforeValidator(_percent), Field(gt=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HolidaysEntry(_Model):
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    region: Text | None = None


def _holidays(value: object) -> object:
    """`HU`, `US-CA` or {country: US, region: CA}."""
    if isinstance(value, str):
        country, _, region = value.strip().partition("-")
        return {"country": country, "region": region or None}
    return value


class CalendarEntry(_Model):
    timezone: Text
    # Day names (`mon`) or ranges (`mon-fri`) to one span or a list of spans.
    hours: dict[str, Spans]
    holidays: Annotated[HolidaysEntry | None, BeforeValidator(_holidays)] = None
    closed: list[date] = []
    open: dict[date, Spans] = {}


def _per_priority(value: object) -> object:
    """One duration for every priority, or a mapping by priority."""
    if isinstance(value, dict):
        return value
    return {"low": value, "normal": value, "high": value, "urgent": value}


Targets = Annotated[dict[Priority, PositiveDuration], BeforeValidator(_per_priority)]


class TargetsEntry(_Model):
    first_response: Targets = {}
    next_response: Targets = {}
    resolution: Targets = {}


class MatchEntry(_Model):
    """Every key given must hold; a list holds when the ticket's value is in it."""

    queue: Texts = []
    priority: Annotated[
        list[Priority], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
    ] = []
    type: Texts = []
    customer_domain: Texts = []


class NotifyEntry(_Model):
    """`to`: assignee, lead (of the ticket's team before this stage moves it), team
    (the active members of the ticket's team after it), or a mail address."""

    to: Text
    template: Text


class StageEntry(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,48}$")]
    target: Annotated[list[TargetName], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
    # When: a fraction of the target (0.75 or 75%), or an offset after the due time.
    at: Fraction | None = None
    after: Duration | None = None
    every: PositiveDuration | None = None
    times: int = Field(default=1, ge=1, le=100)
    notify: list[NotifyEntry] = []
    # Raise the tier by one and hand the ticket to a team of that tier.
    escalate: bool = False
    team: Text | None = None
    priority: Priority | None = None
    # After downtime only the most severe missed stage of a target fires (catch_up:
    # most_severe); default: later in the ladder is more severe.
    severity: int | None = None


class PolicyEntry(_Model):
    calendar: Text | None = None
    time: Literal["business", "calendar"] = "business"
    # Absent: the policy applies only where a routing rule names it (`sla: NAME`).
    match: MatchEntry | None = None
    pause_on: Annotated[
        list[Literal["new", "open", "pending"]],
        BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
    ] = ["pending"]
    catch_up: Literal["most_severe", "all"] = "most_severe"
    targets: TargetsEntry
    escalation: list[StageEntry] = []


class SlaFile(_Model):
    """The file's shape; each calendar and policy is validated on its own, so one
    mistake does not hide the others."""

    calendars: dict[str, dict[str, Any]] = {}
    policies: dict[str, dict[str, Any]] = {}


def day_names(key: str) -> list[int] | None:
    """`mon` -> [0], `mon-fri` -> [0..4], `sat-mon` -> [5, 6, 0]; None if not days."""
    first, _, last = key.strip().lower().partition("-")
    if first not in DAYS or (last and last not in DAYS):
        return None
    start, stop = DAYS.index(first), DAYS.index(last or first)
    return [(start + i) % 7 for i in range((stop - start) % 7 + 1)]
