"""What both dialects share when reading usage from a whole (non-streamed) answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from capgate.core.money import Usage

# No answer holds more tokens than this (context windows are ~10**6): a larger count is
# a broken provider, and would overflow the store's 64-bit amounts once priced.
MAX_REPORTED = 2**32


def tokens(value: Any, required: bool = True) -> int | None:
    """A token count from untrusted JSON, or None when it cannot be read: a whole number
    from 0 to MAX_REPORTED (an integral float like 10.0 reads as 10); missing (or null)
    reads as 0 unless `required`. Strings, booleans, negatives and fractions: None."""
    if value is None:
        return None if required else 0
    if isinstance(value, float):
        if not value.is_integer():  # also inf and nan
            return None
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REPORTED:
        return None
    return value


def count(value: Any) -> int:
    """A token count from untrusted JSON: a positive int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def answer_usage(
    body: bytes, usage_of: Callable[[Any], Usage | None]
) -> tuple[Usage | None, str | None]:
    """Usage and model of a non-streamed answer (None where the answer has none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    model = data.get("model")
    return usage_of(data.get("usage")), model if isinstance(model, str) else None
