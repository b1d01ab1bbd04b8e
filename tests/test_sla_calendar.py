"""Business-time arithmetic: properties over random instants, and the calendar's hard cases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maild.sla.calendar import Calendar, NoBusinessHours, public_holidays

BUDAPEST = ZoneInfo("Europe/Budapest")
NEW_YORK = ZoneInfo("America/New_York")
NINE_TO_FIVE = [[(9 * 60, 17 * 60)]] * 5 + [[], []]


def local(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)  # type: ignore[misc]


def office() -> Calendar:
    return Calendar(
        "Europe/Budapest",
        NINE_TO_FIVE,
        is_holiday=public_holidays("HU"),
        closed=frozenset({date(2026, 12, 23)}),
        opened={date(2026, 1, 10): [(9 * 60, 13 * 60)]},
    )


def split_and_night() -> Calendar:
    """Split days Monday to Friday and a Saturday night shift into Sunday."""
    weekday = [(8 * 60, 12 * 60), (13 * 60, 17 * 60)]
    return Calendar("America/New_York", [weekday] * 5 + [[(22 * 60, 30 * 60)], []])


CALENDARS = [office(), split_and_night(), Calendar.around_the_clock("Europe/Budapest")]
instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
amounts = st.integers(min_value=1, max_value=60 * 24 * 20).map(lambda m: timedelta(minutes=m))
calendars = st.sampled_from(CALENDARS)
# The properties are what is tested, not speed: a busy machine must not fail them.
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def inside_open_hours(calendar: Calendar, instant: datetime) -> bool:
    """Strictly after an opening and at most at its closing."""
    day = instant.astimezone(calendar.zone).date()
    for offset in (-1, 0):
        for begin, end in calendar.day(day + timedelta(days=offset)):
            if begin < instant <= end:
                return True
    return False


@PROPERTY
@given(calendars, instants, amounts)
def test_a_due_time_is_never_in_closed_hours(
    calendar: Calendar, start: datetime, amount: timedelta
) -> None:
    due = calendar.add(start, amount)
    assert due > start
    assert inside_open_hours(calendar, due)
    assert calendar.between(start, due) == amount


@PROPERTY
@given(calendars, instants, instants, amounts)
def test_due_times_are_monotonic_in_the_start(
    calendar: Calendar, a: datetime, b: datetime, amount: timedelta
) -> None:
    early, late = min(a, b), max(a, b)
    assert calendar.add(early, amount) <= calendar.add(late, amount)


@PROPERTY
@given(calendars, instants, amounts)
def test_adding_then_subtracting_round_trips(
    calendar: Calendar, start: datetime, amount: timedelta
) -> None:
    due = calendar.add(start, amount)
    assert calendar.subtract(due, amount) == calendar.next_open(start)
    assert calendar.add(start, -amount) == calendar.subtract(start, amount)


def test_friday_evening_mail_is_due_monday_morning() -> None:
    friday_evening = local(BUDAPEST, 2026, 3, 6, 18, 30)
    due = office().add(friday_evening, timedelta(hours=4))
    assert due == local(BUDAPEST, 2026, 3, 9, 13, 0)


def test_within_the_day_and_over_the_night() -> None:
    calendar = office()
    assert calendar.add(local(BUDAPEST, 2026, 3, 3, 10), timedelta(hours=4)) == local(
        BUDAPEST, 2026, 3, 3, 14
    )
    assert calendar.add(local(BUDAPEST, 2026, 3, 3, 15), timedelta(hours=4)) == local(
        BUDAPEST, 2026, 3, 4, 11
    )
    # Exactly at closing is still in time.
    assert calendar.add(local(BUDAPEST, 2026, 3, 3, 13), timedelta(hours=4)) == local(
        BUDAPEST, 2026, 3, 3, 17
    )


def test_hungarian_holidays_and_extra_dates() -> None:
    calendar = office()
    # 2026-03-13 is a Friday before National Day (Sunday 15th): open; Easter Monday is not.
    assert calendar.add(local(BUDAPEST, 2026, 4, 3, 10), timedelta(hours=1)) == local(
        BUDAPEST, 2026, 4, 7, 10
    ), "Good Friday and Easter Monday 2026 are closed"
    assert not calendar.is_open(local(BUDAPEST, 2026, 12, 23, 10)), "an extra closed date"
    assert calendar.is_open(local(BUDAPEST, 2026, 1, 10, 10)), "a Saturday opened specially"
    assert not calendar.is_open(local(BUDAPEST, 2026, 1, 10, 14)), "with its own hours"


def test_regional_holidays() -> None:
    bavaria = Calendar("Europe/Berlin", NINE_TO_FIVE, is_holiday=public_holidays("DE", "BY"))
    berlin = Calendar("Europe/Berlin", NINE_TO_FIVE, is_holiday=public_holidays("DE", "BE"))
    epiphany = datetime(2026, 1, 6, 10, tzinfo=ZoneInfo("Europe/Berlin"))
    assert not bavaria.is_open(epiphany)
    assert berlin.is_open(epiphany)
    california = Calendar(
        "America/Los_Angeles", NINE_TO_FIVE, is_holiday=public_holidays("US", "CA")
    )
    assert not california.is_open(datetime(2026, 3, 31, 10, tzinfo=ZoneInfo("America/Los_Angeles")))
    with pytest.raises(ValueError, match="XX"):
        public_holidays("XX")


def test_dst_spring_forward_in_budapest_keeps_wall_clock_hours() -> None:
    # Clocks go 02:00 -> 03:00 on Sunday 2026-03-29; a 24/7 desk loses an hour that night.
    always = Calendar.around_the_clock("Europe/Budapest")
    saturday_noon = local(BUDAPEST, 2026, 3, 28, 12)
    assert always.add(saturday_noon, timedelta(hours=24)) == local(BUDAPEST, 2026, 3, 29, 13)
    # A wall-clock 00:00-06:00 shift is only five real hours that night.
    night = Calendar("Europe/Budapest", [[(0, 6 * 60)]] * 7)
    assert night.between(
        local(BUDAPEST, 2026, 3, 29, 0), local(BUDAPEST, 2026, 3, 29, 12)
    ) == timedelta(hours=5)
    # Office hours the Monday after start at 09:00 local, 07:00 UTC (CEST).
    due = office().add(local(BUDAPEST, 2026, 3, 27, 16), timedelta(hours=2))
    assert due == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


def test_dst_fall_back_in_new_york_night_shift() -> None:
    # 2026-11-01 01:00-02:00 happens twice; a 22:00-06:00 shift that night is 9 hours.
    night = Calendar("America/New_York", [[(22 * 60, 30 * 60)]] * 7)
    start = local(NEW_YORK, 2026, 10, 31, 22)
    assert night.add(start, timedelta(hours=9)) == local(NEW_YORK, 2026, 11, 1, 6)
    assert night.between(start, local(NEW_YORK, 2026, 11, 1, 12)) == timedelta(hours=9)
    # and in spring (2026-03-08) it is 7.
    spring = local(NEW_YORK, 2026, 3, 7, 22)
    assert night.between(spring, local(NEW_YORK, 2026, 3, 8, 12)) == timedelta(hours=7)


def test_overnight_shift_belongs_to_the_day_it_starts() -> None:
    calendar = split_and_night()
    saturday_night = local(NEW_YORK, 2026, 3, 14, 23)
    assert calendar.is_open(saturday_night)
    assert calendar.is_open(local(NEW_YORK, 2026, 3, 15, 5))  # Sunday morning, same shift
    assert not calendar.is_open(local(NEW_YORK, 2026, 3, 15, 7))
    # Two hours from Saturday 23:00: within the shift, past midnight.
    assert calendar.add(saturday_night, timedelta(hours=2)) == local(NEW_YORK, 2026, 3, 15, 1)
    # The lunch break does not count.
    assert calendar.add(local(NEW_YORK, 2026, 3, 16, 11), timedelta(hours=2)) == local(
        NEW_YORK, 2026, 3, 16, 14
    )


def test_overlapping_shifts_count_once() -> None:
    calendar = Calendar("UTC", [[(20 * 60, 32 * 60), (6 * 60, 10 * 60)]] * 7)
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    # Open 06:00-10:00 and 20:00-08:00 next day: 4 + 4 (the 06:00-08:00 overlap once) ...
    assert calendar.between(monday + timedelta(hours=12), monday + timedelta(hours=36)) == (
        timedelta(hours=12 + 2)
    )


def test_pause_and_resume_across_a_weekend() -> None:
    calendar = office()
    opened = local(BUDAPEST, 2026, 3, 6, 10)  # Friday
    due = calendar.add(opened, timedelta(hours=8))  # Monday 10:00
    paused, resumed = local(BUDAPEST, 2026, 3, 6, 15), local(BUDAPEST, 2026, 3, 9, 11)
    # Paused Friday 15:00 to Monday 11:00: two business hours went by, the weekend none.
    held = calendar.between(paused, resumed)
    assert held == timedelta(hours=4)
    assert calendar.add(due, held) == local(BUDAPEST, 2026, 3, 9, 14)


def test_a_calendar_that_never_opens_is_an_error() -> None:
    with pytest.raises(NoBusinessHours):
        Calendar("UTC", [[]] * 7)
    only_holidays = Calendar("UTC", NINE_TO_FIVE, is_holiday=lambda _: True)
    with pytest.raises(NoBusinessHours):
        only_holidays.add(datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1))
