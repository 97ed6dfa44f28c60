"""Claude Code writes one line per content block, each with the message's usage, and
replays messages into subagent and /btw sidechains: an answer is counted once. Key:
(message id, request id); lines without a message id are never merged. A sidechain copy
under another request id is a duplicate too. The copy kept: a main-chain one over a
sidechain one, then the one with more tokens, then one that carries `speed`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
