"""What each session file held, kept between runs: a file whose size and modification
time are unchanged is not read again. One JSON file (plain data) under
`$XDG_CACHE_HOME/capgate/` (default `~/.cache/capgate/`), written whole and renamed into
place; a missing, stale or damaged cache is just rebuilt."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from capgate.local.records import Entry

VERSION = 1
Row = tuple[Any, ...]


def default_path(env: Mapping[str, str], home: Path) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "capgate" / f"local-v{VERSION}.json"


def to_row(e: Entry) -> Row:
    return (e.agent, e.micros, e.project, e.session, e.model, e.input_tokens, e.output_tokens,
            e.cache_write_tokens, e.cache_write_1h_tokens, e.cache_read_tokens,
            e.reasoning_tokens, e.message_id, e.request_id, e.sidechain, e.has_speed)  # fmt: skip


ROW_FIELDS = 15  # `to_row`'s


def from_row(r: Row) -> Entry:
    if len(r) != ROW_FIELDS or type(r[1]) is not int:  # damaged: the file is read again
        raise ValueError(f"not a cache row: {r!r}")
    return Entry(*r)


class FileCache:
    """Per file: (size, mtime_ns, bad lines, entries)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._old: dict[str, tuple[int, int, int, list[Row]]] = {}
        self._new: dict[str, tuple[int, int, int, list[Row]]] = {}
        self._changed = False
        if path is not None:
            self._old = _load(path)

    def get(self, file: str, size: int, mtime_ns: int) -> tuple[list[Entry], int] | None:
        found = self._old.get(file)
        if found is None or found[0] != size or found[1] != mtime_ns:
            return None
        try:
            entries = [from_row(r) for r in found[3]]
        except (TypeError, IndexError, ValueError, OverflowError):
            return None  # damaged: read the file again
        self._new[file] = found
        return entries, found[2]

    def put_rows(self, file: str, size: int, mtime_ns: int, rows: list[Row], bad: int) -> None:
        """Keep what `file` held: its entries as `to_row` rows, and its bad lines."""
        if self.path is None:
            return
        self._new[file] = (size, mtime_ns, bad, rows)
        self._changed = True

    def save(self) -> None:
        """Write what this run saw (files gone since are dropped); never fatal."""
        if self.path is None or not (self._changed or self._new.keys() != self._old.keys()):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temp.write_bytes(orjson.dumps([VERSION, self._new]))
            os.replace(temp, self.path)
        except OSError:
            pass  # a read-only cache dir only costs speed


def _load(path: Path) -> dict[str, tuple[int, int, int, list[Row]]]:
    try:
        version, files = orjson.loads(path.read_bytes())
    except (OSError, ValueError, TypeError):
        return {}
    return files if version == VERSION and isinstance(files, dict) else {}
