"""Budget windows: which stretch of time a counter covers.

A limit counts usage inside one *window instance*, named by its start instant (a Unix
timestamp in whole seconds). Calendar windows (minute .. month) start at the boundary in
the scope's timezone, so "day" in Europe/Berlin resets at Berlin midnight and a DST day is
23 or 25 hours long. ``total`` never resets. Pure: no clock is read here; callers pass `now`.

Rolling windows (``rolling-24h``, ``rolling-5m``, ``rolling-7d``) count the usage of the
last N: usage is kept in buckets of N/60 (at least one second) aligned to the epoch, and a
reservation at instant t counts every bucket that overlaps [t - N, t]. The oldest of those
may lie partly outside the last N, so a rolling limit counts at most one bucket (1/60 of
its span) more than the exact sliding sum, never less: it can refuse a little early,
never admit too much, and there is no boundary to game.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class Rolling:
    """The last `span` seconds, counted in buckets of `bucket` seconds."""

    span: int
    value: str  # as written: "rolling-24h"
    bucket: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket", max(1, self.span // 60))


Window = WindowKind | Rolling

_ROLLING = re.compile(r"^rolling-([1-9][0-9]{0,5})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_NAME = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_MAX_SPAN = 400 * 86400

# Limits over these windows are rate limits: waiting a little lets the client succeed, so
# refusals carry `retry-after`. Longer windows are budgets: retrying cannot succeed soon.
RATE_WINDOWS = frozenset({WindowKind.MINUTE, WindowKind.HOUR})


def is_rate_window(window: Window) -> bool:
    if isinstance(window, Rolling):
        return window.span <= 3600
    return window in RATE_WINDOWS


def adjective(window: Window) -> str:
    if isinstance(window, Rolling):
        match = _ROLLING.match(window.value)
        assert match is not None
        count, unit = int(match.group(1)), _UNIT_NAME[match.group(2)]
        return f"Rolling {count}-{unit}"
    return ADJECTIVE[window]


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
    start: int  # Unix seconds, inclusive: where usage is charged
    end: int  # Unix seconds, exclusive (NEVER for the total window)
    # Rolling windows: the first bucket counted (usage is summed from there to `start`),
    # and when that bucket leaves the window, freeing what it held.
    read_from: int | None = None
    frees_at: int | None = None

    @property
    def resets_at(self) -> int:
        return self.end if self.frees_at is None else self.frees_at


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; raises ValueError with the bad name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name like 'Europe/Berlin')"
        ) from exc


def parse_window(text: str) -> Window:
    match = _ROLLING.match(text)
    if match is not None:
        span = int(match.group(1)) * _UNIT[match.group(2)]
        if span > _MAX_SPAN:
            raise ValueError(f"window {text!r} is longer than 400 days")
        return Rolling(span, text)
    try:
        return WindowKind(text)
    except ValueError:
        allowed = ", ".join(k.value for k in WindowKind)
        raise ValueError(
            f"unknown window {text!r} (one of: {allowed}, or rolling-<N><s|m|h|d>)"
        ) from None


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


_recent: dict[tuple[Window, str], WindowInstance] = {}


def window_at(kind: Window, now: float, tz: str = "UTC") -> WindowInstance:
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


def _compute(kind: Window, now: float, tz: str) -> WindowInstance:
    if isinstance(kind, Rolling):
        bucket = kind.bucket
        start = math.floor(now) // bucket * bucket
        # Whole buckets back from the current one, enough to cover [now - span, now]: the
        # same for every instant of the bucket.
        read_from = start - -(-kind.span // bucket) * bucket
        return WindowInstance(start, start + bucket, read_from, read_from + kind.span + bucket)
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


@lru_cache(maxsize=256)  # a handful of window ends, on every answer's headers
def format_reset_iso(end: int) -> str:
    """A reset instant for machines: ISO 8601 in UTC, or 'never' for total limits."""
    if end >= NEVER:
        return "never"
    return datetime.fromtimestamp(end, zone("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
