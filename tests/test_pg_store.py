"""The PostgreSQL store's hot path, in this process against a real PostgreSQL (the
`postgres` fixture): reserve, settle, rereserve, refusals in the ledger, the clamp,
configuration changes seen by every node, the sweep of a dead node and the late
settlement that follows, a journal of a dead process replayed. Several nodes are several
PostgresStore instances on one database (the multi-process gateway tests are in
test_nodes*.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pgcluster
from capgate.core.engine import Amounts, OutputFlex, Refusal
from capgate.core.limits import Limit, Metric
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.errors import StoreUnavailable
from capgate.store.base import Outcome, RequestInfo, Reservation
from capgate.store.pg import PostgresStore
from capgate.store.pg_settlement import ALREADY, LATE
from pgstore import add_scope, books, crash, execute, node, sql

WORST = Amounts(1, 1000, 2000, 30_000_000)  # $0.03
USED = Outcome(200, "ok", Usage(100, 50), 1_000_000, 12.5, 3.0)  # $0.001
DAY_10_CENTS = (Limit(Metric.COST_USD, WindowKind.DAY, 100_000_000),)


@pytest.fixture
def db(postgres: pgcluster.Cluster) -> str:
    return postgres.new_database()


def run(test: Callable[..., Awaitable[None]], *args: Any) -> None:
    asyncio.run(test(*args))


def info(key_id: str, n: int | str, model: str = "m") -> RequestInfo:
    return RequestInfo(
        f"req_{n}", key_id, model, "anthropic", model, "messages", False, time.time()
    )


async def started(url: str, state: Path, **options: Any) -> PostgresStore:
    store = node(url, state, **options)
    await store.start()
    return store


def test_reserve_settle_and_refuse_keep_the_books(db: str, tmp_path: Path) -> None:
    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        store = await started(db, tmp_path)
        try:
            first = await store.reserve(info(key, 1), WORST)
            assert isinstance(first, Reservation)
            assert first.headroom is not None and first.headroom.remaining == 100_000_000
            await store.settle(first, USED)
            held = [await store.reserve(info(key, n), WORST) for n in range(2, 6)]
            assert [isinstance(r, Reservation) for r in held] == [True, True, True, False]
            refusal = held[-1]
            assert isinstance(refusal, Refusal) and refusal.code == "limit_exceeded"
            assert (await books(db))["reserved"] == 90_000_000
            for res in held[:3]:
                assert isinstance(res, Reservation)
                await store.settle(res, USED)
            assert await books(db) == {
                "ledger": 4_000_000, "counted": 4_000_000, "reserved": 0,
                "reservations": 0, "entries": 5,
            }  # fmt: skip
            (row,) = await sql(db, "SELECT status, refusal FROM requests WHERE outcome='refused'")
            assert row["status"] == 402 and '"limit_exceeded"' in row["refusal"]
            # a settlement written twice (a journal replayed) counts once
            assert isinstance(held[0], Reservation)
            await store.settle(held[0], USED)
            assert (await books(db))["ledger"] == 4_000_000
        finally:
            await store.close()

    run(test)


def test_a_settlement_rides_with_the_next_reservation(db: str, tmp_path: Path) -> None:
    """At one request at a time, a settlement waits (journaled) for the next reservation
    and commits in its transaction: one call of capgate_batch per request, not two; alone,
    it goes after the delay."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        store = await started(db, tmp_path)
        batches: list[list[str]] = []
        send = store._batcher._send

        async def spy(batch: list[Any]) -> None:
            batches.append([type(item).__name__ for item, _ in batch])
            await send(batch)

        store._batcher._send = spy  # type: ignore[method-assign]
        store._batcher._settle_delay = 0.5  # a slow machine cannot send it alone first
        try:
            first = await store.reserve(info(key, 1), WORST)
            assert isinstance(first, Reservation)
            settling = store.settle(first, USED)
            await asyncio.sleep(0.05)  # the answer goes out, the next request comes in
            assert not settling.done()  # waiting for company, held meanwhile
            second = await store.reserve(info(key, 2), WORST)
            assert isinstance(second, Reservation)
            await settling
            assert batches == [["ReserveItem"], ["SettleItem", "ReserveItem"]]
            t0 = time.monotonic()
            await store.settle(second, USED)  # no reservation follows: sent after the delay
            assert 0.4 < time.monotonic() - t0 < 5
            assert batches[-1] == ["SettleItem"]
            assert await books(db) == {
                "ledger": 2_000_000, "counted": 2_000_000, "reserved": 0,
                "reservations": 0, "entries": 2,
            }  # fmt: skip
        finally:
            await store.close()

    run(test)


