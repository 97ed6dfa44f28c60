"""Reservations and settlements of one node, batched: group commit for PostgreSQL.

Every request locks the same few counter rows twice (its key's, its team's), so on one
budget PostgreSQL runs reserves and settles one after the other, each paying a lock
hand-over and a commit. The batcher sends what arrives while its previous calls run as one
call of `capgate_batch` (pg_schema): one transaction that locks the batch's counter rows
once, in the one sorted order, applies the settlements, then the reservations in order,
each checked against the counters as the ones before it left them - exactly what one call
each would have done, with one lock and one commit for all. A reservation goes at once
(no waiting for company): the batch is whatever queued meanwhile. A settlement waits up to
`SETTLE_DELAY` for the next reservation to ride along with (as SQLite's writer does: it is
journaled already, and its reservation stays held meanwhile, which only errs on the safe
side): at one request at a time, one transaction per request instead of two, and the
settlement no longer holds the budget's rows while the next reservation waits for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

_BATCH = (
    "SELECT settled_ids, r_status, r_settled, r_reserved FROM capgate_batch($1, $2, $3, $4, "
    "$5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, "
    "$23, $24)"
)
MAX_ITEMS = 256  # per call: bounds how long one transaction holds the counter rows
IN_FLIGHT = 4  # calls under way at once per node (the next is built while one commits)
SETTLE_DELAY = 0.002  # seconds a settlement waits for a reservation to ride along with


@dataclass(frozen=True, slots=True)
class ReserveItem:
    version: str
    id: str
    charges: str  # as stored in the reservation row
    info: str
    checks: tuple[list[str], list[int], list[int | None], list[int], list[int]]
    charge: tuple[list[str], list[int], list[int]]  # counter, window_start, amount


@dataclass(frozen=True, slots=True)
class SettleItem:
    id: str
    charges: str  # what the reservation row must hold to be settled here
    deltas: tuple[list[str], list[int], list[int], list[int]]
    entry: str  # the ledger row as JSON


@dataclass(frozen=True, slots=True)
class Reserved:
    status: str  # ok | full | stale | duplicate
    settled: list[int]  # per check, as seen before this reservation
    reserved: list[int]


Item = ReserveItem | SettleItem
Runner = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]


class Batcher:
    def __init__(
        self,
        run: Runner,
        owner: Callable[[], str],
        clock: Callable[[], float],
        settle_delay: float = SETTLE_DELAY,
    ) -> None:
        self._run = run
        self._owner = owner
        self._clock = clock
        self._settle_delay = settle_delay
        self._queue: list[tuple[Item, asyncio.Future[Any]]] = []
        self._running = 0
        self._later: asyncio.TimerHandle | None = None

    def reserve(self, item: ReserveItem) -> asyncio.Future[Reserved]:
        future = self._enqueue(item)
        self._start()
        return future

    def settle(self, item: SettleItem, wait: bool = True) -> asyncio.Future[bool]:
        """True: settled by the batch. False: its reservation was not there with those
        charges (settled already, swept, or moved): the caller settles it alone. Sent with
        the next reservation, or after `settle_delay` without one (at once: `wait` False)."""
        future = self._enqueue(item)
        if not wait:
            self._start()
        if self._running:  # a call is under way: the next batch takes it when it ends
            return future
        if self._later is None:
            self._later = asyncio.get_running_loop().call_later(self._settle_delay, self._start)
        return future

    def _enqueue(self, item: Item) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        return future

    def _start(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._queue and self._running < IN_FLIGHT:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_ITEMS], self._queue[MAX_ITEMS:]
                await self._send(batch)
        finally:
            self._running -= 1

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        settles: list[tuple[SettleItem, asyncio.Future[Any]]] = []
        reserves: list[tuple[ReserveItem, asyncio.Future[Any]]] = []
        for item, future in batch:
            if isinstance(item, SettleItem):
                settles.append((item, future))
            else:
                reserves.append((item, future))
        args = (
            self._owner(),
            self._clock(),
            *_settle_args([i for i, _ in settles]),
            *_reserve_args([i for i, _ in reserves]),
        )
        try:
            row = await self._run(lambda conn: conn.fetchrow(_BATCH, *args))
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        done = set(row["settled_ids"])
        for item, future in settles:
            if not future.done():
                future.set_result(item.id in done)
        settled, reserved, at = row["r_settled"] or [], row["r_reserved"] or [], 0
        for (item, future), status in zip(reserves, row["r_status"] or [], strict=True):
            n = len(item.checks[0])
            if not future.done():
                future.set_result(Reserved(status, settled[at : at + n], reserved[at : at + n]))
            at += n


def _settle_args(items: list[SettleItem]) -> tuple[Any, ...]:
    item_of, counters, starts, reserved, settled = [], [], [], [], []
    for n, item in enumerate(items, start=1):
        c, s, r, t = item.deltas
        item_of += [n] * len(c)
        counters += c
        starts += s
        reserved += r
        settled += t
    return (
        [i.id for i in items], [i.charges for i in items], [i.entry for i in items],
        item_of, counters, starts, reserved, settled,
    )  # fmt: skip


def _reserve_args(items: list[ReserveItem]) -> tuple[Any, ...]:
    checks: list[list[Any]] = [[], [], [], [], []]
    charges: list[list[Any]] = [[], [], []]
    check_to, charge_to = [], []
    for item in items:
        for n in range(5):
            checks[n].extend(item.checks[n])
        for n in range(3):
            charges[n].extend(item.charge[n])
        check_to.append(len(checks[0]))
        charge_to.append(len(charges[0]))
    return (
        [i.version for i in items], [i.id for i in items], [i.charges for i in items],
        [i.info for i in items], check_to, *checks, charge_to, *charges,
    )  # fmt: skip
