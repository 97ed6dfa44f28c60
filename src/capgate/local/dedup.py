"""Claude Code writes one line per content block, each with the message's usage, and
replays messages into subagent and /btw sidechains: an answer is counted once. Key:
(message id, request id); lines without a message id are never merged. A sidechain copy
under another request id is a duplicate too. The copy kept: a main-chain one over a
sidechain one, then the one with more tokens, then one that carries `speed`."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b as _blake2b
from operator import itemgetter
from typing import Any, TypeVar

from capgate.local.records import Entry

T = TypeVar("T")
Rank = tuple[bool, int, bool]  # (main chain, tokens, has speed): the greatest copy is kept


def _rank(entry: Entry) -> Rank:
    return (not entry.sidechain, entry.total_tokens, entry.has_speed)


def row_rank(r: tuple[Any, ...]) -> Rank:
    """`_rank` of a cache row (`cache.to_row`'s layout)."""
    return (not r[13], r[5] + r[6] + r[7] + r[8] + r[9], r[14])


def dedupe(entries: Iterable[Entry]) -> list[Entry]:
    """The entries, each answer once, in first-seen order (pure; order-independent in
    which copies survive)."""
    return _kept(entries, lambda e: (e.message_id, e.request_id), _rank)


def dedupe_rows(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`dedupe` of cache rows (`cache.to_row`): the rows of the entries it keeps."""
    return _kept(rows, itemgetter(11, 12), row_rank)


def _kept(
    items: Iterable[T],
    ids: Callable[[T], tuple[str | None, str | None]],
    rank: Callable[[T], Rank],
) -> list[T]:
    kept: list[T | None] = []
    slots: dict[tuple[str | None, str | None], int] = {}  # (message id, request id) -> index
    firsts: dict[str, int] = {}  # message id -> the index of its first request's copy
    shared: dict[str, list[int]] = {}  # message ids under several request ids -> indexes
    for item in items:
        key = ids(item)
        message = key[0]
        if message is None:
            kept.append(item)
            continue
        slot = slots.get(key)
        if slot is not None:
            old = kept[slot]
            if old is not None and rank(item) > rank(old):
                kept[slot] = item
            continue
        index = slots[key] = len(kept)
        kept.append(item)
        first = firsts.setdefault(message, index)
        if first != index:
            shared.setdefault(message, [first]).append(index)
    for indexes in shared.values():
        _drop_sidechain_replays(kept, rank, indexes)
    return [e for e in kept if e is not None]


def _drop_sidechain_replays(
    kept: list[T | None], rank: Callable[[T], Rank], indexes: list[int]
) -> None:
    """One message id under several request ids: the sidechain copies are replays. Keep
    every main-chain copy; if all are sidechain copies, keep the best one."""
    ranks = {i: rank(item) for i in indexes if (item := kept[i]) is not None}
    main = [i for i in indexes if ranks[i][0]]
    side = [i for i in indexes if not ranks[i][0]]
    survivors = set(main)
    if not main and side:
        survivors.add(max(side, key=ranks.__getitem__))
    for i in side:
        if i not in survivors:
            kept[i] = None


class Undecided(Exception):
    """`Deduper` met a copy that outranks one it has already given out: only the whole
    `dedupe` can say which copies count (the caller runs it instead)."""


class Deduper:
    """`dedupe` as a stream, in memory that does not hold the entries: each entry is given
    out as it comes, or dropped as a copy of one given out before. What is kept per answer
    is one 32-byte record in a bytearray (no Python object per answer): its message id's
    128-bit BLAKE2b digest, its request id's 64-bit one and its rank. Two message ids
    share a digest with odds of about n²/2¹²⁹ (10⁻²⁷ for a million answers), two request
    ids of one message about 2⁻⁶⁴: the result is exact but for those odds. The copies
    `dedupe` keeps, in the stream's order. When a later copy outranks one already
    given out (a sidechain replay read before its main-chain copy, a copy with more
    tokens in a later file), it raises `Undecided`: rare, and then `dedupe` decides."""

    BUCKETS = 4096  # records are searched in the bucket of their digest: a few KB each

    def __init__(self) -> None:
        self._buckets = [bytearray() for _ in range(self.BUCKETS)]

    def __call__(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        buckets, digest, pack, unpack = self._buckets, _blake2b, _RECORD.pack, _RECORD.unpack_from
        for entry in entries:
            mid = entry.message_id
            if mid is None:
                yield entry
                continue
            key = digest(mid.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            rid = entry.request_id
            rid_key = 0 if rid is None else _rid(rid)
            main = not entry.sidechain
            tokens = entry.total_tokens
            if not 0 <= tokens < MAX_TOKENS:
                raise Undecided(mid)
            rank = main << 63 | tokens << 1 | entry.has_speed  # `_rank`'s order, as one int
            bucket = buckets[key[0] << 4 | key[1] >> 4]
            at = bucket.find(key)
            if at < 0:  # the first copy of this answer
                bucket += pack(key, rid_key, rank)
                yield entry
                continue
            same: int | None = None  # the rank of this request id's copy
            any_main, best_side = False, -1
            while at >= 0:
                if at % RECORD_SIZE == 0:
                    _, other_rid, other = unpack(bucket, at)
                    if other_rid == rid_key:
                        same = other
                    if other >> 63:
                        any_main = True
                    elif other > best_side:
                        best_side = other
                at = bucket.find(key, at + 1)
            if same is not None:  # a copy of a request's answer already seen
                if rank > same:
                    raise Undecided(mid)
                continue
            if main and any_main:  # another request of a main-chain answer: counted too
                bucket += pack(key, rid_key, rank)
                yield entry
            elif main or (not any_main and rank > best_side):  # a given-out copy would lose
                raise Undecided(mid)
            # else a sidechain replay of an answer counted already: dropped


RECORD_SIZE = 32
MAX_TOKENS = 2**62
_RECORD = struct.Struct("<16sQQ")  # message id digest, request id digest, rank


def _rid(rid: str) -> int:
    return int.from_bytes(
        _blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )
