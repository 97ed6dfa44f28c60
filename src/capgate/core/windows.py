"""Budget windows: which stretch of time a counter covers.

A limit counts usage inside one *window instance*, named by its start instant (a Unix
timestamp in whole seconds). Calendar windows (minute .. month) start at the boundary in
the scope's timezone, so "day" in Europe/Berlin resets at Berlin midnight and a DST day is
23 or 25 hours long. ``total`` never resets. Pure: no clock is read here; callers pass `now`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NEVER = 2**62  # "end" of the total window, in seconds; far beyond any real timestamp


class WindowKind(enum.Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"  # weeks start on Monday (ISO 8601)
    MONTH = "month"
    TOTAL = "total"


# Limits over these windows are rate limits: waiting a little lets the client succeed, so
# refusals carry `retry-after`. Longer windows are budgets: retrying cannot succeed soon.
RATE_WINDOWS = frozenset({WindowKind.MINUTE, WindowKind.HOUR})

ADJECTIVE = {
    WindowKind.MINUTE: "Per-minute",
    WindowKind.HOUR: "Hourly",
    WindowKind.DAY: "Daily",
    WindowKind.WEEK: "Weekly",
    WindowKind.MONTH: "Monthly",
    WindowKind.TOTAL: "Total",
}


@dataclass(frozen=True, slots=True)
class WindowInstance:
    start: int  # Unix seconds, inclusive
    end: int  # Unix seconds, exclusive (NEVER for the total window)


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; raises ValueError with the bad name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name like 'Europe/Berlin')"
        ) from exc


def parse_window(text: str) -> WindowKind:
    try:
        return WindowKind(text)
    except ValueError:
        allowed = ", ".join(k.value for k in WindowKind)
        raise ValueError(f"unknown window {text!r} (one of: {allowed})") from None


def _local_floor(kind: WindowKind, local: datetime) -> datetime:
    # Calendar windows only (day, week, month); minute and hour are fixed-length.
    # fold=0: in a zone whose clocks go back across midnight, the repeated hour still
    # belongs to the same day.
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    if kind is WindowKind.DAY:
        return day
    if kind is WindowKind.WEEK:
        return day - timedelta(days=local.weekday())
    return day.replace(day=1)  # MONTH


def _local_next(kind: WindowKind, start: datetime) -> datetime:
    if kind is WindowKind.DAY:
        return start + timedelta(days=1)
    if kind is WindowKind.WEEK:
        return start + timedelta(days=7)
    if start.month == 12:  # MONTH
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _offset(now: float, tz: str) -> int:
    """The zone's *standard* UTC offset at `now` (DST excluded): hour windows align to it,
    so they tile time even where DST moves clocks by 30 minutes (Australia/Lord_Howe)."""
    local = datetime.fromtimestamp(math.floor(now), zone(tz))
    offset, dst = local.utcoffset(), local.dst()
    return int(((offset or timedelta()) - (dst or timedelta())).total_seconds())


_recent: dict[tuple[WindowKind, str], WindowInstance] = {}


def window_at(kind: WindowKind, now: float, tz: str = "UTC") -> WindowInstance:
    """The window instance of `kind` that contains the instant `now` in timezone `tz`.

    Memoised: the last instance per (kind, zone) answers every instant inside it, so the
    calendar arithmetic runs once per window, not once per request. (The memo changes no
    result: an instance is only reused for instants it contains.)"""
    recent = _recent.get((kind, tz))
    if recent is not None and recent.start <= now < recent.end:
        return recent
    instance = _compute(kind, now, tz)
    if len(_recent) > 4096:  # zones come from admins, but stay bounded anyway
        _recent.clear()
    _recent[(kind, tz)] = instance
    return instance


def _compute(kind: WindowKind, now: float, tz: str) -> WindowInstance:
    if kind is WindowKind.TOTAL:
        return WindowInstance(0, NEVER)
    if kind is WindowKind.MINUTE or kind is WindowKind.HOUR:
        # Fixed-length windows: align to the local clock through the standard UTC offset,
        # so hours stay 60 real minutes across DST changes (and +05:30 zones align on :30).
        size = 60 if kind is WindowKind.MINUTE else 3600
        offset = 0 if tz == "UTC" else _offset(now, tz)
        start = int(now) - (int(now) + offset) % size
        return WindowInstance(start, start + size)
    zi = zone(tz)
    # Whole seconds: boundaries are whole seconds, and fromtimestamp would round
    # 23:59:59.9999995 up into the next day.
    start_local = _local_floor(kind, datetime.fromtimestamp(math.floor(now), zi))
    # Wall-clock arithmetic, then back to an instant: a DST day stays one calendar day
    # (23 or 25 hours). A local midnight that does not exist (DST gap) resolves forward.
    start = int(start_local.replace(tzinfo=zi).timestamp())
    end = int(_local_next(kind, start_local).replace(tzinfo=zi).timestamp())
    return WindowInstance(start, end)


def format_reset(end: int, tz: str = "UTC") -> str:
    """How a reset instant is shown to people: '2026-11-23 00:00 Europe/Berlin'."""
    if end >= NEVER:
        return "never (total limit)"
    return datetime.fromtimestamp(end, zone(tz)).strftime("%Y-%m-%d %H:%M ") + tz


def format_reset_iso(end: int) -> str:
    """A reset instant for machines: ISO 8601 in UTC, or 'never' for total limits."""
    if end >= NEVER:
        return "never"
    return datetime.fromtimestamp(end, zone("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
