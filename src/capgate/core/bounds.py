"""The range of every number an outside caller may hand capgate, in one place.

The store keeps integers in 64-bit signed columns (SQLite INTEGER, PostgreSQL BIGINT) and
times as Unix seconds that Python's datetime must be able to show: a value outside these
ranges is refused where it comes in (a 400 naming the field), never met by the store or
the clock as an overflow (a 500)."""

from __future__ import annotations

import math
import re

from capgate.core.money import MAX_AMOUNT

MAX_INT = 2**63 - 1  # the largest id, cursor or count a column holds
MIN_TIME = 0.0  # 1970-01-01T00:00:00Z
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime shows
# Names of keys, users, teams, orgs and providers: they appear in URL paths, logs, CSV,
# metric labels and shell commands, so none needs quoting or escaping anywhere.
# (`<user>@<host>` of hook machines fits.) Names made before this rule may hold other
# characters: every route still reaches them, percent-encoded.
NAME_CHARS = "A-Za-z0-9._@-"
MAX_NAME = 128
_NAME = re.compile(f"[{NAME_CHARS}]{{1,{MAX_NAME}}}")
__all__ = [
    "MAX_AMOUNT", "MAX_INT", "MAX_NAME", "MAX_TIME", "MIN_TIME", "NAME_CHARS", "check_name",
    "check_time", "check_whole",
]  # fmt: skip


def check_name(name: str) -> str:
    """A new scope's name, or ValueError saying the alphabet."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"names are 1 to {MAX_NAME} letters, digits and . _ @ - (no spaces, slashes or braces)"
        )
    return name


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
