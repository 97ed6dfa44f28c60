"""Several nodes (PostgresStore instances) on one database under concurrent load: never
over the budget, counters == the ledger, nothing left held; connections killed with
pg_terminate_backend mid-load and PostgreSQL stopped and started: refusals while it is
down, recovery after, nothing lost or doubled. The multi-process gateway versions of
these are the nodes tests'."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

import pgcluster
from capgate.core.engine import Amounts
from capgate.core.limits import Limit, Metric
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.errors import StoreUnavailable
from capgate.store.base import Outcome, RequestInfo, Reservation
from capgate.store.pg import PostgresStore
from pgstore import add_scope, books, node, sql

WORST = Amounts(1, 1000, 2000, 30_000_000)  # $0.03
BUDGET = 10 * WORST.cost_nano  # pays for 10 worst cases


@pytest.fixture
def db(postgres: pgcluster.Cluster) -> str:
    return postgres.new_database()


async def _nodes(url: str, state: Path, count: int) -> list[PostgresStore]:
    stores = [node(url, state / str(n), pool_size=8) for n in range(count)]
    await asyncio.gather(*(s.start() for s in stores))  # migrations at once, too
    return stores


async def _request(store: PostgresStore, key: str, n: str, rng: random.Random) -> str:
    """Reserve, 'call', settle with a random usage below the worst case."""
    info = RequestInfo(n, key, "m", "anthropic", "m", "messages", False, time.time())
    try:
        res = await store.reserve(info, WORST)
    except StoreUnavailable:
        return "unavailable"
    if not isinstance(res, Reservation):
        return "refused"
    await asyncio.sleep(rng.random() * 0.01)
    cost = rng.randrange(1, WORST.cost_nano + 1)
    await store.settle(res, Outcome(200, "ok", Usage(10, 10), cost, 1.0))  # retried until it lands
    return "admitted"


def test_three_nodes_never_overspend(db: str, tmp_path: Path) -> None:
    """Concurrent requests from 3 nodes against one key's and one team's budget, rounds
    over: the settled cost never passes the budget (no over-reservation here), and the
    counters always equal the ledger."""

    async def test() -> None:
        await add_scope(db, "team", "t", (Limit(Metric.COST_USD, WindowKind.TOTAL, BUDGET * 3),))
        key = await add_scope(
            db, "key", "k", (Limit(Metric.COST_USD, WindowKind.TOTAL, BUDGET),), team="t"
        )
        other = await add_scope(
            db, "key", "k2", (Limit(Metric.CONCURRENT, WindowKind.TOTAL, 4),), team="t"
        )
        stores = await _nodes(db, tmp_path, 3)
        rng = random.Random(7)
        try:
            for round_ in range(3):
                outcomes = await asyncio.gather(
                    *(
                        _request(stores[i % 3], key if i % 2 else other, f"r{round_}_{i}", rng)
                        for i in range(150)
                    )
                )
                for store in stores:
                    await store.flush()
                state = await books(db)
                assert state["reserved"] == 0 and state["reservations"] == 0
                assert state["entries"] == 150 * (round_ + 1)
                assert "unavailable" not in outcomes
                rows = await sql(
                    db,
                    "SELECT sum(cost_nano) AS cost, count(*) AS n FROM requests "
                    "WHERE key_name='k' AND outcome='ok'",
                )
                assert rows[0]["cost"] <= BUDGET
                counters = await sql(
                    db, "SELECT counter, settled FROM counters WHERE counter LIKE 'key:%:cost%'"
                )
                assert counters[0]["settled"] == rows[0]["cost"]
                team = await sql(db, "SELECT settled FROM counters WHERE counter LIKE 'team:%'")
                ledger = await sql(db, "SELECT sum(cost_nano) AS c FROM requests")
                assert team[0]["settled"] == ledger[0]["c"] <= BUDGET * 3
            # the concurrent key was held to 4 in flight: some of its requests refused
            refused = await sql(
                db, "SELECT count(*) AS n FROM requests WHERE key_name='k2' AND outcome='refused'"
            )
            assert refused[0]["n"] > 0
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(test())


def test_killed_connections_lose_and_double_nothing(
    db: str, postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    """pg_terminate_backend on every connection, again and again, under load from 2
    nodes: requests in flight may be refused (StoreUnavailable), nothing admitted is
    lost or counted twice, nothing stays held, and the nodes keep working."""

    async def test() -> None:
        key = await add_scope(db, "key", "k", (Limit(Metric.COST_USD, WindowKind.TOTAL, 10**15),))
        stores = await _nodes(db, tmp_path, 2)
        dbname = db.rsplit("/", 1)[1]
        rng = random.Random(3)
        try:
            load = asyncio.gather(*(_request(stores[i % 2], key, f"r{i}", rng) for i in range(400)))
            for _ in range(4):
                await asyncio.sleep(0.05)
                await asyncio.to_thread(postgres.terminate_backends, dbname)
            outcomes = await load
            deadline = time.monotonic() + 20
            while any(s.health().settlements_waiting for s in stores):
                assert time.monotonic() < deadline, "settlements not written"
                await asyncio.sleep(0.1)
            for s in stores:
                await s.flush()
            await asyncio.sleep(0.5)  # reservations given up after lost answers
            state = await books(db)
            admitted = outcomes.count("admitted")
            assert admitted > 0
            assert state["ledger"] == state["counted"]
            assert state["reserved"] == 0 and state["reservations"] == 0
            entries = await sql(
                db, "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM requests"
            )
            assert entries[0]["n"] == entries[0]["d"] == admitted
            # and the nodes work again
            for n, store in enumerate(stores):
                assert await _request(store, key, f"after{n}", rng) == "admitted"
                assert store.health().problem is None
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    asyncio.run(test())


def test_postgres_down_refuses_at_once_and_recovers(
    db: str, postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    async def test() -> None:
        key = await add_scope(db, "key", "k", (Limit(Metric.COST_USD, WindowKind.TOTAL, 10**15),))
        (store,) = await _nodes(db, tmp_path, 1)
        try:
            info = RequestInfo("held", key, "m", "anthropic", "m", "messages", False, time.time())
            held = await store.reserve(info, WORST)
            assert isinstance(held, Reservation)
            await asyncio.to_thread(postgres.stop)
            try:
                settled = store.settle(held, Outcome(200, "ok", Usage(1, 1), 5, 1.0))
                t0 = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    info = RequestInfo("x", key, "m", "anthropic", "m", "messages", False, t0)
                    await store.reserve(info, WORST)
                assert time.monotonic() - t0 < 1.0
                await asyncio.sleep(0.3)
                health = store.health()
                assert health.problem is not None and health.settlements_waiting == 1
            finally:
                await asyncio.to_thread(postgres.start)
            await asyncio.wait_for(settled, 15)  # retried until it lands
            deadline = time.monotonic() + 10
            while store.health().problem is not None:  # the lifeline is back
                assert time.monotonic() < deadline, store.health()
                await asyncio.sleep(0.1)
            rng = random.Random(1)
            assert await _request(store, key, "after", rng) == "admitted"
            state = await books(db)
            assert state["entries"] == 2 and state["reserved"] == 0
            assert state["ledger"] == state["counted"]
        finally:
            await store.close()

    asyncio.run(test())
