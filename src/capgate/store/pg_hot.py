"""Reserve and rereserve on PostgreSQL (`PgReserve`, mixed into PostgresStore): the
arguments of `capgate_reserve` (see pg_schema) from the engine's decision, and the
counter states a node last saw, to plan with.

The engine decides in Python, exactly as for SQLite (counters_for, plan_reserve with the
clamp, tightest); the database only guards that decision against what the other nodes
did meanwhile: it checks each limit again under the counters' row locks. So a node plans
on the states it saw last (`SeenStates`), usually still true: one round trip. When they
were not, the function answers with the fresh ones and the node plans again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from capgate.core.engine import (
    Amounts,
    Applicable,
    Charge,
    CounterDelta,
    CountersFor,
    CounterState,
    OutputFlex,
    Refusal,
    check_access,
    plan_reserve,
    plan_settle,
    tightest,
)
from capgate.core.limits import Scope
from capgate.errors import StoreUnavailable
from capgate.store import pg_settlement as settlement
from capgate.store import sqlite_queries as q
from capgate.store.base import RequestInfo, Reservation
from capgate.store.pg_batch import Batcher, ReserveItem
from capgate.store.settling import SETTLE_RETRY_MAX_S

Instance = tuple[str, int]  # (counter, window_start)

MAX_SEEN = 50_000  # counter instances remembered; past this, start over
MAX_PLANS = 10  # plans of one reservation against changing counters before giving up
# A plan refused as stale means another process changed the configuration (a key
# created, a limit edited): progress, not a race lost on counters, so it does not use up
# MAX_PLANS; a bulk change on another node only delays the reservation, up to this long.
STALE_PLANS_S = 10.0

_RESERVE = (
    "SELECT status, settled, reserved FROM capgate_reserve("
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
_RERESERVE = (
    "SELECT status, settled, reserved FROM capgate_reserve("
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
)
_STATES = (
    "SELECT s.settled, s.reserved, (SELECT v FROM meta WHERE k = 'plan_version') "
    "FROM capgate_states($1, $2, $3) s"
)

T = TypeVar("T")


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


class PgReserve:
    """Reserve and rereserve, mixed into PostgresStore, which provides these."""

    owner: str
    _clock: Callable[[], float]
    _version: str
    _seen: SeenStates
    _closing: bool
    _giving_up: set[asyncio.Task[None]]
    _scopes_of: Callable[[Scope, str], list[Scope]]
    _counters_for: CountersFor
    _keys: dict[str, tuple[Scope, bytes]]
    _batcher: Batcher

    async def _run(
        self,
        op: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        transaction: bool = True,
        **options: Any,
    ) -> T:
        raise NotImplementedError

    async def _reload(self) -> None:
        raise NotImplementedError

    async def refresh(self) -> None:
        raise NotImplementedError

    async def reserve(
        self,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None = None,
        extra_scopes: tuple[Scope, ...] = (),
        record_refusal: bool = True,
    ) -> Reservation | Refusal:
        return await self._reserve(info, worst, flex, extra_scopes, record_refusal, None)

    async def rereserve(
        self, old: Reservation, info: RequestInfo, worst: Amounts, flex: OutputFlex | None = None
    ) -> Reservation | Refusal:
        """Release `old` and reserve `worst` for `info` in one transaction. Refused:
        nothing changes, the old one stays."""
        return await self._reserve(info, worst, flex, (), False, old)

    async def _reserve(
        self,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
        extra_scopes: tuple[Scope, ...],
        record_refusal: bool,
        old: Reservation | None,
    ) -> Reservation | Refusal:
        # A refusal must be true: one planned on the cached configuration is given only
        # once that configuration was seen current (`verified`), one planned on the
        # cached counter states only once they were read afresh (`fresh`, read together
        # with the configuration's version).
        fresh: dict[tuple[str, int], CounterState] | None = None
        verified = False
        plans = 0
        stale_until = time.monotonic() + STALE_PLANS_S
        while plans < MAX_PLANS:
            plans += 1
            now = self._clock()
            entry = self._keys.get(info.key_id)
            key = entry[0] if entry is not None else None
            if key is None:  # deleted since the caller authenticated
                refusal: Refusal | None = Refusal(
                    "revoked", "This key has been deleted.", "key", info.key_id
                )
            else:
                scopes = (*self._scopes_of(key, info.provider), *extra_scopes)
                models = (info.model, info.upstream_model)
                refusal = check_access(scopes, models, now)
            if refusal is not None:
                if verified:
                    return await self._refused(info, key, refusal, now, record_refusal)
                await self.refresh()
                verified = True
                continue
            assert key is not None
            applicable = self._counters_for(scopes, models, now)
            states = fresh if fresh is not None else self._seen.get(applicable)
            if old is not None:
                states = _released(states, applicable, old)
            clamp = flex if all(scope.clamp for scope in scopes) else None
            decision = plan_reserve(applicable, states, worst, clamp)
            if isinstance(decision, Refusal):
                if fresh is not None:  # planned on what the database just said: true
                    return await self._refused(info, key, decision, now, record_refusal)
                fresh = await self._fresh_states(Checks.of(applicable, worst))
                verified = fresh is not None
                if fresh is None and time.monotonic() < stale_until:
                    plans -= 1  # the configuration moved: as a stale answer
                continue
            held = worst
            if decision.max_output is not None and flex is not None:
                held = flex.amounts(decision.max_output)
            checks = Checks.of(applicable, held)
            charges_text = q.dump_charges(decision.charges)
            args = (
                self._version, info.request_id, self.owner, now, charges_text,
                q.dump_info(info, key, held, decision.max_output), *checks.args(),
                *charge_args(decision.charges),
            )  # fmt: skip
            if old is not None:
                args = (*args, old.id, *charge_args(old.charges))
            status, settled, reserved = await self._call_reserve(
                args, info.request_id, charges_text
            )
            settled, reserved = settled or [], reserved or []
            if status == "stale":
                await self._reload()
                fresh, verified = None, True
                if time.monotonic() < stale_until:
                    plans -= 1
                continue
            if status == "gone":
                return Refusal(
                    "lease_expired",
                    "This request's reservation was settled by another process (lease expired).",
                    "key",
                    old.key.name if old is not None else key.name,
                )
            seen = checks.states(settled, reserved)
            if status == "full":  # checked on the current configuration, too
                fresh, verified = seen, True
                self._seen.update(seen)
                continue
            self._seen.charged(seen, decision.charges)
            if old is not None:
                seen = _released(seen, applicable, old)
                self._seen.settled(plan_settle(old.charges, Amounts()))
            headroom = tightest(applicable, seen)
            return Reservation(
                info.request_id, info, decision.charges, held, key, decision.max_output, headroom
            )
        raise StoreUnavailable("the budget's counters change too fast to reserve; try again")

    async def _fresh_states(self, checks: Checks) -> dict[tuple[str, int], CounterState] | None:
        """The counter states as they are now; None when the configuration moved in a
        way that could change the plan (then reloaded: plan again)."""
        wanted = checks.args()[:3]
        settled, reserved, version = await self._run(
            lambda c: one_row(c, _STATES, *wanted), transaction=False
        )
        if int(version) > int(self._version or -1):
            await self._reload()
            return None
        fresh = checks.states(settled, reserved)
        self._seen.update(fresh)
        return fresh

    async def _call_reserve(self, args: tuple[Any, ...], res_id: str, charges: str) -> Any:
        """capgate_reserve's answer: (status, settled, reserved). A plain reservation goes
        through the node's batcher (pg_batch), a rereserve alone."""
        sql = _RESERVE if len(args) == 14 else _RERESERVE
        try:
            if sql is _RERESERVE:
                return await self._run(lambda c: one_row(c, sql, *args), transaction=False)
            item = ReserveItem(
                args[0],
                args[1],
                args[4],
                args[5],
                args[6:11],
                args[11:14],
            )
            done = await self._batcher.reserve(item)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            answered = isinstance(cause, asyncpg.PostgresError) and not isinstance(
                cause, asyncpg.PostgresConnectionError
            )
            if not answered and sql is _RESERVE:
                # The answer was lost: the reservation may have committed. Give it up
                # (release it, no ledger entry) once the database can be reached, so
                # that nothing stays held for a request that was refused. (A rereserve's
                # old reservation is settled by the caller; settle follows the row.)
                task = asyncio.ensure_future(self._give_up(res_id, charges))
                self._giving_up.add(task)
                task.add_done_callback(self._giving_up.discard)
            raise
        if done.status == "duplicate":
            raise StoreUnavailable(f"a reservation {res_id} exists already")
        return done.status, done.settled, done.reserved

    async def _give_up(self, res_id: str, charges: str) -> None:
        delay = 0.2
        while not self._closing:
            try:
                await self._run(lambda c: settlement.release(c, res_id, charges), transaction=False)
                return
            except StoreUnavailable:
                await asyncio.sleep(delay)
                delay = min(SETTLE_RETRY_MAX_S, delay * 2)

    async def _refused(
        self,
        info: RequestInfo,
        key: Scope | None,
        refusal: Refusal,
        now: float,
        record: bool,
    ) -> Refusal:
        if record:
            row = settlement.refusal_row(info, key, refusal, now)
            await self._run(lambda c: c.execute(settlement.INSERT_ENTRY, row), transaction=False)
        return refusal


def _released(
    states: dict[tuple[str, int], CounterState],
    applicable: Sequence[Applicable],
    old: Reservation,
) -> dict[tuple[str, int], CounterState]:
    """`states` as they are once `old` is released (a rereserve plans on those)."""
    out = dict(states)
    first = {
        (a.counter, a.window.start): a.window.read_from
        if a.window.read_from is not None
        else a.window.start
        for a in applicable
    }
    for (counter, start), read_from in first.items():
        for c in old.charges:
            if c.counter == counter and read_from <= c.window_start <= start:
                state = out[(counter, start)]
                out[(counter, start)] = CounterState(state.settled, state.reserved - c.amount)
    return out


async def one_row(conn: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record:
    """The one row a function call answers."""
    row = await conn.fetchrow(sql, *args)
    if row is None:
        raise asyncpg.InterfaceError(f"no row from {sql.split('(')[0]}")
    return row
