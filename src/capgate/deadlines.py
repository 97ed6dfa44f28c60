"""Deadlines of many things in flight watched by one event-loop timer, set at the earliest
of them: a thing adds and removes an entry, where a timer of its own would be made and
cancelled each time (the call path's first-byte deadlines, an upstream pool's read and
request timeouts: per request, so this is on the hot path).

The times are a heap, so a firing looks only at the entries due, not at every entry:
deadlines that come due one after another cost O(n log n) in all. A removed entry stays in
the heap, skipped when it comes up (a dict holds each thing's current entry), until the
heap is compacted (it grows past twice the things watched, plus 64).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# How early a timer may fire: what the loop counts as due is `time() + resolution`.
_RESOLUTION = time.get_clock_info("monotonic").resolution


class Deadlines(Generic[T]):
    """Things watched until a time each. When a thing's time comes, `due(thing, now)` is
    called and returns when to call it again, or `math.inf` when done with it (its entry
    is then dropped). A `due` that raises is logged on `log` with the message `failed`; the
    others due are still handled, and the thing is called again at `retry(thing, now)`
    (without `retry`, its entry is dropped).

    The entry stays current while `due` runs: what `due` does to it (`remove`, or `add` at
    a time later than `now`) stands over what `due` returns. Only an `Exception` from
    `due` is handled; anything else goes on up with the thing's entry left as it is. Things are watched in one loop at a
    time: an `add` in another loop (tests, tools; the old one closed) drops the old loop's
    things and its timer."""

    def __init__(
        self,
        due: Callable[[T, float], float],
        log: logging.Logger,
        failed: str,
        retry: Callable[[T, float], float] | None = None,
    ) -> None:
        self._due = due
        self._log = log
        self._failed = failed
        self._retry = retry
        self._current: dict[T, int] = {}  # thing -> the number of its current heap entry
        self._heap: list[tuple[float, int, T]] = []  # (when, number, thing)
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def __len__(self) -> int:
        """How many things are watched."""
        return len(self._current)

    def add(self, thing: T, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Watch `thing` until `when` (`loop.time()`'s clock), instead of any time it had."""
        current, heap = self._current, self._heap
        if loop is not self._loop:  # another loop (tests, tools): the old one's are gone
            current.clear()
            heap.clear()
            self._set(loop, when)
        elif when < self._at:
            self._set(loop, when)
        self._seq = seq = self._seq + 1
        current[thing] = seq
        if len(heap) > 2 * len(current) + 64:
            heap = self._compact()
        heapq.heappush(heap, (when, seq, thing))

    def remove(self, thing: T) -> None:
        """Stop watching `thing` (nothing happens if it is not watched)."""
        self._current.pop(thing, None)

    def _compact(self) -> list[tuple[float, int, T]]:
        # A method of its own: a comprehension inside `add` would make `current` a closure
        # cell there, which costs every add ~8 % (measured).
        # In place: a `_fire` under way (a `due` that adds) holds this very list.
        current, heap = self._current, self._heap
        heap[:] = [entry for entry in heap if current.get(entry[2]) == entry[1]]
        heapq.heapify(heap)
        return heap

    def _set(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._at = when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        """The timer: each thing due is handled, and put back at its next time; then the
        timer is set for the earliest left."""
        loop, at = self._loop, self._at
        assert loop is not None
        self._timer, self._at = None, math.inf
        # Due: what the loop counts as due now, and whatever it judged due in firing this
        # timer (uvloop's timers work in ms and may fire up to 0.5 ms early).
        now = max(loop.time() + _RESOLUTION, at)
        heap, current = self._heap, self._current
        again: list[tuple[float, int, T]] = []  # pushed back at the end: one look per firing
        try:
            while heap:
                when, seq, thing = heap[0]
                if current.get(thing) != seq:  # removed, or added again since
                    heapq.heappop(heap)
                    continue
                if when > now:
                    break
                heapq.heappop(heap)
                try:
                    nxt = self._due(thing, now)
                except Exception:  # noqa: BLE001 - logged; the others are still handled
                    self._log.exception(self._failed)
                    nxt = math.inf if self._retry is None else self._retry(thing, now)
                if current.get(thing) == seq:  # `due` did not remove it nor add it again
                    if nxt < math.inf:
                        again.append((nxt, seq, thing))
                    else:
                        del current[thing]
        finally:
            for entry in again:
                heapq.heappush(heap, entry)
            if heap and heap[0][0] < self._at:
                self._set(loop, heap[0][0])
