"""capgate.deadlines: many things' deadlines watched by one loop timer, on a fake loop
whose clock the test moves (exact times, no waiting), and once on real loops."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import uvloop

from capgate.deadlines import _RESOLUTION, Deadlines

log = logging.getLogger("capgate.test_deadlines")


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback = when, callback
        self.cancelled = self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """What Deadlines uses of an event loop: `time()` and `call_at`; `run_until` moves the
    clock and fires the timers due on the way, in order, as a loop would."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        return [t.when for t in self.timers if not (t.cancelled or t.fired)]

    def run_until(self, end: float) -> None:
        while True:
            due = [t for t in self.timers if not (t.cancelled or t.fired) and t.when <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.now = max(self.now, timer.when)
            timer.fired = True
            timer.callback()
        self.now = end


class Thing:
    """Something watched; `name` for readable failures."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


Seen = list[tuple[Thing, float]]


def watcher(
    due: Callable[[Thing, float], float] | None = None,
    retry: Callable[[Thing, float], float] | None = None,
) -> tuple[Deadlines[Thing], Seen]:
    """Deadlines whose `due` notes each (thing, now), then returns what `due` says (by
    default: done)."""
    seen: Seen = []

    def noted(thing: Thing, now: float) -> float:
        seen.append((thing, now))
        return math.inf if due is None else due(thing, now)

    return Deadlines(noted, log, "handling a test thing failed", retry), seen


def as_loop(loop: FakeLoop) -> asyncio.AbstractEventLoop:
    return cast(asyncio.AbstractEventLoop, loop)


def test_things_come_due_in_the_order_of_their_times() -> None:
    deadlines, seen = watcher()
    loop = FakeLoop()
    a, b, c = Thing("a"), Thing("b"), Thing("c")
    deadlines.add(c, as_loop(loop), 103.0)
    deadlines.add(a, as_loop(loop), 101.0)
    deadlines.add(b, as_loop(loop), 102.0)
    assert loop.pending() == [101.0] and len(deadlines) == 3  # one timer, at the earliest
    loop.run_until(101.5)
    assert [thing for thing, _ in seen] == [a]
    loop.run_until(110.0)
    assert [thing for thing, _ in seen] == [a, b, c]
    assert [now for _, now in seen] == [w + _RESOLUTION for w in (101.0, 102.0, 103.0)]
    assert len(deadlines) == 0 and loop.pending() == []


def test_a_removed_thing_never_comes_due() -> None:
    deadlines, seen = watcher()
    loop = FakeLoop()
    a, b = Thing("a"), Thing("b")
    deadlines.add(a, as_loop(loop), 101.0)
    deadlines.add(b, as_loop(loop), 102.0)
    deadlines.remove(a)
    deadlines.remove(Thing("never added"))  # nothing happens
    assert len(deadlines) == 1
    loop.run_until(110.0)
    assert seen == [(b, 102.0 + _RESOLUTION)]


@pytest.mark.parametrize(("first", "then"), [(105.0, 101.0), (101.0, 105.0)])
def test_adding_a_thing_again_replaces_its_time(first: float, then: float) -> None:
    deadlines, seen = watcher()
    loop = FakeLoop()
    a = Thing("a")
    deadlines.add(a, as_loop(loop), first)
    deadlines.add(a, as_loop(loop), then)
    assert len(deadlines) == 1
    loop.run_until(110.0)
    assert seen == [(a, then + _RESOLUTION)]  # once, at its last time


def test_compaction_keeps_the_current_entries() -> None:
    """Things added again and again leave dead entries behind; the heap is compacted as it
    grows, and every thing still watched comes due once, at its last time."""
    deadlines, seen = watcher()
    loop = FakeLoop()
    things = [Thing(f"t{i}") for i in range(200)]
    for round_ in range(6):
        for i, thing in enumerate(things):
            deadlines.add(thing, as_loop(loop), 200.0 + i + round_ * 0.25)
            assert len(deadlines._heap) <= 2 * len(deadlines) + 65
    for thing in things[::2]:
        deadlines.remove(thing)
    for i in range(300):  # to and fro: the heap is compacted with half of them removed
        deadlines.add(things[1], as_loop(loop), 201.0 + 1.25 + i * 1e-6)
    assert len(deadlines._heap) <= 2 * len(deadlines) + 65
    loop.run_until(1000.0)
    kept = things[1::2]
    assert sorted(seen, key=lambda s: s[1]) == seen
    assert [thing for thing, _ in seen] == kept
    assert [now for _, now in seen[1:]] == [
        200.0 + 2 * i + 1 + 1.25 + _RESOLUTION for i in range(1, 100)
    ]


def test_the_next_time_due_returns_is_kept() -> None:
    """`due` says when to look again; math.inf ends the watch."""
    times = iter([111.0, 121.0, math.inf])
    deadlines, seen = watcher(lambda thing, now: next(times))
    loop = FakeLoop()
    a = Thing("a")
    deadlines.add(a, as_loop(loop), 101.0)
    loop.run_until(115.0)
    assert [now for _, now in seen] == [101.0 + _RESOLUTION, 111.0 + _RESOLUTION]
    assert len(deadlines) == 1 and loop.pending() == [121.0]
    loop.run_until(200.0)
    assert [now for _, now in seen][2:] == [121.0 + _RESOLUTION]
    assert len(deadlines) == 0 and loop.pending() == []


def test_what_due_does_to_its_own_entry_stands_over_what_it_returns() -> None:
    """A thing removed by its own `due` stays removed; one added again by it keeps the
    time it was added at, though `due` says it is done."""
    loop = FakeLoop()
    gone, moved = Thing("gone"), Thing("moved")

    def due(thing: Thing, now: float) -> float:
        if thing is gone:
            deadlines.remove(gone)
        elif len(seen) == 2:
            deadlines.add(moved, as_loop(loop), 150.0)
        return math.inf

    deadlines, seen = watcher(due)
    deadlines.add(gone, as_loop(loop), 101.0)
    deadlines.add(moved, as_loop(loop), 101.0)
    loop.run_until(149.0)
    assert seen == [(gone, 101.0 + _RESOLUTION), (moved, 101.0 + _RESOLUTION)]
    assert len(deadlines) == 1
    loop.run_until(200.0)
    assert seen[2:] == [(moved, 150.0 + _RESOLUTION)]
    assert len(deadlines) == 0


def test_an_add_inside_due_that_compacts_the_heap_loses_nothing() -> None:
    """A `due` whose `add` compacts the heap (many removed entries): the thing it looks at
    again later, and the thing it added, both still come due."""
    loop = FakeLoop()
    again, added = Thing("again"), Thing("added")

    def due(thing: Thing, now: float) -> float:
        if thing is again and len(seen) == 1:
            deadlines.add(added, as_loop(loop), 150.0)  # past 2n + 64 entries: compacts
            return 111.0
        return math.inf

    deadlines, seen = watcher(due)
    deadlines.add(again, as_loop(loop), 101.0)
    removed = [Thing(f"removed{i}") for i in range(100)]
    for thing in removed:
        deadlines.add(thing, as_loop(loop), 300.0)
    for thing in removed:
        deadlines.remove(thing)
    loop.run_until(400.0)
    assert [thing for thing, _ in seen] == [again, again, added]
    assert len(deadlines) == 0


@pytest.mark.parametrize("retry", [None, 10.0], ids=["dropped", "retried"])
def test_a_due_that_raises_is_logged_and_the_others_still_come_due(
    retry: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The error is logged with the message and on the logger given; the others due with it
    and after it are still handled; the thing is dropped, or looked at again at `retry`."""

    def due(thing: Thing, now: float) -> float:
        if thing is broken:
            raise RuntimeError("boom")
        return math.inf

    def again(thing: Thing, now: float) -> float:
        assert retry is not None
        return now + retry

    deadlines, seen = watcher(due, None if retry is None else again)
    loop = FakeLoop()
    broken, together, after = Thing("broken"), Thing("together"), Thing("after")
    deadlines.add(broken, as_loop(loop), 101.0)
    deadlines.add(together, as_loop(loop), 101.0)
    deadlines.add(after, as_loop(loop), 102.0)
    with caplog.at_level(logging.ERROR):
        loop.run_until(200.0)
    handled = [thing for thing, _ in seen]
    assert handled[:3] == [broken, together, after]
    records = [r for r in caplog.records if r.getMessage() == "handling a test thing failed"]
    assert records[0].name == log.name and records[0].exc_info is not None
    if retry is None:
        assert len(handled) == 3 and len(records) == 1
    else:  # raises again each time it is looked at: retried every 10 s
        assert set(handled[3:]) == {broken} and len(handled) == 3 + 9
        assert seen[3][1] == 101.0 + _RESOLUTION + retry + _RESOLUTION  # fired at its time
    assert len(deadlines) == (0 if retry is None else 1)


def test_a_new_loop_drops_the_old_loops_things() -> None:
    deadlines, seen = watcher()
    old, new = FakeLoop(), FakeLoop()
    a, b = Thing("a"), Thing("b")
    deadlines.add(a, as_loop(old), 101.0)
    deadlines.add(b, as_loop(new), 102.0)
    assert len(deadlines) == 1
    assert old.pending() == [] and new.pending() == [102.0]  # the old loop's timer cancelled
    new.run_until(200.0)
    old.run_until(200.0)
    assert seen == [(b, 102.0 + _RESOLUTION)]


@pytest.mark.parametrize("early", [_RESOLUTION, 0.0005], ids=["resolution", "uvloop-ms"])
def test_a_timer_fired_early_still_handles_what_it_was_set_for(early: float) -> None:
    """A loop runs a timer due within its clock's resolution, uvloop up to 0.5 ms early
    (its timers work in ms): the thing the timer was set for is due then, not put back
    (which would re-arm the timer at zero delay until the clock caught up)."""
    deadlines, seen = watcher()
    loop = FakeLoop()
    a, later = Thing("a"), Thing("later")
    deadlines.add(a, as_loop(loop), 101.0)
    deadlines.add(later, as_loop(loop), 101.01)
    (timer,) = loop.timers
    loop.now = 101.0 - early
    timer.fired = True
    timer.callback()
    assert [thing for thing, _ in seen] == [a] and seen[0][1] >= 101.0
    assert loop.pending() == [101.01] and len(deadlines) == 1


def test_what_the_loop_counts_as_due_comes_due_with_the_timer() -> None:
    """A thing due within the clock's resolution of the firing is handled in it."""
    deadlines, seen = watcher()
    loop = FakeLoop()
    a, close, later = Thing("a"), Thing("close"), Thing("later")
    deadlines.add(a, as_loop(loop), 101.0)
    deadlines.add(close, as_loop(loop), 101.0 + _RESOLUTION / 2)
    deadlines.add(later, as_loop(loop), 101.01)
    loop.run_until(101.0)
    assert [thing for thing, _ in seen] == [a, close]
    assert loop.pending() == [101.01]


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_real_loops_one_after_another(new_loop: Callable[[], Any]) -> None:
    """On real loops: things come due on time; a loop closed with a thing still watched
    (its timer pending) leaves nothing behind in the next one."""
    deadlines, seen = watcher()
    stale, fresh = Thing("stale"), Thing("fresh")

    async def first() -> None:
        loop = asyncio.get_running_loop()
        deadlines.add(stale, loop, loop.time() + 60)

    async def second() -> float:
        loop = asyncio.get_running_loop()
        when = loop.time() + 0.02
        deadlines.add(fresh, loop, when)
        assert len(deadlines) == 1
        while not seen:
            await asyncio.sleep(0.005)
        return when

    for main in (first, second):
        loop = new_loop()
        try:
            when = loop.run_until_complete(main())
        finally:
            loop.close()
    assert [thing for thing, _ in seen] == [fresh] and seen[0][1] >= when
    assert len(deadlines) == 0
