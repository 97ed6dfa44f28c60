"""Budget windows (capgate.core.windows): pure calendar arithmetic, no clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.windows import (
    ADJECTIVE,
    NEVER,
    RATE_WINDOWS,
    WindowInstance,
    WindowKind,
    format_reset,
    parse_window,
    window_at,
    zone,
)

HOUR = 3600
DAY = 86400
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu"]
CALENDAR = [WindowKind.DAY, WindowKind.WEEK, WindowKind.MONTH]


def at(tz: str, y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """The instant of local wall-clock time y-m-d h:mi:s in `tz` (fold=0)."""
    return int(datetime(y, m, d, h, mi, s, tzinfo=ZoneInfo(tz)).timestamp())


def utc(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return at("UTC", y, m, d, h, mi, s)


def local(ts: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ts, ZoneInfo(tz))


# --- every kind, fixed instants -------------------------------------------------------

# 2026-11-18 (a Wednesday) 13:47:23 UTC.
NOW = utc(2026, 11, 18, 13, 47, 23)

FIXED = [
    # (kind, tz, start, end)
    (WindowKind.MINUTE, "UTC", utc(2026, 11, 18, 13, 47), utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "UTC", utc(2026, 11, 18, 13), utc(2026, 11, 18, 14)),
    (WindowKind.DAY, "UTC", utc(2026, 11, 18), utc(2026, 11, 19)),
    (WindowKind.WEEK, "UTC", utc(2026, 11, 16), utc(2026, 11, 23)),
    (WindowKind.MONTH, "UTC", utc(2026, 11, 1), utc(2026, 12, 1)),
    (WindowKind.TOTAL, "UTC", 0, NEVER),
    # Berlin is UTC+1 in November: 14:47:23 local.
    (WindowKind.MINUTE, "Europe/Berlin", utc(2026, 11, 18, 13, 47), utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "Europe/Berlin", utc(2026, 11, 18, 13), utc(2026, 11, 18, 14)),
    (WindowKind.DAY, "Europe/Berlin", utc(2026, 11, 17, 23), utc(2026, 11, 18, 23)),
    (WindowKind.WEEK, "Europe/Berlin", utc(2026, 11, 15, 23), utc(2026, 11, 22, 23)),
    (WindowKind.MONTH, "Europe/Berlin", utc(2026, 10, 31, 23), utc(2026, 11, 30, 23)),
    (WindowKind.TOTAL, "Europe/Berlin", 0, NEVER),
    # New York is UTC-5 in November: 08:47:23 local.
    (WindowKind.MINUTE, "America/New_York", utc(2026, 11, 18, 13, 47), utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "America/New_York", utc(2026, 11, 18, 13), utc(2026, 11, 18, 14)),
    (WindowKind.DAY, "America/New_York", utc(2026, 11, 18, 5), utc(2026, 11, 19, 5)),
    (WindowKind.WEEK, "America/New_York", utc(2026, 11, 16, 5), utc(2026, 11, 23, 5)),
    (WindowKind.MONTH, "America/New_York", utc(2026, 11, 1, 4), utc(2026, 12, 1, 5)),
    (WindowKind.TOTAL, "America/New_York", 0, NEVER),
    # Kolkata is UTC+05:30: 19:17:23 local; hours start at :30 UTC.
    (WindowKind.MINUTE, "Asia/Kolkata", utc(2026, 11, 18, 13, 47), utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "Asia/Kolkata", utc(2026, 11, 18, 13, 30), utc(2026, 11, 18, 14, 30)),
    (WindowKind.DAY, "Asia/Kolkata", utc(2026, 11, 17, 18, 30), utc(2026, 11, 18, 18, 30)),
    (WindowKind.WEEK, "Asia/Kolkata", utc(2026, 11, 15, 18, 30), utc(2026, 11, 22, 18, 30)),
    (WindowKind.MONTH, "Asia/Kolkata", utc(2026, 10, 31, 18, 30), utc(2026, 11, 30, 18, 30)),
    (WindowKind.TOTAL, "Asia/Kolkata", 0, NEVER),
    # Kathmandu is UTC+05:45: 19:32:23 local; hours start at :15 UTC.
    (WindowKind.MINUTE, "Asia/Kathmandu", utc(2026, 11, 18, 13, 47), utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "Asia/Kathmandu", utc(2026, 11, 18, 13, 15), utc(2026, 11, 18, 14, 15)),
    (WindowKind.DAY, "Asia/Kathmandu", utc(2026, 11, 17, 18, 15), utc(2026, 11, 18, 18, 15)),
    (WindowKind.WEEK, "Asia/Kathmandu", utc(2026, 11, 15, 18, 15), utc(2026, 11, 22, 18, 15)),
    (WindowKind.MONTH, "Asia/Kathmandu", utc(2026, 10, 31, 18, 15), utc(2026, 11, 30, 18, 15)),
    (WindowKind.TOTAL, "Asia/Kathmandu", 0, NEVER),
]


@pytest.mark.parametrize(("kind", "tz", "start", "end"), FIXED)
def test_window_at_every_kind_and_zone(kind: WindowKind, tz: str, start: int, end: int) -> None:
    assert window_at(kind, NOW, tz) == WindowInstance(start, end)
    # a fractional `now` lands in the same window
    assert window_at(kind, NOW + 0.75, tz) == WindowInstance(start, end)


def test_fixed_table_covers_every_kind_in_every_zone() -> None:
    assert {(k, tz) for k, tz, _, _ in FIXED} == {(k, tz) for k in WindowKind for tz in ZONES}


def test_default_timezone_is_utc() -> None:
    for kind in WindowKind:
        assert window_at(kind, NOW) == window_at(kind, NOW, "UTC")


def test_total_window_never_ends() -> None:
    for now in (0, 1, NOW, 4_000_000_000.5):
        assert window_at(WindowKind.TOTAL, now, "Europe/Berlin") == WindowInstance(0, NEVER)
    assert utc(9999, 12, 31) < NEVER


def test_calendar_windows_start_at_local_midnight() -> None:
    for tz in ZONES:
        day = window_at(WindowKind.DAY, NOW, tz)
        assert local(day.start, tz).replace(tzinfo=None) == datetime(2026, 11, 18)
        assert local(day.end, tz).replace(tzinfo=None) == datetime(2026, 11, 19)


# --- weeks start on Monday ------------------------------------------------------------


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("day", range(16, 23))  # Mon 2026-11-16 .. Sun 2026-11-22
@pytest.mark.parametrize("clock", [(0, 0, 0), (12, 30, 0), (23, 59, 59)])
def test_week_starts_monday(tz: str, day: int, clock: tuple[int, int, int]) -> None:
    now = at(tz, 2026, 11, day, *clock)
    week = window_at(WindowKind.WEEK, now, tz)
    assert week == WindowInstance(at(tz, 2026, 11, 16), at(tz, 2026, 11, 23))
    assert local(week.start, tz).weekday() == 0


@pytest.mark.parametrize("tz", ZONES)
def test_week_boundary_sunday_to_monday(tz: str) -> None:
    monday = at(tz, 2026, 11, 23)
    assert window_at(WindowKind.WEEK, monday - 1, tz).end == monday
    assert window_at(WindowKind.WEEK, monday, tz).start == monday
    assert window_at(WindowKind.WEEK, monday - 0.001, tz).end == monday


def test_week_crossing_year_and_month() -> None:
    # 2026-12-31 is a Thursday: its week runs Mon 2026-12-28 .. Mon 2027-01-04.
    assert window_at(WindowKind.WEEK, utc(2027, 1, 2, 10), "UTC") == WindowInstance(
        utc(2026, 12, 28), utc(2027, 1, 4)
    )


# --- month ends -----------------------------------------------------------------------

MONTHS = [
    # (year, month, days)
    (2024, 2, 29),  # leap year
    (2026, 2, 28),
    (2000, 2, 29),  # divisible by 400: leap
    (2100, 2, 28),  # divisible by 100, not 400: not leap
    (2026, 1, 31),
    (2026, 4, 30),
    (2026, 12, 31),  # December -> January of the next year
]


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize(("year", "month", "days"), MONTHS)
def test_month_lengths(tz: str, year: int, month: int, days: int) -> None:
    start = at(tz, year, month, 1)
    nxt = at(tz, year + 1, 1, 1) if month == 12 else at(tz, year, month + 1, 1)
    for now in (start, start + 1, at(tz, year, month, days, 12), nxt - 1):
        assert window_at(WindowKind.MONTH, now, tz) == WindowInstance(start, nxt)
    assert window_at(WindowKind.MONTH, nxt, tz).start == nxt
    if tz in ("UTC", "Asia/Kolkata", "Asia/Kathmandu"):  # no DST
        assert nxt - start == days * DAY


def test_december_rolls_into_january() -> None:
    w = window_at(WindowKind.MONTH, utc(2026, 12, 31, 23, 59, 59), "UTC")
    assert w == WindowInstance(utc(2026, 12, 1), utc(2027, 1, 1))
    w = window_at(WindowKind.MONTH, utc(2027, 1, 1), "UTC")
    assert w == WindowInstance(utc(2027, 1, 1), utc(2027, 2, 1))
    # Berlin: New Year is 23:00 UTC on Dec 31.
    w = window_at(WindowKind.MONTH, utc(2026, 12, 31, 22, 59, 59), "Europe/Berlin")
    assert w == WindowInstance(utc(2026, 11, 30, 23), utc(2026, 12, 31, 23))
    w = window_at(WindowKind.MONTH, utc(2026, 12, 31, 23), "Europe/Berlin")
    assert w == WindowInstance(utc(2026, 12, 31, 23), utc(2027, 1, 31, 23))


def test_feb_29_in_a_leap_year_is_in_february() -> None:
    assert window_at(WindowKind.DAY, utc(2024, 2, 29, 12), "UTC") == WindowInstance(
        utc(2024, 2, 29), utc(2024, 3, 1)
    )
    assert window_at(WindowKind.MONTH, utc(2024, 2, 29, 23, 59, 59), "UTC").end == utc(2024, 3, 1)


# --- DST ------------------------------------------------------------------------------

DST_DAYS = [
    # (tz, y, m, d, hours)
    ("Europe/Berlin", 2026, 3, 29, 23),
    ("Europe/Berlin", 2026, 10, 25, 25),
    ("Europe/Berlin", 2026, 3, 28, 24),
    ("Europe/Berlin", 2026, 10, 26, 24),
    ("America/New_York", 2026, 3, 8, 23),
    ("America/New_York", 2026, 11, 1, 25),
    ("Asia/Kolkata", 2026, 3, 29, 24),
    ("Asia/Kathmandu", 2026, 10, 25, 24),
]


@pytest.mark.parametrize(("tz", "y", "m", "d", "hours"), DST_DAYS)
def test_dst_day_lengths(tz: str, y: int, m: int, d: int, hours: int) -> None:
    start = at(tz, y, m, d)
    w = window_at(WindowKind.DAY, start + 3 * HOUR, tz)
    assert w.start == start
    assert w.end - w.start == hours * HOUR
    assert local(w.end, tz).replace(tzinfo=None) == datetime(y, m, d) + timedelta(days=1)


def test_berlin_dst_days_exact_instants() -> None:
    # 2026-03-29: Berlin midnight is 23:00 UTC the day before (CET), the next midnight is
    # 22:00 UTC (CEST): 23 hours.
    assert window_at(WindowKind.DAY, utc(2026, 3, 29, 12), "Europe/Berlin") == WindowInstance(
        utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)
    )
    # 2026-10-25: from 22:00 UTC (CEST) to 23:00 UTC (CET): 25 hours.
    assert window_at(WindowKind.DAY, utc(2026, 10, 25, 12), "Europe/Berlin") == WindowInstance(
        utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)
    )
    # inside the repeated hour (02:00-03:00 happens twice), both times are the same day
    for t in (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)):
        assert window_at(WindowKind.DAY, t, "Europe/Berlin").start == utc(2026, 10, 24, 22)


def test_dst_week_and_month_lengths() -> None:
    week = window_at(WindowKind.WEEK, utc(2026, 3, 29, 12), "Europe/Berlin")
    assert week == WindowInstance(utc(2026, 3, 22, 23), utc(2026, 3, 29, 22))
    assert week.end - week.start == 7 * DAY - HOUR
    month = window_at(WindowKind.MONTH, utc(2026, 10, 15), "Europe/Berlin")
    assert month == WindowInstance(utc(2026, 9, 30, 22), utc(2026, 10, 31, 23))
    assert month.end - month.start == 31 * DAY + HOUR
    month = window_at(WindowKind.MONTH, utc(2026, 3, 15), "Europe/Berlin")
    assert month.end - month.start == 31 * DAY - HOUR


@pytest.mark.parametrize(
    ("tz", "first"),
    [
        ("Europe/Berlin", utc(2026, 3, 28, 22)),
        ("Europe/Berlin", utc(2026, 10, 24, 22)),
        ("America/New_York", utc(2026, 3, 8, 4)),
        ("America/New_York", utc(2026, 11, 1, 3)),
    ],
)
def test_hour_windows_stay_3600_seconds_across_dst(tz: str, first: int) -> None:
    t = first
    for _ in range(8):  # walk across the transition hour by hour
        w = window_at(WindowKind.HOUR, t + 1234, tz)
        assert w == WindowInstance(t, t + HOUR)
        assert window_at(WindowKind.HOUR, t, tz) == w
        assert window_at(WindowKind.HOUR, t + HOUR - 1, tz) == w
        for m in range(0, 60, 7):
            mw = window_at(WindowKind.MINUTE, t + 60 * m + 59, tz)
            assert mw == WindowInstance(t + 60 * m, t + 60 * m + 60)
        t += HOUR


# --- boundaries -----------------------------------------------------------------------

BOUNDARIES = [
    (WindowKind.MINUTE, "UTC", utc(2026, 11, 18, 13, 48)),
    (WindowKind.HOUR, "UTC", utc(2026, 11, 18, 14)),
    (WindowKind.HOUR, "Asia/Kolkata", utc(2026, 11, 18, 14, 30)),
    (WindowKind.HOUR, "Asia/Kathmandu", utc(2026, 11, 18, 14, 15)),
    (WindowKind.DAY, "UTC", utc(2026, 11, 19)),
    (WindowKind.DAY, "Europe/Berlin", utc(2026, 3, 29, 22)),
    (WindowKind.DAY, "Europe/Berlin", utc(2026, 10, 25, 23)),
    (WindowKind.DAY, "America/New_York", utc(2026, 11, 2, 5)),
    (WindowKind.WEEK, "Europe/Berlin", utc(2026, 11, 22, 23)),
    (WindowKind.MONTH, "UTC", utc(2027, 1, 1)),
    (WindowKind.MONTH, "Asia/Kathmandu", utc(2026, 12, 31, 18, 15)),
]


@pytest.mark.parametrize(("kind", "tz", "boundary"), BOUNDARIES)
def test_now_exactly_at_boundary_belongs_to_new_window(
    kind: WindowKind, tz: str, boundary: int
) -> None:
    new = window_at(kind, boundary, tz)
    old = window_at(kind, boundary - 1, tz)
    assert new.start == boundary
    assert old.end == boundary
    assert old != new
    assert window_at(kind, boundary - 0.001, tz) == old
    assert window_at(kind, boundary + 0.999, tz) == new


# --- property: windows tile time --------------------------------------------------------

LOW = utc(1990, 1, 1)
HIGH = utc(2100, 1, 1)
NON_TOTAL = [k for k in WindowKind if k is not WindowKind.TOTAL]


def _transitions(tz: str, first_year: int, last_year: int) -> list[int]:
    """UTC offset changes of `tz`, found at hour resolution (enough for Berlin and NY)."""
    zi = ZoneInfo(tz)
    out = []
    t = utc(first_year, 1, 1)
    end = utc(last_year + 1, 1, 1)
    before = datetime.fromtimestamp(t, zi).utcoffset()
    while t < end:
        t += HOUR
        offset = datetime.fromtimestamp(t, zi).utcoffset()
        if offset != before:
            out.append(t)
            before = offset
    return out


DST_CHANGES = _transitions("Europe/Berlin", 2024, 2028) + _transitions(
    "America/New_York", 2024, 2028
)
# Instants within two days of a DST change, where calendar arithmetic is most fragile.
NEAR_DST = st.builds(
    lambda t, d: t + d, st.sampled_from(DST_CHANGES), st.integers(-2 * DAY, 2 * DAY)
)


def test_dst_changes_found() -> None:
    assert len(DST_CHANGES) == 2 * 2 * 5
    assert utc(2026, 3, 29, 1) in DST_CHANGES
    assert utc(2026, 10, 25, 1) in DST_CHANGES


@settings(max_examples=400, deadline=None)
@given(
    now=st.integers(LOW, HIGH) | st.floats(LOW, HIGH, allow_nan=False) | NEAR_DST,
    kind=st.sampled_from(list(WindowKind)),
    tz=st.sampled_from(ZONES),
)
def test_windows_contain_now_and_tile_time(now: float, kind: WindowKind, tz: str) -> None:
    w = window_at(kind, now, tz)
    assert w.start <= now < w.end
    assert isinstance(w.start, int)
    assert isinstance(w.end, int)
    if kind is WindowKind.TOTAL:
        assert w == WindowInstance(0, NEVER)
        return
    # no gap and no overlap: the next window starts where this one ends, and every instant
    # of this window maps back to this window
    assert window_at(kind, w.end, tz).start == w.end
    assert window_at(kind, w.start, tz) == w
    assert window_at(kind, w.end - 1, tz) == w
    assert window_at(kind, w.start - 1, tz).end == w.start
    length = w.end - w.start
    if kind is WindowKind.MINUTE:
        assert length == 60
    elif kind is WindowKind.HOUR:
        assert length == HOUR
    elif kind is WindowKind.DAY:
        assert length in (23 * HOUR, 24 * HOUR, 25 * HOUR)
    elif kind is WindowKind.WEEK:
        assert length in (7 * DAY - HOUR, 7 * DAY, 7 * DAY + HOUR)
    else:
        assert 28 * DAY - HOUR <= length <= 31 * DAY + HOUR
    if kind in CALENDAR:
        start = local(w.start, tz)
        assert (start.hour, start.minute, start.second) == (0, 0, 0)
        if kind is WindowKind.WEEK:
            assert start.weekday() == 0
        if kind is WindowKind.MONTH:
            assert start.day == 1
    else:
        # fixed-length windows align with the local clock
        start = local(w.start, tz)
        assert start.second == 0
        if kind is WindowKind.HOUR:
            assert start.minute == 0


@settings(max_examples=200, deadline=None)
@given(
    now=st.integers(LOW, HIGH) | NEAR_DST,
    kind=st.sampled_from(NON_TOTAL),
    tz=st.sampled_from(ZONES),
    steps=st.integers(1, 5),
)
def test_consecutive_windows_are_ordered_and_disjoint(
    now: int, kind: WindowKind, tz: str, steps: int
) -> None:
    w = window_at(kind, now, tz)
    for _ in range(steps):
        nxt = window_at(kind, w.end, tz)
        assert nxt.start == w.end < nxt.end
        w = nxt


# --- format_reset ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "tz", "text"),
    [
        (utc(2026, 11, 23), "UTC", "2026-11-23 00:00 UTC"),
        (utc(2026, 11, 22, 23), "Europe/Berlin", "2026-11-23 00:00 Europe/Berlin"),
        (utc(2026, 3, 29, 22), "Europe/Berlin", "2026-03-30 00:00 Europe/Berlin"),
        (utc(2026, 11, 18, 14, 30), "Asia/Kolkata", "2026-11-18 20:00 Asia/Kolkata"),
        (utc(2026, 11, 18, 14, 15), "Asia/Kathmandu", "2026-11-18 20:00 Asia/Kathmandu"),
        (utc(2026, 11, 2, 5), "America/New_York", "2026-11-02 00:00 America/New_York"),
        (utc(2026, 11, 18, 13, 48, 59), "UTC", "2026-11-18 13:48 UTC"),
        (NEVER, "UTC", "never (total limit)"),
        (NEVER, "Europe/Berlin", "never (total limit)"),
        (NEVER + 5, "UTC", "never (total limit)"),
    ],
)
def test_format_reset(end: int, tz: str, text: str) -> None:
    assert format_reset(end, tz) == text


def test_format_reset_default_zone_is_utc() -> None:
    assert format_reset(utc(2027, 1, 1)) == "2027-01-01 00:00 UTC"


def test_format_reset_of_each_window_end() -> None:
    for kind, tz, _, end in FIXED:
        text = format_reset(window_at(kind, NOW, tz).end, tz)
        if kind is WindowKind.TOTAL:
            assert text == "never (total limit)"
        else:
            assert text == local(end, tz).strftime("%Y-%m-%d %H:%M ") + tz


# --- timezones and window names ---------------------------------------------------------


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "Europe/Berlinn", "not a zone", "../etc"])
@pytest.mark.parametrize(
    "kind", [WindowKind.MINUTE, WindowKind.HOUR, WindowKind.DAY, WindowKind.WEEK, WindowKind.MONTH]
)
def test_unknown_timezone_raises_value_error_naming_it(bad: str, kind: WindowKind) -> None:
    with pytest.raises(ValueError, match="unknown timezone") as info:
        window_at(kind, NOW, bad)
    assert repr(bad) in str(info.value)


def test_zone_and_format_reset_reject_unknown_timezone() -> None:
    with pytest.raises(ValueError, match=r"'Nowhere/Land'"):
        zone("Nowhere/Land")
    with pytest.raises(ValueError, match=r"'Nowhere/Land'"):
        format_reset(NOW, "Nowhere/Land")
    assert zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("kind", list(WindowKind))
def test_parse_window_accepts_every_kind(kind: WindowKind) -> None:
    assert parse_window(kind.value) is kind


@pytest.mark.parametrize("bad", ["daily", "Day", "", "weeks", "year"])
def test_parse_window_rejects_unknown(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown window") as info:
        parse_window(bad)
    message = str(info.value)
    assert repr(bad) in message
    for kind in WindowKind:
        assert kind.value in message


def test_rate_windows_and_adjectives() -> None:
    assert frozenset({WindowKind.MINUTE, WindowKind.HOUR}) == RATE_WINDOWS
    assert set(ADJECTIVE) == set(WindowKind)
    assert ADJECTIVE[WindowKind.DAY] == "Daily"
    assert ADJECTIVE[WindowKind.MINUTE] == "Per-minute"


# --- known bugs -------------------------------------------------------------------------


def test_repeated_midnight_keeps_one_day_window() -> None:
    tz = "Atlantic/Azores"  # 2026-10-25 01:00 UTC: clocks go back from 01:00 (+00) to 00:00 (-01)
    before = window_at(WindowKind.DAY, utc(2026, 10, 25, 0, 30), tz)  # 00:30 local, first time
    during = window_at(WindowKind.DAY, utc(2026, 10, 25, 1, 30), tz)  # 00:30 local, second time
    after = window_at(WindowKind.DAY, utc(2026, 10, 25, 2, 30), tz)  # 01:30 local
    assert before == after
    assert during == before


def test_repeated_midnight_keeps_one_month_window() -> None:
    tz = "America/Havana"
    first = window_at(WindowKind.MONTH, utc(2026, 11, 1, 4, 30), tz)  # 00:30 CDT
    second = window_at(WindowKind.MONTH, utc(2026, 11, 1, 5, 30), tz)  # 00:30 CST
    assert first == second


def test_hour_windows_tile_across_half_hour_dst() -> None:
    tz = "Australia/Lord_Howe"  # 2026-04-05 02:00 local (+11) = 2026-04-04 15:00 UTC
    w = window_at(WindowKind.HOUR, utc(2026, 4, 4, 14, 59), tz)
    assert window_at(WindowKind.HOUR, w.end, tz).start == w.end
