"""Claude Code transcript lines -> `Entry`s, with ccusage's rules for which lines count:
only lines holding the compact bytes `"usage":{`; a `null` in an identifying field, a bad
`version`, an empty id or model, or no timestamp makes a line not an entry (not an error)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec
import orjson

from capgate.local.cache import Row, from_row
from capgate.local.dedup import dedupe_rows
from capgate.local.records import EPOCH, MICROSECOND, Entry, Skipped

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


class Message(msgspec.Struct):
    id: Any = msgspec.UNSET
    model: Any = msgspec.UNSET
    usage: Any = msgspec.UNSET


class Line(msgspec.Struct):
    """The fields of a line that decide whether and what it counts. The others (above all
    the message's `content`, most of a line's bytes) are checked as JSON while decoding,
    but not made into objects. A field the line lacks is `UNSET`, one it has as null None."""

    message: Message | msgspec.UnsetType | None = msgspec.UNSET
    sessionId: Any = msgspec.UNSET  # the line's own field names
    requestId: Any = msgspec.UNSET
    isSidechain: Any = msgspec.UNSET
    version: Any = msgspec.UNSET
    timestamp: Any = msgspec.UNSET
    cwd: Any = msgspec.UNSET
    costUSD: Any = msgspec.UNSET
    isApiErrorMessage: Any = msgspec.UNSET


_DECODE = msgspec.json.Decoder(Line).decode
UNSET = msgspec.UNSET


def read(raw: bytes, skipped: Skipped) -> Line | None:
    """A line's fields; None when it is JSON of another shape (not an entry) or not JSON
    (then counted in `skipped`)."""
    try:
        return _DECODE(raw)
    except msgspec.ValidationError:  # another shape: orjson says whether it is JSON at all
        skipped.bad_lines += _unparsable(raw)
    except msgspec.DecodeError:
        skipped.bad_lines += 1
    return None


def row_of(line: Line, project: str, session: str) -> tuple[Row, bool] | None:
    """The line's row (`cache.to_row`), or None when it is not an entry; and whether its
    cache counts are whole numbers (a float or bool reads as 0: only then does a copy
    equal to this usage, `7.0 == 7`, count at most its tokens). Straight-line code: this
    runs once per answer of every file."""
    message = line.message
    if message is None or message is UNSET:
        return None
    usage = message.usage
    if type(usage) is not dict:
        return None
    uget = usage.get
    if (
        line.cwd is None or line.costUSD is None or line.version is None
        or line.isApiErrorMessage is None or uget("speed", 0) is None
        or uget("cache_creation_input_tokens", 0) is None
        or uget("cache_read_input_tokens", 0) is None
    ):  # fmt: skip
        return None
    session_id, request_id, mid, model = line.sessionId, line.requestId, message.id, message.model
    if (
        mid is None or model is None or session_id is None or request_id is None
        or session_id == "" or request_id == "" or mid == "" or model == ""
    ):  # fmt: skip
        return None
    version = line.version
    if version is not UNSET and not (type(version) is str and _good_version(version)):
        return None
    when = parse_timestamp(line.timestamp)
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
        line.isSidechain is True, "speed" in usage,
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
        line = read(raw, skipped)
        found = None if line is None else row_of(line, project, session)
        if found is not None:
            yield from_row(found[0])


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
    not looked at further. When no two rows left share a message id, there is nothing
    for `dedupe` to do."""
    rows: list[Row] = []
    firsts: dict[tuple[str, str | None], tuple[Any, bool]] = {}  # ids -> (usage, sidechain)
    ids: set[str] = set()  # the message ids of `rows`
    shared = False
    for raw in lines:
        if (not marked or raw[-1:] != b"\n") and MARKER not in raw:
            if not raw.endswith(b"\n") and raw.strip():
                skipped.bad_lines += _unparsable(raw)
            continue
        line = read(raw, skipped)
        if line is None:
            continue
        message = line.message
        if message is not None and message is not UNSET and type(mid := message.id) is str:
            rid = line.requestId
            first = firsts.get((mid, rid if type(rid) is str else None))
            if first is not None and first == (message.usage, line.isSidechain is True):
                continue
        found = row_of(line, project, session)
        if found is None:
            continue
        row, whole = found
        rows.append(row)
        if row[11] is None:
            continue
        if row[11] in ids:
            shared = True
        else:
            ids.add(row[11])
        if whole and (row[11], row[12]) not in firsts:
            assert isinstance(message, Message)  # row_of made a row of it
            firsts[row[11], row[12]] = (message.usage, row[13])
    return dedupe_rows(rows) if shared else rows
