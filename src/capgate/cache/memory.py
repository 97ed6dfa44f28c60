"""The answers kept, in memory, per process: least recently used first out when the
bytes held pass the bound, and gone once their time is up. Everything runs on the event
loop: no locks."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from capgate.core.money import Usage

_OVERHEAD = 256  # bytes an entry costs beyond its body (key, record, dict slot)


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """A successful answer as its client was sent it: the whole body, or the stream's
    events (in the client's dialect, after any translation), and what it cost."""

    status: int
    content_type: str
    body: bytes  # the whole answer, or every event of the stream in order
    stream: bool
    usage: Usage
    cost_nano: int
    model: str | None  # the model that answered
    expires_at: float  # on the store's clock

    @property
    def size(self) -> int:
        return len(self.body) + _OVERHEAD


class AnswerStore:
    """At most `max_bytes` of answers, by key; LRU eviction, TTL expiry."""

    def __init__(
        self,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        dropped: Callable[[bytes], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self._dropped = dropped  # told each key that leaves (the similarity index)
        self._entries: OrderedDict[bytes, KeptAnswer] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> KeptAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: KeptAnswer) -> bool:
        """Keep `entry` (replacing one under the same key); False when it alone is larger
        than a quarter of the bound (it would push out too much)."""
        size = entry.size
        if size * 4 > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        return True

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size
        if self._dropped is not None:
            self._dropped(key)
