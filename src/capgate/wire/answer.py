"""What both dialects share when reading usage from a whole (non-streamed) answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from capgate.core.money import Usage


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
