"""Schedules: days, start (inside) and end (outside), overnight windows, timezones, DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from capgate.core.engine import check_access
from capgate.core.limits import Scope, ScopeKind
from capgate.core.schedules import Schedule, closed_schedules, parse_days


def at(tz: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


OFFICE = Schedule.from_json(
    {
        "model": "claude-opus*",
        "days": "mon-fri",
        "start": "09:00",
        "end": "18:00",
        "tz": "America/New_York",
    }
)
NIGHT = Schedule.from_json(
    {"model": "*", "days": "fri", "start": "22:00", "end": "06:00", "tz": "Europe/Berlin"}
)


@pytest.mark.parametrize(
    ("when", "is_open"),
    [
        (at("America/New_York", 2026, 11, 23, 9, 0), True),  # Monday 09:00: start is inside
        (at("America/New_York", 2026, 11, 23, 8, 59, 59), False),
        (at("America/New_York", 2026, 11, 23, 17, 59, 59), True),
        (at("America/New_York", 2026, 11, 23, 18, 0), False),  # end is outside
        (at("America/New_York", 2026, 11, 21, 12, 0), False),  # Saturday
        (at("UTC", 2026, 11, 23, 14, 30), True),  # 09:30 in New York
    ],
)
def test_office_hours(when: float, is_open: bool) -> None:
    assert OFFICE.is_open(when) is is_open


@pytest.mark.parametrize(
    ("when", "is_open"),
    [
        (at("Europe/Berlin", 2026, 11, 27, 22, 0), True),  # Friday evening
        (at("Europe/Berlin", 2026, 11, 28, 5, 59), True),  # Saturday morning: Friday's window
        (at("Europe/Berlin", 2026, 11, 28, 6, 0), False),
        (at("Europe/Berlin", 2026, 11, 28, 22, 30), False),  # Saturday evening: not a Friday
        (at("Europe/Berlin", 2026, 11, 27, 5, 0), False),  # Friday morning belongs to Thursday
    ],
)
def test_overnight(when: float, is_open: bool) -> None:
    assert NIGHT.is_open(when) is is_open


def test_dst_keeps_local_hours() -> None:
    # New York switches to EDT on 2026-03-08: 09:00 local is 14:00 UTC before, 13:00 after.
    assert OFFICE.is_open(at("UTC", 2026, 3, 6, 14, 0)) and not OFFICE.is_open(
        at("UTC", 2026, 3, 6, 13, 30)
    )
    assert OFFICE.is_open(at("UTC", 2026, 3, 9, 13, 0))


def test_days_syntax() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("daily") == frozenset(range(7))
    for bad in ("weekdays", "mon-funday", ""):
        with pytest.raises(ValueError, match="days"):
            parse_days(bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"start": "9:00", "end": "18:00"},
        {"start": "09:00", "end": "25:00"},
        {"start": "09:00", "end": "09:00"},
        {"start": "09:00", "end": "18:00", "tz": "Mars/Olympus"},
        {"start": "09:00", "end": "18:00", "when": "always"},
    ],
)
def test_bad_schedules(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Schedule.from_json(bad)


def test_round_trip() -> None:
    assert Schedule.from_json(OFFICE.to_json()) == OFFICE
    assert OFFICE.describe() == "mon,tue,wed,thu,fri 09:00-18:00 America/New_York"


def test_only_matching_models_are_restricted_and_any_open_schedule_allows() -> None:
    saturday = at("America/New_York", 2026, 11, 21, 12, 0)
    weekend = Schedule.from_json(
        {
            "model": "claude-opus*",
            "days": "sat,sun",
            "start": "10:00",
            "end": "14:00",
            "tz": "America/New_York",
        }
    )
    assert closed_schedules([OFFICE], ["claude-haiku-4-5"], saturday) == []
    assert closed_schedules([OFFICE], ["claude-opus-4-5"], saturday) == [OFFICE]
    assert closed_schedules([OFFICE, weekend], ["claude-opus-4-5"], saturday) == []


def test_check_access_names_the_window() -> None:
    key = Scope(ScopeKind.KEY, "k", "alice", schedules=(OFFICE,))
    refusal = check_access(
        [key], ["claude-opus-4-5", "claude-opus-4-5"], at("America/New_York", 2026, 11, 21, 12, 0)
    )
    assert refusal is not None and refusal.code == "outside_schedule"
    assert 'key "alice" only mon,tue,wed,thu,fri 09:00-18:00 America/New_York' in refusal.message
