#!/usr/bin/env python3
"""The PostgreSQL store's hot path alone, in this process: reserve + settle of one request
on bench/run's budgets (key `bench` with three limits in team `bench` with a dollar
budget: four limits, two scopes), at concurrency 1 and 64, against a throwaway cluster
(tests/pgcluster.py) or --url. No HTTP: what the store adds per request.

    .venv/bin/python bench/pg_store.py [--seconds 5] [--concurrency 1,64] [--url URL]

Each worker reserves, then starts the next request while the settlement is written (as
the gateway does). Prints, per concurrency: requests/s, the mean reserve latency and the
time a settlement takes to commit, the node's CPU
per request (this process), the server's (its processes' CPU over the run) and
`capgate_batch`'s own time per call (track_functions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import pgcluster  # noqa: E402
from capgate.core.engine import Amounts  # noqa: E402
from capgate.core.limits import Limit  # noqa: E402
from capgate.core.money import Usage  # noqa: E402
from capgate.store.base import Outcome, RequestInfo, Reservation  # noqa: E402
from pgstore import add_scope, node, sql  # noqa: E402

TEAM = [{"metric": "cost_usd", "window": "month", "max": 1_000_000}]  # as bench/services.py
KEY = [
    {"metric": "cost_usd", "window": "month", "max": 1_000_000},
    {"metric": "requests", "window": "day", "max": 100_000_000},
    {"metric": "tokens", "window": "day", "max": 100_000_000_000},
]
WORST = Amounts(1, 1000, 2000, 30_000_000)
USED = Outcome(200, "ok", Usage(100, 50), 1_000_000, 12.5, 3.0)


def server_cpu(cluster_root: Path | None) -> float:
    """CPU seconds (user + system) of every process of the cluster's server."""
    if cluster_root is None:
        return 0.0
    pid = int((cluster_root / "data" / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid or int(entry) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run(url: str, root: Path | None, seconds: float, concs: list[int], gap: float) -> None:
    team = await add_scope(url, "team", "bench", tuple(Limit.from_json(x) for x in TEAM))
    del team
    key = await add_scope(url, "key", "bench", tuple(Limit.from_json(x) for x in KEY), team="bench")
    with tempfile.TemporaryDirectory() as state:
        store = node(url, Path(state), pool_size=16)
        await store.start()
        try:
            for conc in concs:
                await one_point(store, url, root, key, conc, 1.0, gap)  # warm-up
                await one_point(store, url, root, key, conc, seconds, gap, report=True)
        finally:
            await store.close()


async def one_point(
    store: object,
    url: str,
    root: Path | None,
    key: str,
    conc: int,
    seconds: float,
    gap: float,
    report: bool = False,
) -> None:
    from capgate.store.pg import PostgresStore

    assert isinstance(store, PostgresStore)
    await sql(url, "SELECT pg_stat_reset()")
    done = 0
    t_reserve = t_settle = 0.0
    stop = time.monotonic() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        nonlocal done, t_reserve, t_settle
        while time.monotonic() < stop:
            n = next(counter)
            info = RequestInfo(
                f"req_{conc}_{n}_{time.monotonic_ns()}", key, "m", "openai", "m",
                "chat", False, time.time(),
            )  # fmt: skip
            t0 = time.perf_counter()
            res = await store.reserve(info, WORST)
            t1 = time.perf_counter()
            assert isinstance(res, Reservation), res
            # As the gateway does: the settlement is journaled and written in the
            # background; the next request does not wait for it.
            settling = store.settle(res, USED)
            settling.add_done_callback(settled)
            started[settling] = t1
            t_reserve += t1 - t0
            done += 1
            await asyncio.sleep(gap)  # the answer's way out and the next request's way in

    started: dict[object, float] = {}

    def settled(future: object) -> None:
        nonlocal t_settle
        t_settle += time.perf_counter() - started.pop(future)

    cpu0, srv0, t0 = time.process_time(), server_cpu(root), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    await store.flush()
    elapsed = time.monotonic() - t0
    cpu, srv = time.process_time() - cpu0, server_cpu(root) - srv0
    if not report:
        return
    await asyncio.sleep(0.6)  # the statistics collector's delay
    rows = await sql(
        url,
        "SELECT calls, self_time FROM pg_stat_user_functions WHERE funcname = 'capgate_batch'",
    )
    xacts = await sql(
        url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    calls, self_ms = (rows[0]["calls"], rows[0]["self_time"]) if rows else (0, 0.0)
    per_call = f"{self_ms / calls * 1000:5.0f} us/call" if calls else "-"
    print(
        f"c={conc:<3} {done / elapsed:7,.0f} req/s  reserve {t_reserve / done * 1e6:6.0f} us  "
        f"settle {t_settle / done * 1e6:6.0f} us  node CPU {cpu / done * 1e6:4.0f} us/req  "
        f"server CPU {srv / done * 1e6:5.0f} us/req  capgate_batch {calls / done:4.2f}/req "
        f"{per_call}  xacts {xacts[0]['xact_commit'] / done:4.2f}/req",
        flush=True,
    )


@contextlib.contextmanager
def database(url: str | None) -> Iterator[tuple[str, Path | None]]:
    if url is not None:
        yield url, None
        return
    with pgcluster.cluster() as cluster:
        cluster.sql("ALTER SYSTEM SET track_functions = 'all'")
        cluster.sql("SELECT pg_reload_conf()")
        yield cluster.new_database("bench"), cluster.root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", default="1,64")
    p.add_argument(
        "--gap",
        type=float,
        default=0.0003,
        help="seconds between a worker's requests [0.0003]; an asyncio timer, which epoll rounds up to 1 ms when nothing else wakes the loop",
    )
    p.add_argument("--url", default=None, help="an existing database (else a throwaway one)")
    args = p.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    with database(args.url) as (url, root):
        asyncio.run(run(url, root, args.seconds, concs, args.gap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
