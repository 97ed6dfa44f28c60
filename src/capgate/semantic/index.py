"""The semantic index: cached questions' vectors, per owner, model and context.

Vectors are rows of one float32 matrix per partition; a lookup is one matrix-vector
product over that partition, on one thread (10,000 vectors of 256 floats: ~0.4 ms;
bench/semantic.py). Entries of other owners are never compared: they live in other
matrices. Memory is bounded by `max_entries` in total across partitions (each entry: 1 KiB
of vector, at most 4 KiB with a matrix's spare rows, and ~1.3 KiB of id and guard
signature); past it the least recently used entry goes. An entry older than `ttl`
seconds is never returned and is dropped when met. Pure: no I/O, no clock of its own,
not thread-safe (the caller serialises; see service.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from capgate.semantic.guard import Signature, same_content

Vector = npt.NDArray[np.float32]
Partition = tuple[str, str, str]  # owner, model, context

THRESHOLD = 0.75  # measured on tests/data/semantic_pairs.tsv: docs/semantic-cache.md
CANDIDATES = 8  # nearest entries above the threshold given to the guard


@dataclass(slots=True)
class _Rows:
    vectors: npt.NDArray[np.float32]
    ids: list[str] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)  # id -> row


@dataclass(frozen=True, slots=True)
class _Entry:
    partition: Partition
    created: float
    signature: Signature


class SemanticIndex:
    def __init__(
        self,
        dim: int,
        *,
        max_entries: int = 10_000,
        ttl: float = 3600.0,
        threshold: float = THRESHOLD,
    ) -> None:
        if max_entries < 1 or ttl <= 0 or not 0 < threshold <= 1:
            raise ValueError("max_entries >= 1, ttl > 0 and 0 < threshold <= 1 are needed")
        self.dim = dim
        self.max_entries = max_entries
        self.ttl = ttl
        self.threshold = threshold
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest use first
        self._rows: dict[Partition, _Rows] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        partition: Partition,
        entry_id: str,
        vector: Vector,
        signature: Signature,
        now: float,
    ) -> None:
        """Index `entry_id` (replacing an entry of that id), evicting the least recently
        used entries past `max_entries`."""
        self.remove(entry_id)
        rows = self._rows.get(partition)
        if rows is None:
            rows = self._rows[partition] = _Rows(np.empty((4, self.dim), dtype=np.float32))
        n = len(rows.ids)
        if n == rows.vectors.shape[0]:
            grown = np.empty((n * 2, self.dim), dtype=np.float32)
            grown[:n] = rows.vectors
            rows.vectors = grown
        rows.vectors[n] = vector
        rows.ids.append(entry_id)
        rows.where[entry_id] = n
        self._entries[entry_id] = _Entry(partition, now, signature)
        while len(self._entries) > self.max_entries:
            self.remove(next(iter(self._entries)))

    def lookup(
        self, partition: Partition, vector: Vector, signature: Signature, now: float
    ) -> tuple[str, float] | None:
        """The most similar live entry at or above the threshold whose content words
        match, with its cosine similarity."""
        rows = self._rows.get(partition)
        if rows is None:
            return None
        # einsum, not `@`: `@` hands a matrix-vector product to BLAS, whose threads made a
        # 10,000-row lookup take 6-10 ms instead of 0.3 ms on a busy 2-core machine.
        scores = np.einsum("ij,j->i", rows.vectors[: len(rows.ids)], vector)
        above = np.flatnonzero(scores >= self.threshold)
        if above.size > CANDIDATES:
            above = above[np.argpartition(-scores[above], CANDIDATES)[:CANDIDATES]]
        expired = []
        found = None
        for row in above[np.argsort(-scores[above], kind="stable")]:
            entry_id = rows.ids[row]
            entry = self._entries[entry_id]
            if now - entry.created >= self.ttl:
                expired.append(entry_id)
            elif same_content(entry.signature, signature):
                self._entries.move_to_end(entry_id)
                found = (entry_id, float(scores[row]))
                break
        for entry_id in expired:
            self.remove(entry_id)
        return found

    def remove(self, entry_id: str) -> bool:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return False
        rows = self._rows[entry.partition]
        row = rows.where.pop(entry_id)
        last = len(rows.ids) - 1
        if row != last:  # the last row fills the hole
            rows.vectors[row] = rows.vectors[last]
            rows.ids[row] = rows.ids[last]
            rows.where[rows.ids[row]] = row
        rows.ids.pop()
        if not rows.ids:
            del self._rows[entry.partition]
        elif len(rows.ids) <= rows.vectors.shape[0] // 4:  # spare rows stay under 4x
            rows.vectors = rows.vectors[: rows.vectors.shape[0] // 2].copy()
        return True

    def expire(self, now: float) -> int:
        """Drop every entry older than the TTL; how many went."""
        old = [i for i, e in self._entries.items() if now - e.created >= self.ttl]
        for entry_id in old:
            self.remove(entry_id)
        return len(old)
