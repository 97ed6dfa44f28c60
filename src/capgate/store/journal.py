"""The settlement journal: no answered request is lost while the store cannot be written.

A settlement is appended here (one `os.write` to a file opened with O_APPEND) before it is
queued on the store, so before the answer's last bytes reach the client. It stays in
memory too, and the store retries it until it commits; then its line is forgotten. The
file is cut back to nothing when no settlement is waiting and it holds more than
`TRUNCATE_BYTES` (an `ftruncate` costs 3-4 times the write, so not after every one: a
replay skips lines already settled); when it grows past `rotate_bytes` with some still
waiting, a new file is started and the old one deleted once its last settlement
committed.

One file per process: `<database>-settlements/<owner>[.<n>].jsonl`. When a process dies
with lines left, the next process that finds its file and its liveness lock free replays
them (see `SQLiteStore`): a settlement whose reservation row is gone was already settled,
so replaying twice changes nothing.

Durability: the write reaches the kernel, not the disk (no fsync): it survives the
process dying (`kill -9`, a crash, the OOM killer), not a power cut or an operating-system
crash - the same promise SQLite gives with `synchronous=NORMAL`. An fsync per settlement
would cost a disk flush per request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from capgate.core.engine import Amounts, Charge
from capgate.core.limits import Metric, Scope, ScopeKind
from capgate.core.money import Usage
from capgate.store.base import Outcome, RequestInfo, Reservation

log = logging.getLogger(__name__)

ROTATE_BYTES = 16 * 1024 * 1024
TRUNCATE_BYTES = 64 * 1024


def journal_dir(database: str) -> Path:
    return Path(database + "-settlements")


class Journal:
    """This process's journal file. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        directory: Path,
        owner: str,
        rotate_bytes: int = ROTATE_BYTES,
        truncate_bytes: int = TRUNCATE_BYTES,
    ) -> None:
        self.directory = directory
        self.owner = owner
        self._rotate_bytes = rotate_bytes
        self._truncate_bytes = truncate_bytes
        self._fd = -1
        self._generation = 0
        self._size = 0  # bytes in the current file
        self._torn = False  # the last write was cut short
        self._waiting: dict[int, int] = {}  # generation -> settlements not yet committed

    def open(self) -> None:
        self.directory.mkdir(exist_ok=True)
        self._fd = self._create(0)

    def _path(self, generation: int) -> Path:
        suffix = f".{generation}" if generation else ""
        return self.directory / f"{self.owner}{suffix}.jsonl"

    def _create(self, generation: int) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC
        fd = os.open(self._path(generation), flags, 0o600)
        self._generation, self._size = generation, 0
        return fd

    @property
    def waiting(self) -> int:
        return sum(self._waiting.values())

    def append(self, reservation: Reservation, outcome: Outcome) -> int | None:
        """Write the settlement's line; returns the token to give `done` once it committed,
        or None when the line could not be written (a full disk: the settlement is still
        kept in memory and retried, but would not survive the process dying)."""
        line = encode(reservation, outcome)
        if self._torn:  # the last write was cut short: end that line first
            line = b"\n" + line
        generation = self._generation
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            log.error("settlement %s not journaled: %s", reservation.id, exc)
            return None
        self._size += written
        self._torn = written != len(line)
        if self._torn:
            log.error("settlement %s not journaled: short write (disk full?)", reservation.id)
            return None
        self._waiting[generation] = self._waiting.get(generation, 0) + 1
        if self._size >= self._rotate_bytes:
            self._rotate()
        return generation

    def _rotate(self) -> None:
        old = self._fd
        try:
            self._fd = self._create(self._generation + 1)
        except OSError as exc:  # keep writing to the old file
            log.error("settlement journal not rotated: %s", exc)
            return
        os.close(old)

    def done(self, generation: int | None) -> None:
        if generation is None:
            return
        left = self._waiting[generation] - 1
        if left:
            self._waiting[generation] = left
            return
        del self._waiting[generation]
        if self._fd < 0:  # closed: a write that landed during shutdown
            return
        if generation != self._generation:
            self._path(generation).unlink(missing_ok=True)
        elif self._size >= self._truncate_bytes:
            os.ftruncate(self._fd, 0)  # nothing waits: start the file over
            self._size = 0

    def close(self) -> None:
        """Close the file; delete it unless settlements still wait (the next start
        replays those)."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        if not self._waiting.get(self._generation):
            self._path(self._generation).unlink(missing_ok=True)
        if self._waiting:
            log.warning(
                "%d settlements not written to the database stay in %s; the next start "
                "replays them",
                self.waiting,
                self.directory,
            )


def owners(directory: Path) -> dict[str, list[Path]]:
    """The journal files in `directory`, by the process that wrote them."""
    found: dict[str, list[Path]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.jsonl")):
        found.setdefault(path.name.split(".", 1)[0], []).append(path)
    return found


def read(path: Path) -> Iterator[tuple[Reservation, Outcome]]:
    """The settlements in a journal file. A line cut short (the process died writing it)
    is skipped: its answer had not been sent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # another process replayed and deleted it
        return
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield decode(line)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("%s line %d is not a settlement (%s): skipped", path, number, exc)


