"""Business time: when a support desk is open, and time arithmetic that counts only that.

Pure functions of their arguments: nothing here reads a clock. Every instant in and out
is an aware datetime; results are in UTC. Opening hours are wall-clock times in the
calendar's zone, so a desk open 09:00-17:00 is open eight real hours a day, and a night
shift 22:00-06:00 that spans a DST change is open seven or nine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# (start, end) in minutes after local midnight of the day the span belongs to; end may
# pass 1440 for a shift that runs over midnight (22:00-06:00 is (1320, 1800)).
Span = tuple[int, int]
Interval = tuple[datetime, datetime]

DAY_MINUTES = 24 * 60
# A calendar with no open hours this far ahead is broken, not merely on holiday.
_HORIZON_DAYS = 3 * 366
_ZERO = timedelta(0)


class NoBusinessHours(ValueError):
    """The calendar is never open within the horizon: no due time can be computed."""


def _always_open(_: date) -> bool:
    return False


class Calendar:
    """Weekly opening hours in a time zone, less holidays and closed dates, plus dates
    opened specially (with their own hours).

    `weekly[0]` is Monday. A span belongs to the day it starts on: a holiday on Friday
    cancels the Friday night shift that ends on Saturday morning. Intervals are made
    disjoint when built (a late shift that runs into the next day's early hours counts
    once), so sums never count an instant twice.
    """

    def __init__(
        self,
        timezone: str,
        weekly: Sequence[Sequence[Span]],
        *,
        is_holiday: Callable[[date], bool] = _always_open,
        closed: frozenset[date] = frozenset(),
        opened: Mapping[date, Sequence[Span]] | None = None,
        always: bool = False,
    ) -> None:
        if len(weekly) != 7:
            raise ValueError("weekly hours need seven days, Monday first")
        for spans in [*weekly, *(opened or {}).values()]:
            for start, end in spans:
                if not 0 <= start < DAY_MINUTES or not start < end <= start + DAY_MINUTES:
                    raise ValueError(f"bad span {start}-{end} (minutes after midnight)")
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self.weekly = tuple(tuple(sorted(spans)) for spans in weekly)
        self.always = always
        self._is_holiday = is_holiday
        self._closed = closed
        self._opened = {d: tuple(sorted(s)) for d, s in (opened or {}).items()}
        self._days: dict[date, tuple[Interval, ...]] = {}
        if not always and not any(self.weekly) and not self._opened:
            raise NoBusinessHours(f"calendar in {timezone} has no opening hours")

    @classmethod
    def around_the_clock(cls, timezone: str = "UTC") -> Calendar:
        """Calendar time: open every minute of every day."""
        return cls(timezone, [[(0, DAY_MINUTES)]] * 7, always=True)

    # ------------------------------------------------------------ intervals

    def _spans(self, day: date) -> tuple[Span, ...]:
        if day in self._opened:
            return self._opened[day]
        if day in self._closed or self._is_holiday(day):
            return ()
        return self.weekly[day.weekday()]

    def _utc(self, day: date, minute: int) -> datetime:
        # Wall-clock arithmetic on the naive value, then the zone: 09:00 stays 09:00
        # across a DST change. A wall time in the spring gap maps past it (fold=0).
        wall = datetime.combine(day, time()) + timedelta(minutes=minute)
        return wall.replace(tzinfo=self.zone).astimezone(UTC)

    def _raw(self, day: date) -> list[Interval]:
        return [(self._utc(day, s), self._utc(day, e)) for s, e in self._spans(day)]

    def day(self, day: date) -> tuple[Interval, ...]:
        """The open intervals (UTC) that start on local date `day`, sorted and disjoint
        from the previous day's."""
        found = self._days.get(day)
        if found is not None:
            return found
        previous = self._raw(day - timedelta(days=1))
        floor = max((end for _, end in previous), default=None)
        merged: list[Interval] = []
        for start, end in self._raw(day):
            if floor is not None and start < floor:
                start = floor
            if merged and start <= merged[-1][1]:
                start = merged[-1][1]
            if start < end:
                merged.append((start, end))
        result = tuple(merged)
        self._days[day] = result
        return result

    def _local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def forward(self, start: datetime) -> Iterator[Interval]:
        """Open intervals after `start`, the first clipped to begin no earlier."""
        start = _utc(start)
        first = self._local_date(start) - timedelta(days=1)
        for offset in range(_HORIZON_DAYS):
            for begin, end in self.day(first + timedelta(days=offset)):
                if end > start:
                    yield max(begin, start), end
        raise NoBusinessHours(f"calendar in {self.timezone} is closed for {_HORIZON_DAYS} days")

    def backward(self, end: datetime) -> Iterator[Interval]:
        """Open intervals before `end`, latest first, the first clipped to end no later."""
        end = _utc(end)
        first = self._local_date(end) + timedelta(days=1)
        for offset in range(_HORIZON_DAYS):
            for begin, finish in reversed(self.day(first - timedelta(days=offset))):
                if begin < end:
                    yield begin, min(finish, end)
        raise NoBusinessHours(f"calendar in {self.timezone} is closed for {_HORIZON_DAYS} days")

    # ------------------------------------------------------------ arithmetic

    def is_open(self, instant: datetime) -> bool:
        """Whether the desk is open at `instant` (an interval includes its start)."""
        if self.always:
            return True
        begin, _ = next(self.forward(instant))
        return begin == _utc(instant)

    def next_open(self, instant: datetime) -> datetime:
        """`instant` if open then, else the next opening."""
        if self.always:
            return _utc(instant)
        return next(self.forward(instant))[0]

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The instant `amount` of business time after `start` (before it if negative).

        A positive amount ends inside open hours or exactly at a closing time, never in
        closed hours; zero returns `start`.
        """
        start = _utc(start)
        if amount < _ZERO:
            return self.subtract(start, -amount)
        if self.always or amount == _ZERO:
            return start + amount
        left = amount
        for begin, end in self.forward(start):
            if left <= end - begin:
                return begin + left
            left -= end - begin
        raise AssertionError("forward() ends by raising")  # pragma: no cover

    def subtract(self, end: datetime, amount: timedelta) -> datetime:
        """The instant `amount` of business time before `end`: `add` run backwards.

        `subtract(add(t, d), d)` is `next_open(t)` for d > 0.
        """
        end = _utc(end)
        if amount < _ZERO:
            return self.add(end, -amount)
        if self.always or amount == _ZERO:
            return end - amount
        left = amount
        for begin, finish in self.backward(end):
            if left <= finish - begin:
                return finish - left
            left -= finish - begin
        raise AssertionError("backward() ends by raising")  # pragma: no cover

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time from `start` to `end`; negative when `end` is earlier."""
        start, end = _utc(start), _utc(end)
        if end < start:
            return -self.between(end, start)
        if self.always:
            return end - start
        total = _ZERO
        for begin, finish in self.forward(start):
            if begin >= end:
                break
            total += min(finish, end) - begin
        return total


def _utc(instant: datetime) -> datetime:
    # Arithmetic and comparison of datetimes sharing a zone work on wall-clock values;
    # in UTC they work on real time.
    if instant.tzinfo is None:
        raise ValueError("business time needs aware datetimes")
    return instant.astimezone(UTC)


def public_holidays(country: str, subdivision: str | None = None) -> Callable[[date], bool]:
    """Whether a date is a public holiday of `country` (ISO 3166, like HU, DE, US) and
    optionally a region of it (CA, BY). Raises ValueError for a place the `holidays`
    package does not know."""
    import holidays  # only this module knows the package

    try:
        table = holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError as exc:
        where = f"{country}-{subdivision}" if subdivision else country
        raise ValueError(f"no public holidays known for '{where}'") from exc
    return table.__contains__
