"""What each session file held, kept between runs: a file whose size and modification
time are unchanged is not read again. One file under `$XDG_CACHE_HOME/capgate/` (default
`~/.cache/capgate/`): a header line, then a blob per session file (its bad lines and rows,
JSON), then an index (file -> size, mtime, where its blob is; JSON) and the index's offset
(8 bytes). A run reads one file's blob at a time (`pread`: no file pages held), and the
new cache is written as the files go, blobs of unchanged files copied over. Written beside
and renamed into place; a missing, stale or damaged cache is just rebuilt."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from capgate.local.records import Entry

VERSION = 2
HEADER = b"capgate local cache v2\n"
_TAIL = struct.Struct("<Q")
Row = tuple[Any, ...]
Meta = tuple[int, int, int, int]  # size, mtime_ns, blob offset, blob length


def default_path(env: Mapping[str, str], home: Path) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "capgate" / f"local-v{VERSION}.bin"


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
    """Per file: (size, mtime_ns) and its blob: [bad lines, rows]."""

    def __init__(self, path: Path | None):
        self.path = path
        self._old: dict[str, Meta] = {}
        self._fd: int | None = None
        self._new: dict[str, Meta] = {}
        self._pending: list[tuple[str, Meta]] = []  # unchanged files, before a write began
        self._out: IO[bytes] | None = None
        if path is not None:
            self._fd, self._old = _open(path)

    def has(self, file: str, size: int, mtime_ns: int) -> bool:
        found = self._old.get(file)
        return found is not None and found[0] == size and found[1] == mtime_ns

    def get(self, file: str, size: int, mtime_ns: int) -> tuple[list[Entry], int] | None:
        """The entries and bad lines of an unchanged file; None when it must be read."""
        if not self.has(file, size, mtime_ns) or self._fd is None:
            return None
        meta = self._old[file]
        try:
            bad, rows = orjson.loads(os.pread(self._fd, meta[3], meta[2]))
            entries = [from_row(r) for r in rows]
            if type(bad) is not int:
                raise ValueError(bad)
        except (TypeError, IndexError, ValueError, OverflowError):
            return None  # damaged: read the file again
        if self._out is None:
            self._pending.append((file, meta))
        else:
            self._copy(file, meta)
        return entries, bad

    def put_rows(self, file: str, size: int, mtime_ns: int, rows: list[Row], bad: int) -> None:
        """Keep what `file` held: its entries as `to_row` rows, and its bad lines."""
        if self.path is None:
            return
        out = self._start()
        if out is None:
            return
        blob = orjson.dumps([bad, rows])
        try:
            self._new[file] = (size, mtime_ns, out.tell(), len(blob))
            out.write(blob)
        except OSError:
            self._fail()

    def save(self) -> None:
        """Write what this run saw (files gone since are dropped); never fatal."""
        if self.path is None:
            return
        if self._out is None and {f for f, _ in self._pending} == self._old.keys():
            self.close()
            return  # nothing changed
        out = self._start()
        if out is None:
            return
        try:
            at = out.tell()
            out.write(orjson.dumps(self._new))
            out.write(_TAIL.pack(at))
            out.close()
            os.replace(out.name, self.path)
            with contextlib.suppress(OSError):  # the previous format's file, now stale
                os.unlink(self.path.with_name("local-v1.json"))
        except OSError:
            self._fail()
        self._out = None
        self.close()

    def close(self) -> None:
        """Let go of the old cache and drop a new one not saved."""
        if self._out is not None:
            self._fail()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _start(self) -> IO[bytes] | None:
        """The new cache being written, begun with the unchanged files seen so far."""
        if self._out is None and self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                self._out = open(temp, "wb")  # noqa: SIM115 (closed by save / close)
                self._out.write(HEADER)
            except OSError:
                self.path = None  # a read-only cache dir only costs speed
                return None
            for file, meta in self._pending:
                self._copy(file, meta)
            self._pending = []
        return self._out

    def _copy(self, file: str, meta: Meta) -> None:
        out, fd = self._out, self._fd
        if out is None or fd is None:
            return
        try:
            self._new[file] = (meta[0], meta[1], out.tell(), meta[3])
            out.write(os.pread(fd, meta[3], meta[2]))
        except OSError:
            self._fail()

    def _fail(self) -> None:
        out, self._out, self.path = self._out, None, None
        if out is not None:
            try:
                out.close()
                os.unlink(out.name)
            except OSError:
                pass


def _open(path: Path) -> tuple[int | None, dict[str, Meta]]:
    """The cache file (open) and its index; (None, {}) when missing or damaged."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, {}
    try:
        size = os.fstat(fd).st_size
        if size < len(HEADER) + _TAIL.size or os.pread(fd, len(HEADER), 0) != HEADER:
            raise ValueError("not a cache")
        (at,) = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
        index = orjson.loads(os.pread(fd, size - _TAIL.size - at, at))
        if not isinstance(index, dict):
            raise ValueError("not a cache")
        files: dict[str, Meta] = {}
        for file, meta in index.items():
            if len(meta) != 4 or not all(type(v) is int for v in meta):
                raise ValueError("not a cache")
            if not len(HEADER) <= meta[2] <= meta[2] + meta[3] <= at:
                raise ValueError("not a cache")
            files[file] = (meta[0], meta[1], meta[2], meta[3])
    except (OSError, ValueError, TypeError, OverflowError, struct.error):
        os.close(fd)
        return None, {}
    return fd, files
