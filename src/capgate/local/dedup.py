"""Claude Code writes one line per content block, each with the message's usage, and
replays messages into subagent and /btw sidechains: an answer is counted once. Key:
(message id, request id); lines without a message id are never merged. A sidechain copy
under another request id is a duplicate too. The copy kept: a main-chain one over a
sidechain one, then the one with more tokens, then one that carries `speed`."""

from __future__ import annotations

from collections.abc import Iterable

from capgate.local.records import Entry


def _rank(entry: Entry) -> tuple[bool, int, bool]:
    return (not entry.sidechain, entry.total_tokens, entry.has_speed)


def dedupe(entries: Iterable[Entry]) -> list[Entry]:
    """The entries, each answer once, in first-seen order (pure; order-independent in
    which copies survive)."""
    kept: list[Entry | None] = []
    slots: dict[tuple[str, str | None], int] = {}  # (message id, request id) -> index in kept
    by_message: dict[str, list[int]] = {}
    for entry in entries:
        if entry.message_id is None:
            kept.append(entry)
            continue
        key = (entry.message_id, entry.request_id)
        slot = slots.get(key)
        if slot is not None:
            old = kept[slot]
            if old is not None and _rank(entry) > _rank(old):
                kept[slot] = entry
            continue
        slots[key] = len(kept)
        by_message.setdefault(entry.message_id, []).append(len(kept))
        kept.append(entry)
    for indexes in by_message.values():
        if len(indexes) > 1:
            _drop_sidechain_replays(kept, indexes)
    return [e for e in kept if e is not None]


def _drop_sidechain_replays(kept: list[Entry | None], indexes: list[int]) -> None:
    """One message id under several request ids: the sidechain copies are replays. Keep
    every main-chain copy; if all are sidechain copies, keep the best one."""
    copies = [(i, kept[i]) for i in indexes]
    main = [i for i, e in copies if e is not None and not e.sidechain]
    side = [(i, e) for i, e in copies if e is not None and e.sidechain]
    survivors = set(main)
    if not main and side:
        best = max(side, key=lambda pair: _rank(pair[1]))
        survivors.add(best[0])
    for i, _ in side:
        if i not in survivors:
            kept[i] = None
