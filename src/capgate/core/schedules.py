"""Time-of-day schedules: when a scope may use a model. Pure.

A schedule opens a model glob on some days of the week between two local times in a
timezone, e.g. opus on mon-fri 09:00-18:00 America/New_York. A window whose end is
before its start runs overnight and belongs to the day it starts on (fri 22:00-06:00 is
Friday 22:00 to Saturday 06:00). Start is inside, end is outside. A model that some
schedules of a scope match may only be used while one of them is open; a model that none
match is not restricted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from capgate.core.windows import zone

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri', 'sat,sun', 'mon,wed-fri', 'daily' or '*' -> weekday numbers (Monday 0)."""
    text = text.strip().lower()
    if text in ("daily", "*", "all"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"days {text!r}: use names like mon-fri or sat,sun")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def parse_time(text: str) -> int:
    """'09:30' -> minutes after midnight; '24:00' is the end of the day."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(f"time {text!r}: use HH:MM (00:00 to 24:00)")
    return 1440 if text.strip() == "24:00" else int(match.group(1)) * 60 + int(match.group(2))


def _days_text(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    return ",".join(DAYS[d] for d in sorted(days))


@dataclass(frozen=True, slots=True)
class Schedule:
    model: str  # glob
    days: frozenset[int]  # weekdays the window starts on, Monday 0
    start: int  # minutes after local midnight
    end: int
    tz: str = "UTC"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        unknown = set(data) - {"model", "days", "start", "end", "tz"}
        if unknown:
            raise ValueError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
        tz = str(data.get("tz") or "UTC")
        zone(tz)
        start, end = parse_time(str(data["start"])), parse_time(str(data["end"]))
        if start == end:
            raise ValueError("a schedule's start and end must differ")
        model = data.get("model") or "*"
        return cls(str(model), parse_days(str(data.get("days", "daily"))), start, end, tz)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "days": _days_text(self.days),
            "start": f"{self.start // 60:02d}:{self.start % 60:02d}",
            "end": f"{self.end // 60:02d}:{self.end % 60:02d}",
            "tz": self.tz,
        }

    def describe(self) -> str:
        d = self.to_json()
        return f"{d['days']} {d['start']}-{d['end']} {self.tz}"

    def matches(self, models: Sequence[str]) -> bool:
        return any(fnmatchcase(m, self.model) for m in models)

    def is_open(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, zone(self.tz))
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Overnight: the evening part belongs to today, the morning part to yesterday.
        return (today in self.days and minute >= self.start) or (
            (today - 1) % 7 in self.days and minute < self.end
        )


def closed_schedules(
    schedules: Sequence[Schedule], models: Sequence[str], now: float
) -> list[Schedule]:
    """The schedules that restrict `models` when none of them is open now ([] = allowed)."""
    matching = [s for s in schedules if s.matches(models)]
    if not matching or any(s.is_open(now) for s in matching):
        return []
    return matching
