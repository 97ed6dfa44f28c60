"""Codex rollout lines -> `Entry`s. Usage is in `event_msg` lines of type `token_count`:
`last_token_usage` when present, else the growth of the cumulative `total_token_usage`.
The model is the latest `turn_context`'s (else `gpt-5`, as ccusage assumes); the project is
the session's working directory (`session_meta.cwd`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from capgate.local.cache import Row, from_row
from capgate.local.claude import parse_timestamp
from capgate.local.records import EPOCH, MICROSECOND, Entry, Skipped

FALLBACK_MODEL = "gpt-5"
_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens")
SPAWN_WINDOW = 20  # a subagent file says so (`thread_spawn`) in one of its first lines
# The start of a line of conversation (`response_item`: messages, tool calls and their
# output, reasoning; most of a file's bytes) as Codex writes it: its type is known without
# reading the rest, and such a line holds nothing to count.
CONVERSATION = re.compile(rb'\{"timestamp":"[^"\\]*","type":"response_item",')


@dataclass(slots=True)
class _State:
    session: str
    project: str = ""
    model: str | None = None
    previous: dict[str, int] = field(default_factory=dict)
    replay_second: str | None = None  # a subagent's replayed parent history: skipped
    replaying: bool = False


def parse_lines(lines: Iterable[bytes], session: str, skipped: Skipped) -> Iterator[Entry]:
    return (from_row(r) for r in parse_rows(lines, session, skipped))


def parse_rows(lines: Iterable[bytes], session: str, skipped: Skipped) -> Iterator[Row]:
    """The entries of one file's lines, as cache rows (`cache.to_row`): only the lines
    holding `token_count`, `turn_context` or `session_meta` (and an unterminated last
    line) are parsed."""
    state = _State(session=session)
    loads = orjson.loads
    for number, raw in enumerate(lines):
        if number < SPAWN_WINDOW and b"thread_spawn" in raw:
            state.replaying = True
        if (
            b"token_count" not in raw
            and b"turn_context" not in raw
            and b"session_meta" not in raw
            and raw[-1:] == b"\n"
        ):
            continue  # a line of conversation: nothing to count in it
        try:
            data = loads(raw)
        except orjson.JSONDecodeError:
            skipped.bad_lines += 1
            continue
        if type(data) is not dict:
            skipped.bad_lines += 1
            continue
        usage = _read(data, state)
        if usage:
            row = _row(data.get("timestamp"), usage, state)
            if row is not None:
                yield row


def _read(data: dict[str, Any], state: _State) -> dict[str, int] | None:
    """Track session facts; the usage of a token_count event (None for other lines)."""
    payload = data.get("payload")
    if not isinstance(payload, dict):
        return None
    kind = data.get("type")
    if kind == "session_meta":
        cwd = payload.get("cwd")
        state.project = cwd if isinstance(cwd, str) else state.project
        return None
    if kind == "turn_context":
        model = payload.get("model")
        if isinstance(model, str) and model:
            state.model = model
        return None
    if kind != "event_msg" or payload.get("type") != "token_count":
        return None
    info = payload.get("info")
    if not isinstance(info, dict):
        return None
    total, last = _usage(info.get("total_token_usage")), _usage(info.get("last_token_usage"))
    if state.replaying:  # the parent's replayed turns share one second: a baseline only
        second = str(data.get("timestamp", ""))[:19]
        if state.replay_second is None or state.replay_second == second:
            state.replay_second = second
            state.previous = total or state.previous
            return None
        state.replaying = False
    if last is None and total is not None:
        last = {k: max(0, total[k] - state.previous.get(k, 0)) for k in _FIELDS}
    if total is not None:
        state.previous = total
    return last


def _usage(value: Any) -> dict[str, int] | None:
    if type(value) is not dict:  # parsed JSON: plain dicts, ints and bools
        return None
    get = value.get
    return {key: count if type(count := get(key, 0)) is int else 0 for key in _FIELDS}


def _row(stamp: Any, usage: dict[str, int], state: _State) -> Row | None:
    """The entry of one token_count event; None when it has no time or no tokens."""
    when = parse_timestamp(stamp)
    if when is None or not any(usage.values()):
        return None
    cached = min(usage["cached_input_tokens"], usage["input_tokens"])
    return (
        "codex", (when - EPOCH) // MICROSECOND, state.project, state.session,
        state.model or FALLBACK_MODEL, usage["input_tokens"] - cached, usage["output_tokens"],
        0, 0, cached, usage["reasoning_output_tokens"], None, None, False, False,
    )  # fmt: skip
