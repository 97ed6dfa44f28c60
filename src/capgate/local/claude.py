"""Claude Code transcript lines -> `Entry`s, with ccusage's rules for which lines count:
only lines holding the compact bytes `"usage":{`; a `null` in an identifying field, a bad
`version`, an empty id or model, or no timestamp makes a line not an entry (not an error)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from capgate.local.records import Entry, Skipped

MARKER = b'"usage":{'
_VERSION = re.compile(r"^\d+\.\d+\.\d+")
_NOT_NULL_TOP = ("cwd", "costUSD", "version", "sessionId", "requestId", "isApiErrorMessage")
_NOT_NULL_USAGE = ("speed", "cache_creation_input_tokens", "cache_read_input_tokens")


def parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def entry_from_line(data: Any, project: str, session: str) -> Entry | None:
    """The entry one parsed line makes, or None when the line is not one."""
    if not isinstance(data, dict):
        return None
    message = data.get("message")
    if not isinstance(message, dict):
        return None
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return None
    if any(k in data and data[k] is None for k in _NOT_NULL_TOP):
        return None
    if any(k in usage and usage[k] is None for k in _NOT_NULL_USAGE):
        return None
    if any(k in message and message[k] is None for k in ("id", "model")):
        return None
    version = data.get("version")
    if version is not None and not (isinstance(version, str) and _VERSION.match(version)):
        return None
    if any(k in data and data[k] == "" for k in ("sessionId", "requestId")):
        return None
    if any(k in message and message[k] == "" for k in ("id", "model")):
        return None
    when = parse_timestamp(data.get("timestamp"))
    inp, out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if when is None or inp is None or out is None:
        return None
    write_5m, write_1h = _cache_writes(usage)
    read = _count(usage.get("cache_read_input_tokens", 0)) or 0
    model = message.get("model")
    return Entry(
        agent="claude",
        timestamp=when,
        project=project,
        session=session,
        model=model if isinstance(model, str) else "(unknown)",
        input_tokens=inp,
        output_tokens=out,
        cache_write_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=read,
        message_id=_text(message.get("id")),
        request_id=_text(data.get("requestId")),
        sidechain=data.get("isSidechain") is True,
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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


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
            data = json.loads(raw)
        except ValueError:
            skipped.bad_lines += 1
            continue
        entry = entry_from_line(data, project, session)
        if entry is not None:
            yield entry


def _unparsable(raw: bytes) -> int:
    try:
        json.loads(raw)
    except ValueError:
        return 1
    return 0
