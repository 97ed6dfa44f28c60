"""Bodies with a key twice among the fields capgate reads. Pure.

orjson keeps the last of two equal keys; an upstream parser may keep the first. A body
with `"max_tokens": 100000` and then `"max_tokens": 10` would be priced and reserved for
10 tokens and run for 100,000. Such a body is refused. One pass of a regular expression
over the raw body finds the candidates (a key's quoted name cannot appear in a JSON
string unescaped); only those are parsed a second time with every object's pairs kept.
One pass, not a `bytes.count` per watched name: a 90 kB Claude Code body took ~300 µs
with the counts (~35 µs per name present), ~100 µs with the pass.
"""

from __future__ import annotations

import json
import re
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
_TOP = frozenset(TOP_LEVEL)
_WATCHED = _TOP | frozenset(NESTED.values())
# Every watched name in quotes, longest first; a match ends at its closing quote, so
# `"stream"` never matches inside `"stream_options"`.
_QUOTED = re.compile(
    b'"(' + b"|".join(n.encode() for n in sorted(_WATCHED, key=len, reverse=True)) + b')"'
)


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
    if not _twice(raw, body):
        return None
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _Duplicate as dup:
        return dup.name
    except ValueError:  # orjson read it; the stdlib may differ at the edges (lone surrogates)
        return None
    return None


def _twice(raw: bytes, body: dict[str, Any]) -> bool:
    """Whether a name capgate reads in `body` is quoted twice or more in `raw`, or may be
    spelled with an escape (`"max\\u005ftokens"` is `max_tokens` to every parser, and
    invisible to the pass): then the body is a candidate, parsed again."""
    if b"\\u" in raw:  # only `\u` can spell a letter or `_`; rare outside non-ASCII text
        return True
    seen: set[bytes] = set()
    for name in _QUOTED.findall(raw):
        if name in seen and _read_in(name.decode(), body):
            return True
        seen.add(name)
    return False


def _read_in(name: str, body: dict[str, Any]) -> bool:
    """Whether capgate reads `name` in `body`: a top-level field it has, or a nested
    field under a parent it has."""
    if name in _TOP:
        return name in body
    return any(name == nested and parent in body for parent, nested in NESTED.items())
