"""Claude Code transcript lines -> `Entry`s, with ccusage's rules for which lines count:
only lines holding the compact bytes `"usage":{`; a `null` in an identifying field, a bad
`version`, an empty id or model, or no timestamp makes a line not an entry (not an error)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from capgate.local.cache import EPOCH, MICROSECOND, Row, from_row
from capgate.local.dedup import dedupe_rows
from capgate.local.records import Entry, Skipped

MARKER = b'"usage":{'
_VERSION = re.compile(r"^\d+\.\d+\.\d+")


@lru_cache(maxsize=64)  # a machine's files hold a few versions, each on many lines
def _good_version(version: str) -> bool:
    return _VERSION.match(version) is not None


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


def entry_from_line(data: Any, project: str, session: str) -> Entry | None:
    """The entry one parsed line makes, or None when the line is not one."""
    row = row_from_line(data, project, session)
    return None if row is None else from_row(row)


def row_from_line(data: Any, project: str, session: str) -> Row | None:
    """`entry_from_line` as a cache row (`cache.to_row`), or None."""
    found = _row(data, project, session)
    return None if found is None else found[0]


def _row(data: Any, project: str, session: str) -> tuple[Row, bool] | None:
    """The line's row, and whether its cache counts are whole numbers (a float or bool
    reads as 0: only then does a copy equal to this usage, `7.0 == 7`, count at most its
    tokens). Straight-line code: this runs once per answer of every file."""
    if type(data) is not dict:
        return None
    message = data.get("message")
    if type(message) is not dict:
        return None
    usage = message.get("usage")
    if type(usage) is not dict:
        return None
    get, mget, uget = data.get, message.get, usage.get
    if (
        get("cwd", 0) is None or get("costUSD", 0) is None or get("version", 0) is None
        or get("isApiErrorMessage", 0) is None or uget("speed", 0) is None
        or uget("cache_creation_input_tokens", 0) is None
        or uget("cache_read_input_tokens", 0) is None
    ):  # fmt: skip
        return None
    session_id, request_id = get("sessionId", 0), get("requestId", 0)
    mid, model = mget("id", 0), mget("model", 0)
    if (
        mid is None or model is None or session_id is None or request_id is None
        or session_id == "" or request_id == "" or mid == "" or model == ""
    ):  # fmt: skip
        return None
    version = get("version")
    if version is not None and not (type(version) is str and _good_version(version)):
        return None
    when = parse_timestamp(get("timestamp"))
    inp, out = uget("input_tokens"), uget("output_tokens")
    if when is None or type(inp) is not int or inp < 0 or type(out) is not int or out < 0:
        return None
    split = uget("cache_creation")
    if type(split) is dict:  # the 5-minute and 1-hour writes apart
        write = split.get("ephemeral_5m_input_tokens", 0)
        write_1h = split.get("ephemeral_1h_input_tokens", 0)
    else:
        write, write_1h = uget("cache_creation_input_tokens", 0), 0
    read = uget("cache_read_input_tokens", 0)
    whole = type(write) is int and type(write_1h) is int and type(read) is int
    return (
        "claude", (when - EPOCH) // MICROSECOND, project, session,
        model if type(model) is str else "(unknown)", inp, out,
        write if type(write) is int and write > 0 else 0,
        write_1h if type(write_1h) is int and write_1h > 0 else 0,
        read if type(read) is int and read > 0 else 0, 0,
        mid if type(mid) is str else None, request_id if type(request_id) is str else None,
        get("isSidechain") is True, "speed" in usage,
    ), whole  # fmt: skip


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


def parse_rows(
    lines: Iterable[bytes], project: str, session: str, skipped: Skipped, marked: bool = False
) -> list[Row]:
    """`dedupe(parse_lines(...))` as cache rows: the same rows, with less work per line.
    `marked`: every line that ends in a newline holds `MARKER` (the caller found them by
    it), so only an unterminated one is searched for it again.
    Most answer lines repeat an earlier line's answer (a line per content block, all with
    the answer's usage): a line under the ids of an earlier entry of this file, with the
    same usage and chain as that entry's, cannot outrank it (`dedupe` would drop it) and is
    not looked at further."""
    rows: list[Row] = []
    firsts: dict[tuple[str, str | None], tuple[Any, bool]] = {}  # ids -> (usage, sidechain)
    loads = orjson.loads
    for raw in lines:
        if (not marked or raw[-1:] != b"\n") and MARKER not in raw:
            if not raw.endswith(b"\n") and raw.strip():
                skipped.bad_lines += _unparsable(raw)
            continue
        try:
            data = loads(raw)
        except orjson.JSONDecodeError:
            skipped.bad_lines += 1
            continue
        if type(data) is dict and type(message := data.get("message")) is dict:
            mid, rid = message.get("id"), data.get("requestId")
            if type(mid) is str:
                key = (mid, rid if type(rid) is str else None)
                first = firsts.get(key)
                if first is not None and first == (message.get("usage"), data.get("isSidechain") is True):  # fmt: skip
                    continue
        found = _row(data, project, session)
        if found is None:
            continue
        row, whole = found
        rows.append(row)
        if whole and row[11] is not None and (row[11], row[12]) not in firsts:
            firsts[row[11], row[12]] = (data["message"]["usage"], row[13])
    return dedupe_rows(rows)
