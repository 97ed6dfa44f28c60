"""Which PostgreSQL driver for the hot path: asyncpg or psycopg 3 (async), measured on the
two calls every request makes, `capgate_reserve` and `capgate_settle` (pg_schema), at
concurrency 1 and 64 over the same 16 connections.

    .venv/bin/pip install 'psycopg[binary]'     # for this benchmark only
    .venv/bin/python bench/pg_driver.py         # a throwaway cluster (tests/pgcluster.py)
    .venv/bin/python bench/pg_driver.py --url postgresql://USER@HOST:PORT/DB --seconds 5

Prints one line per (driver, concurrency): reserve+settle pairs per second and the mean
latency of one pair. The result and the reasoning are in docs/dependencies.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from capgate.store.pg_schema import migrate  # noqa: E402

CONNECTIONS = 16
COUNTER = "key:bench:cost_usd:total:*"
RESERVE = (
    "SELECT status, settled, reserved FROM capgate_reserve({}, {}, {}, {}, {}, {}, "
    "{}::text[], {}::bigint[], {}::bigint[], {}::bigint[], {}::bigint[], "
    "{}::text[], {}::bigint[], {}::bigint[])"
)
SETTLE = (
    "SELECT status, charges FROM capgate_settle({}, {}, {}::text[], {}::bigint[], "
    "{}::bigint[], {}::bigint[], {}::jsonb)"
)
ENTRY = (
    '{"request_id": "%s", "created_at": 1.0, "key_id": "bench", "key_name": "bench", '
    '"stream": 0, "status": 200, "outcome": "ok", "input_tokens": 10, "output_tokens": 10, '
    '"cache_read_tokens": 0, "cache_write_tokens": 0, "cost_nano": 1000, "attempts": 1}'
)
CHARGES = f'[["{COUNTER}", 0, "cost_usd", 30000000]]'


def reserve_args(version: str, res_id: str) -> tuple[Any, ...]:
    return (
        version, res_id, "bench", time.time(), CHARGES, "{}",
        [COUNTER], [0], [None], [30_000_000], [10**18],
        [COUNTER], [0], [30_000_000],
    )  # fmt: skip


def settle_args(res_id: str) -> tuple[Any, ...]:
    return res_id, CHARGES, [COUNTER], [0], [-30_000_000], [1000], ENTRY % res_id


Pair = Callable[[Any, str], Awaitable[None]]


async def asyncpg_pair(conn: asyncpg.Connection, version: str) -> None:
    res_id = uuid.uuid4().hex
    dollars = [f"${n}" for n in range(1, 15)]
    status = (await conn.fetchrow(RESERVE.format(*dollars), *reserve_args(version, res_id)))[0]
    assert status == "ok", status
    settled = await conn.fetchrow(SETTLE.format(*dollars[:7]), *settle_args(res_id))
    assert settled[0] == "settled", settled


async def psycopg_pair(conn: Any, version: str) -> None:
    res_id = uuid.uuid4().hex
    marks = ["%s"] * 14
    cur = await conn.execute(RESERVE.format(*marks), reserve_args(version, res_id))
    status = (await cur.fetchone())[0]
    assert status == "ok", status
    cur = await conn.execute(SETTLE.format(*marks[:7]), settle_args(res_id))
    assert (await cur.fetchone())[0] == "settled"


async def measure(conns: list[Any], pair: Pair, version: str, c: int, seconds: float) -> str:
    free: asyncio.Queue[Any] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    done, latencies = 0, 0.0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, latencies
        while time.monotonic() < stop:
            conn = await free.get()
            t0 = time.perf_counter()
            try:
                await pair(conn, version)
            finally:
                free.put_nowait(conn)
            latencies += time.perf_counter() - t0
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(c)))
    elapsed = time.monotonic() - t0
    return f"{done / elapsed:8.0f} pairs/s  {latencies / done * 1000:6.2f} ms/pair"


async def run(url: str, seconds: float) -> None:
    setup = await asyncpg.connect(url)
    await migrate(setup)
    version = await setup.fetchval("SELECT v FROM meta WHERE k='config_version'")
    await setup.close()
    drivers: dict[str, tuple[Callable[[], Awaitable[Any]], Pair]] = {
        "asyncpg": (lambda: asyncpg.connect(url), asyncpg_pair)
    }
    try:
        import psycopg

        drivers["psycopg"] = (
            lambda: psycopg.AsyncConnection.connect(url, autocommit=True),
            psycopg_pair,
        )
    except ImportError:
        print("psycopg is not installed: pip install 'psycopg[binary]'", file=sys.stderr)
    for c in (1, 64):
        for name, (connect, pair) in drivers.items():
            conns = [await connect() for _ in range(min(c, CONNECTIONS))]
            await measure(conns, pair, version, c, min(1.0, seconds))  # warm-up: prepare
            print(f"{name:8} c={c:<3} {await measure(conns, pair, version, c, seconds)}")
            for conn in conns:
                await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database (default: a throwaway cluster)")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.seconds))
        return
    import pgcluster

    with pgcluster.cluster() as cluster:
        asyncio.run(run(cluster.new_database("bench"), args.seconds))


if __name__ == "__main__":
    main()