def test_a_plan_on_old_states_is_checked_again(db: str, tmp_path: Path) -> None:
    """Node A's states are old (node B spent meanwhile): A's plan admits, the database
    refuses it, A plans again on the fresh states and refuses, truly."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        a = await started(db, tmp_path / "a")
        b = await started(db, tmp_path / "b")
        try:
            assert isinstance(await a.reserve(info(key, "a1"), WORST), Reservation)
            for n in range(2):
                assert isinstance(await b.reserve(info(key, f"b{n}"), WORST), Reservation)
            refused = await a.reserve(info(key, "a2"), WORST)
            assert isinstance(refused, Refusal), refused
            assert "$0.09 held" in refused.message
            # and a refusal from old states is checked on fresh ones before it is given
            assert isinstance(await b.reserve(info(key, "b9"), WORST), Refusal)
            await sql(db, "UPDATE counters SET reserved = 0")  # as if all had settled
            assert isinstance(await b.reserve(info(key, "b10"), WORST), Reservation)
        finally:
            await a.close()
            await b.close()

    run(test)


def test_clamp_and_rereserve(db: str, tmp_path: Path) -> None:
    async def test() -> None:
        key = await add_scope(db, "key", "k", (Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 3000),))
        store = await started(db, tmp_path)
        try:
            flex = OutputFlex(2000, 100, 1, 1000, 0, 0)
            first = await store.reserve(info(key, 1), Amounts(1, 1000, 2000), flex)
            clamped = await store.reserve(info(key, 2), Amounts(1, 1000, 2000), flex)
            assert isinstance(first, Reservation) and first.max_output is None
            assert isinstance(clamped, Reservation) and clamped.max_output == 1000
            # a fallback that needs more than is left: refused, the old one stays held
            moved = await store.rereserve(clamped, clamped.info, Amounts(1, 1000, 1500))
            assert isinstance(moved, Refusal)
            assert (await books(db))["reserved"] == 3000
            # one that fits once the old one is released: moved in one transaction
            moved = await store.rereserve(clamped, clamped.info, Amounts(1, 1000, 900))
            assert isinstance(moved, Reservation) and moved.worst.output_tokens == 900
            rows = await sql(db, "SELECT sum(reserved) AS r FROM counters")
            assert rows[0]["r"] == 2900
            await store.settle(moved, Outcome(200, "ok", Usage(10, 20), 0, 1.0))
            await store.settle(first, Outcome(200, "ok", Usage(10, 30), 0, 1.0))
            rows = await sql(db, "SELECT settled, reserved FROM counters")
            assert [tuple(r) for r in rows] == [(50, 0)]
        finally:
            await store.close()

    run(test)


def test_a_config_change_reaches_every_node(db: str, tmp_path: Path) -> None:
    """Node B's cache is old when A's admin pauses the key: B's next reservation sees it
    (the database refuses a plan made on an older configuration), and B's cache follows
    the NOTIFY within a second anyway."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        b = await started(db, tmp_path)
        try:
            assert isinstance(await b.reserve(info(key, 1), WORST), Reservation)
            b._lifeline._on_notify = lambda version: None  # deaf: only reserve's check
            await execute(
                db,
                "UPDATE scopes SET status='paused'; "
                "UPDATE meta SET v = (v::bigint + 1)::text WHERE k='config_version'",
            )
            refused = await b.reserve(info(key, 2), WORST)
            assert isinstance(refused, Refusal) and refused.code == "paused"
            # and a refusal from a cache that is now old is not given: resumed meanwhile
            await execute(
                db,
                "UPDATE scopes SET status='active'; "
                "UPDATE meta SET v = (v::bigint + 1)::text WHERE k='config_version'",
            )
            assert isinstance(await b.reserve(info(key, 3), WORST), Reservation)
            b._lifeline._on_notify = b._notified
            await execute(
                db,
                "UPDATE scopes SET status='paused'; "
                "UPDATE meta SET v = (v::bigint + 1)::text WHERE k='config_version'",
            )
            deadline = time.monotonic() + 1.0
            while b.key_by_id(key)[0].status.value != "paused":  # type: ignore[index]
                assert time.monotonic() < deadline, "NOTIFY not followed within a second"
                await asyncio.sleep(0.01)
        finally:
            await b.close()

    run(test)


