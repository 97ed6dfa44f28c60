"""Claude Code transcript lines -> `Entry`s, with ccusage's rules for which lines count:
only lines holding the compact bytes `"usage":{`; a `null` in an identifying field, a bad
`version`, an empty id or model, or no timestamp makes a line not an entry (not an error)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from capgate.local.records import Entry, Skipped

MARKER = b'"usage":{'
_VERSION = re.compile(r"^\d+\.\d+\.\d+")


def parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is UTC:
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def entry_from_line(data: Any, project: str, session: str) -> Entry | None:
    """The entry one parsed line makes, or None when the line is not one. (Straight-line
    code: this runs once per answer line of every file.)"""
    if type(data) is not dict:
        return None
    message = data.get("message")
    if type(message) is not dict:
        return None
    usage = message.get("usage")
    if type(usage) is not dict:
        return None
    get, mget, uget = data.get, message.get, usage.get
    if None in (
        get("cwd", 0), get("costUSD", 0), get("version", 0), get("isApiErrorMessage", 0),
        uget("speed", 0), uget("cache_creation_input_tokens", 0),
        uget("cache_read_input_tokens", 0), mget("id", 0), mget("model", 0),
    ):  # fmt: skip
        return None
    session_id, request_id = get("sessionId", 0), get("requestId", 0)
    mid, model = mget("id", 0), mget("model", 0)
    if "" in (session_id, request_id, mid, model) or None in (session_id, request_id):
        return None
    version = get("version")
    if version is not None and not (type(version) is str and _VERSION.match(version)):
        return None
    when = parse_timestamp(get("timestamp"))
    inp, out = _count(uget("input_tokens")), _count(uget("output_tokens"))
    if when is None or inp is None or out is None:
        return None
    write_5m, write_1h = _cache_writes(usage)
    return Entry(
        agent="claude",
        timestamp=when,
        project=project,
        session=session,
        model=model if type(model) is str else "(unknown)",
        input_tokens=inp,
        output_tokens=out,
        cache_write_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=_count(uget("cache_read_input_tokens", 0)) or 0,
        message_id=mid if type(mid) is str else None,
        request_id=request_id if type(request_id) is str else None,
        sidechain=get("isSidechain") is True,
        has_speed="speed" in usage,
    )


def _cache_writes(usage: dict[str, Any]) -> tuple[int, int]:
    """(5-minute, 1-hour) cache writes: the `cache_creation` split when the line has it."""
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        return (
            _count(split.get("ephemeral_5m_input_tokens", 0)) or 0,
            _count(split.get("ephemeral_1h_input_tokens", 0)) or 0,
        )
    return _count(usage.get("cache_creation_input_tokens", 0)) or 0, 0


def parse_lines(
    lines: Iterable[bytes], project: str, session: str, skipped: Skipped
) -> Iterable[Entry]:
    """Entries of one file's lines; a line with the marker that is not JSON (bad, or
    half-written at the end of a file being written) is counted in `skipped`."""
    for raw in lines:
        if MARKER not in raw:
            if not raw.endswith(b"\n") and raw.strip():
                skipped.bad_lines += _unparsable(raw)  # the last line, maybe half-written
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            skipped.bad_lines += 1
            continue
        entry = entry_from_line(data, project, session)
        if entry is not None:
            yield entry


def _unparsable(raw: bytes) -> int:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 1
    return 0
