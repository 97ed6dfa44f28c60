"""What is left of a scope's limits, for `budget_left` conditions: a routing hint.

The figures come from the store's own reading of a scope's counters (`counters`: settled
plus reserved, this process's settlements included), kept per scope and read again in the
background once they are older than `refresh_s`; a request uses what is known and never
waits for that. Only the first request of a scope (or of a scope whose limits an admin
changed) waits for one read. So a rule sees a budget as it stood at most `refresh_s`
ago, less what requests admitted since then hold: it may switch a few requests late. That
is all it decides: the limits themselves are checked exactly, by the reservation, as
for any request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from capgate.core.limits import Scope, ScopeKind
from capgate.errors import CapgateError
from capgate.store.records import LimitUsage

log = logging.getLogger(__name__)

REFRESH_S = 2.0
_MAX_SCOPES = 10_000

Read = Callable[[Scope, float], Awaitable[list[LimitUsage]]]


class Known:
    """The budgets one request's rules may read, by scope kind."""

    __slots__ = ("_left",)

    def __init__(self, left: dict[ScopeKind, Sequence[LimitUsage]]) -> None:
        self._left = left

    def left(self, kind: ScopeKind) -> Sequence[LimitUsage] | None:
        return self._left.get(kind)


NOTHING = Known({})


class BudgetView:
    def __init__(
        self, read: Read, clock: Callable[[], float] = time.time, refresh_s: float = REFRESH_S
    ) -> None:
        self._read = read
        self._clock = clock
        self._refresh_s = refresh_s
        # (kind, name) -> (the scope as read, when, its limits)
        self._known: dict[tuple[ScopeKind, str], tuple[Scope, float, list[LimitUsage]]] = {}
        self._reading: dict[tuple[ScopeKind, str], asyncio.Task[list[LimitUsage]]] = {}

    async def of(self, scopes: Iterable[Scope], kinds: frozenset[ScopeKind]) -> Known:
        """The budgets of those of `scopes` (a key and the scopes above it) whose kind
        is in `kinds`."""
        left: dict[ScopeKind, Sequence[LimitUsage]] = {}
        now = self._clock()
        for scope in scopes:
            if scope.kind not in kinds:
                continue
            ident = (scope.kind, scope.name)
            known = self._known.get(ident)
            if known is not None and known[0] is scope:
                if now - known[1] >= self._refresh_s:
                    self._start(scope, ident)  # this request goes on with what is known
                left[scope.kind] = known[2]
                continue
            try:
                left[scope.kind] = await self._start(scope, ident)
            except CapgateError as exc:  # the store is down: no hint, the rule does not hold
                log.warning("budget of %s %s not read: %s", scope.kind.value, scope.name, exc)
        return Known(left)

    def _start(self, scope: Scope, ident: tuple[ScopeKind, str]) -> asyncio.Task[list[LimitUsage]]:
        task = self._reading.get(ident)
        if task is None:
            task = asyncio.ensure_future(self._refresh(scope, ident))
            self._reading[ident] = task
            task.add_done_callback(lambda t: _quiet(t))
        return task

    async def _refresh(self, scope: Scope, ident: tuple[ScopeKind, str]) -> list[LimitUsage]:
        try:
            at = self._clock()
            limits = await self._read(scope, at)
            if len(self._known) >= _MAX_SCOPES:
                self._known.clear()
            self._known[ident] = (scope, at, limits)
            return limits
        finally:
            self._reading.pop(ident, None)


def _quiet(task: asyncio.Task[list[LimitUsage]]) -> None:
    """A background read's failure is logged by whoever awaited it, or dropped."""
    if not task.cancelled():
        task.exception()