def test_a_dead_nodes_reservations_are_swept_then_settled_late(db: str, tmp_path: Path) -> None:
    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        now = [time.time()]
        alive = await started(db, tmp_path / "a", lease_seconds=5, clock=lambda: now[0])
        dying = await started(db, tmp_path / "b", lease_seconds=5)
        stalled = await started(db, tmp_path / "c", lease_seconds=5)
        try:
            lost = await dying.reserve(info(key, "lost"), WORST)
            kept = await stalled.reserve(info(key, "kept"), WORST)
            assert isinstance(lost, Reservation) and isinstance(kept, Reservation)
            await crash(dying)
            now[0] += 60  # both leases expired; only `stalled` still holds its lock
            await alive._beat()
            rows = await sql(db, "SELECT request_id, outcome, cost_nano FROM requests")
            assert [tuple(r) for r in rows] == [("req_lost", "lease_expired", 30_000_000)]
            assert (await books(db))["reservations"] == 1  # the stalled node's stays
            # the dead node's settlement arrives after all (its journal, replayed)
            assert await alive._settle_now(lost, USED) == LATE
            assert await alive._settle_now(lost, USED) == ALREADY
            rows = await sql(db, "SELECT outcome, cost_nano, flags FROM requests")
            assert [tuple(r) for r in rows] == [("ok", 1_000_000, "late_settlement")]
            await stalled.settle(kept, USED)
            assert await books(db) == {
                "ledger": 2_000_000, "counted": 2_000_000, "reserved": 0,
                "reservations": 0, "entries": 2,
            }  # fmt: skip
        finally:
            await alive.close()
            await stalled.close()

    run(test)


def test_a_dead_process_journal_is_replayed(db: str, tmp_path: Path) -> None:
    """A process killed after it journaled a settlement, before it was written: the next
    node on this machine replays it, once."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        dying = await started(db, tmp_path)
        res = await dying.reserve(info(key, 1), WORST)
        assert isinstance(res, Reservation)
        dying._journal.append(res, USED)  # journaled; the write never happens
        await crash(dying)
        assert (await books(db))["entries"] == 0
        store = await started(db, tmp_path)
        try:
            assert await books(db) == {
                "ledger": 1_000_000, "counted": 1_000_000, "reserved": 0,
                "reservations": 0, "entries": 1,
            }  # fmt: skip
            journals = store._journal.directory
            assert list(journals.iterdir()) == [journals / f"{store.owner}.jsonl"]
        finally:
            await store.close()

    run(test)


def test_a_reservation_whose_answer_was_lost_is_given_up(db: str, tmp_path: Path) -> None:
    """The connection dies after capgate_reserve committed, before its answer arrived: the
    request is refused (StoreUnavailable) and what it holds is released in the background,
    with no ledger entry, so nothing stays held for a request never sent."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        store = await started(db, tmp_path)
        real_run = store._run
        calls = []

        async def lose_answer(op: Any, **options: Any) -> Any:
            result = await real_run(op, **options)
            if not calls:
                calls.append(result)
                raise StoreUnavailable("lost") from asyncpg.ConnectionDoesNotExistError("gone")
            return result

        store._run = lose_answer  # type: ignore[method-assign]
        try:
            with pytest.raises(StoreUnavailable):
                await store.reserve(info(key, 1), WORST)
            assert calls and calls[0]["r_status"] == ["ok"]  # it had committed
            deadline = time.monotonic() + 5
            while (await books(db))["reservations"]:
                assert time.monotonic() < deadline, "the lost reservation stays held"
                await asyncio.sleep(0.05)
            assert await books(db) == {
                "ledger": 0, "counted": 0, "reserved": 0, "reservations": 0, "entries": 0
            }  # fmt: skip
            assert isinstance(await store.reserve(info(key, 2), WORST), Reservation)
        finally:
            store._run = real_run  # type: ignore[method-assign]
            await store.close()

    run(test)


def test_a_node_takes_its_lock_and_ear_back_after_its_connection_is_killed(
    db: str, postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    """pg_terminate_backend on every connection: the node's own connection comes back by
    itself, holds its liveness lock again (a sweeper cannot take it) and hears
    configuration changes again."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", DAY_10_CENTS)
        store = await started(db, tmp_path)
        try:
            before = store._lifeline._conn
            await asyncio.to_thread(postgres.terminate_backends, db.rsplit("/", 1)[1])
            deadline = time.monotonic() + 10
            while True:  # a new connection: the node noticed the old one die and reopened
                conn = store._lifeline._conn
                reopened = conn is not None and conn is not before and not conn.is_closed()
                if reopened and store.health().problem is None:
                    break
                assert time.monotonic() < deadline, store.health()
                await asyncio.sleep(0.05)
            rows = await sql(
                db, "SELECT pg_try_advisory_lock($1, $2) AS taken", *store._lifeline.key
            )
            assert rows[0]["taken"] is False  # held again by the node
            await execute(
                db,
                "UPDATE scopes SET status='paused'; "
                "UPDATE meta SET v = (v::bigint + 1)::text WHERE k='config_version'",
            )
            deadline = time.monotonic() + 1.0
            while store.key_by_id(key)[0].status.value != "paused":  # type: ignore[index]
                assert time.monotonic() < deadline, "NOTIFY not heard after the reconnect"
                await asyncio.sleep(0.01)
        finally:
            await store.close()

    run(test)
