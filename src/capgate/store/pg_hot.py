"""The arguments of `capgate_reserve` (see pg_schema) from the engine's decision, and the
counter states a node last saw, to plan with.

The engine decides in Python, exactly as for SQLite (counters_for, plan_reserve with the
clamp, tightest); the database only guards that decision against what the other nodes
did meanwhile: it checks each limit again under the counters' row locks. So a node plans
on the states it saw last (`SeenStates`), usually still true: one round trip. When they
were not, the function answers with the fresh ones and the node plans again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capgate.core.engine import Amounts, Applicable, Charge, CounterDelta, CounterState

Instance = tuple[str, int]  # (counter, window_start)

MAX_SEEN = 50_000  # counter instances remembered; past this, start over


@dataclass(frozen=True, slots=True)
class Checks:
    """One entry per applicable limit: the instance (and the rolling sum's first bucket),
    the amount the request adds, the limit's max."""

    counter: list[str]
    start: list[int]
    read_from: list[int | None]
    amount: list[int]
    max: list[int]

    @classmethod
    def of(cls, applicable: Sequence[Applicable], worst: Amounts) -> Checks:
        return cls(
            [a.counter for a in applicable],
            [a.window.start for a in applicable],
            [a.window.read_from for a in applicable],
            [worst.of(a.limit.metric) for a in applicable],
            [a.limit.max for a in applicable],
        )

    def args(self) -> tuple[Any, ...]:
        return self.counter, self.start, self.read_from, self.amount, self.max

    def states(
        self, settled: Sequence[int], reserved: Sequence[int]
    ) -> dict[Instance, CounterState]:
        return {
            (c, s): CounterState(settled[i], reserved[i])
            for i, (c, s) in enumerate(zip(self.counter, self.start, strict=True))
        }


def charge_args(charges: Sequence[Charge]) -> tuple[list[str], list[int], list[int]]:
    return (
        [c.counter for c in charges],
        [c.window_start for c in charges],
        [c.amount for c in charges],
    )


class SeenStates:
    """The counter states this node last saw (a hint to plan with; never trusted to admit:
    the database checks again)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[Instance, CounterState] = {}

    def get(self, applicable: Sequence[Applicable]) -> dict[Instance, CounterState]:
        seen = self._seen
        zero = _ZERO
        return {
            (a.counter, a.window.start): seen.get((a.counter, a.window.start), zero)
            for a in applicable
        }

    def update(self, states: dict[Instance, CounterState]) -> None:
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        self._seen.update(states)

    def charged(self, states: dict[Instance, CounterState], charges: Sequence[Charge]) -> None:
        """After an admission: the states seen, plus this node's own charges."""
        out = dict(states)
        for c in charges:
            state = out.get((c.counter, c.window_start), _ZERO)
            out[(c.counter, c.window_start)] = CounterState(
                state.settled, state.reserved + c.amount
            )
        self.update(out)

    def settled(self, deltas: Sequence[CounterDelta]) -> None:
        """After a settlement: move the instances known by its deltas."""
        seen = self._seen
        for d in deltas:
            state = seen.get((d.counter, d.window_start))
            if state is not None:
                seen[(d.counter, d.window_start)] = CounterState(
                    state.settled + d.settled, state.reserved + d.reserved
                )

    def forget(self) -> None:
        self._seen.clear()


_ZERO = CounterState()
