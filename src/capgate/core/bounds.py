"""The range of every number an outside caller may hand capgate, in one place.

The store keeps integers in 64-bit signed columns (SQLite INTEGER, PostgreSQL BIGINT) and
times as Unix seconds that Python's datetime must be able to show: a value outside these
ranges is refused where it comes in (a 400 naming the field), never met by the store or
the clock as an overflow (a 500)."""

from __future__ import annotations

import math

from capgate.core.money import MAX_AMOUNT

MAX_INT = 2**63 - 1  # the largest id, cursor or count a column holds
MIN_TIME = 0.0  # 1970-01-01T00:00:00Z
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime shows
__all__ = ["MAX_AMOUNT", "MAX_INT", "MAX_TIME", "MIN_TIME", "check_time", "check_whole"]


def check_whole(number: int, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """`number`, or ValueError saying the range it must be in."""
    if not minimum <= number <= maximum:
        raise ValueError(f"must be between {minimum} and {maximum}")
    return number


def check_time(seconds: float) -> float:
    """Unix seconds between 1970 and the end of year 9999, or ValueError."""
    if not math.isfinite(seconds) or not MIN_TIME <= seconds <= MAX_TIME:
        raise ValueError(f"{seconds!r} is out of range (a time between 1970-01-01 and 9999-12-31)")
    return seconds