# -- the line format -------------------------------------------------------------------


def encode(res: Reservation, outcome: Outcome) -> bytes:
    # Every line, on the request path: no dict splats, and `_value_` (an Enum member's plain
    # attribute; `.value` is a property, several times slower).
    info, key, usage, worst = res.info, res.key, outcome.usage, res.worst
    fields = [
        info.request_id, info.key_id, info.model, info.provider, info.upstream_model,
        info.endpoint, info.stream, info.started_at, info.refusal_status,
    ]  # fmt: skip
    if info.session is not None or info.rule is not None:
        fields += (info.session, info.prompt)
        if info.rule is not None:
            fields.append(info.rule)
    record: dict[str, Any] = {
        "id": res.id,
        "info": fields,
        "key": [key.id, key.name, key.extra.get("user"), key.extra.get("team")],
        "charges": [[c.counter, c.window_start, c.metric._value_, c.amount] for c in res.charges],
        "worst": [worst.requests, worst.input_tokens, worst.output_tokens, worst.cost_nano,
                  worst.credits],
        "max_output": res.max_output,
        "fail_open": res.fail_open,
        "outcome": [
            outcome.status, outcome.outcome, outcome.cost_nano, outcome.latency_ms,
            outcome.ttft_ms, outcome.attempts, outcome.error, outcome.upstream_model,
            outcome.flags,
        ],
    }  # fmt: skip
    if outcome.requests != 1:
        record["requests"] = outcome.requests
    if outcome.cache is not None:
        record["cache"] = [outcome.cache, outcome.saved_nano]
    record["usage"] = None if usage is None else [
        usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
        usage.cache_write_tokens, usage.cache_write_1h_tokens,
    ]  # fmt: skip
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> tuple[Reservation, Outcome]:
    d = orjson.loads(line)
    key_id, key_name, user, team = d["key"]
    extra = {k: v for k, v in (("user", user), ("team", team)) if v is not None}
    key = Scope(ScopeKind.KEY, key_id, key_name, extra=extra)
    charges = tuple(Charge(c, int(w), Metric(m), int(a)) for c, w, m, a in d["charges"])
    res = Reservation(
        d["id"], RequestInfo(*d["info"]), charges, Amounts(*d["worst"]), key, d["max_output"],
        fail_open=bool(d.get("fail_open", False)),
    )  # fmt: skip
    status, outcome, cost, latency, ttft, attempts, error, model, flags = d["outcome"]
    usage = None if d["usage"] is None else Usage(*d["usage"])
    cache, saved = d.get("cache") or (None, 0)  # lines written before session 11 have none
    return res, Outcome(
        status,
        outcome,
        usage,
        cost,
        latency,
        ttft,
        attempts,
        error,
        model,
        tuple(flags),
        int(d.get("requests", 1)),
        cache,
        int(saved),
    )
