"""Bodies with a key twice among the fields capgate reads. Pure.

orjson keeps the last of two equal keys; an upstream parser may keep the first. A body
with `"max_tokens": 100000` and then `"max_tokens": 10` would be priced and reserved for
10 tokens and run for 100,000. Such a body is refused. A byte count over the raw body
finds the candidates cheaply (a key's quoted name cannot appear in a JSON string
unescaped); only those are parsed a second time with every object's pairs kept.
"""

from __future__ import annotations

import json
from typing import Any

# What capgate reads to price, bound and route a request: top-level fields, and the
# fields inside the objects it reads to bound (checked when their parent is there).
TOP_LEVEL = (
    "model",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "stream_options",
    "n",
    "messages",
    "input",
    "system",
    "tools",
    "thinking",
    "max_tool_calls",
    "previous_response_id",
    "conversation",
    "prompt",
    "mcp_servers",
    "web_search_options",
)
NESTED = {"stream_options": "include_usage", "thinking": "budget_tokens", "tools": "max_uses"}
_NEEDLES = {name: f'"{name}"'.encode() for name in (*TOP_LEVEL, *NESTED.values())}
_WATCHED = frozenset(_NEEDLES)


class _Duplicate(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen and name in _WATCHED:
            raise _Duplicate(name)
        seen.add(name)
    return dict(pairs)


def duplicate_key(raw: bytes, body: Any) -> str | None:
    """The first watched key that an object of `raw` holds twice, or None. `body` is
    `raw` as parsed (the last of equal keys kept): only the watched names it has can
    be there twice, so only those are counted."""
    if not isinstance(body, dict):
        return None
    names = [n for n in TOP_LEVEL if n in body]
    names += [NESTED[n] for n in NESTED if n in body]
    if not any(raw.count(_NEEDLES[name]) > 1 for name in names):
        return None
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _Duplicate as dup:
        return dup.name
    except ValueError:  # orjson read it; the stdlib may differ at the edges (lone surrogates)
        return None
    return None
