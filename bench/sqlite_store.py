#!/usr/bin/env python3
"""What one SQLite file carries: the SQLite store's hot path alone (reserve + settle of one
request, no HTTP), in 1, 2, ... processes sharing one database file.

    .venv/bin/python bench/sqlite_store.py [--seconds 4] [--processes 1,2] [--concurrency 64]

bench/run's budgets (key `bench` with three limits in team `bench` with a dollar budget:
four limits, two scopes). Each process runs its own `SQLiteStore` (its own writer, as each
`serve --workers` process does) with `--concurrency` requests in flight shared out over the
processes; each request reserves, then the next starts while its settlement is written (as
the gateway does). All processes start together and stop together.

One process shows the most one file takes from one core doing nothing but the store's
work: the ceiling of any design that commits every request in one SQLite file with one
writer (per-process writers lose some of it to the lock and to re-reading counters after
another process's commit; a store-owner process would lose some to its messages). Two
processes show what sharing the file costs. Each point prints requests/s, CPU µs per
request (all processes), and what the writers counted: operations per transaction, lock
wait and time in a transaction per operation, transactions that re-read the counters.
Only meaningful on a quiet machine (see "other CPU").
"""

# ruff: noqa: S603 - runs this same script as its child processes

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from services import KEY_LIMITS as KEY  # noqa: E402 - bench/run's key and team
from services import TEAM_LIMITS as TEAM  # noqa: E402

from capgate.core.engine import Amounts  # noqa: E402
from capgate.core.limits import Limit, ScopeKind  # noqa: E402
from capgate.core.money import Usage  # noqa: E402
from capgate.keys import display_prefix, key_hash, new_key  # noqa: E402
from capgate.store.base import Outcome, RequestInfo, Reservation  # noqa: E402
from capgate.store.scopes import ScopeFields  # noqa: E402
from capgate.store.sqlite import SQLiteStore  # noqa: E402

WORST = Amounts(1, 1000, 2000, 30_000_000)
USED = Outcome(200, "ok", Usage(100, 50), 1_000_000, 12.5, 3.0)


async def setup(path: str) -> str:
    store = SQLiteStore(path)
    await store.start()
    try:
        limits = tuple(Limit.from_json(x) for x in TEAM)
        await store.create_scope(ScopeKind.TEAM, "bench", ScopeFields(limits=limits))
        key_id, raw = new_key()
        await store.create_scope(
            ScopeKind.KEY, "bench",
            ScopeFields(limits=tuple(Limit.from_json(x) for x in KEY), team="bench"),
            scope_id=key_id, secret_hash=key_hash(raw), prefix=display_prefix(raw),
        )  # fmt: skip
        return key_id
    finally:
        await store.close()


async def child(
    path: str, key: str, conc: int, start_at: float, stop_at: float
) -> dict[str, object]:
    store = SQLiteStore(path)
    await store.start()
    done = 0
    counter = iter(range(10**12))
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    pending: set[asyncio.Future[None]] = set()

    async def worker() -> None:
        nonlocal done
        while time.time() < stop_at:
            info = RequestInfo(
                f"req_{tag}_{next(counter)}", key, "m", "openai", "m", "chat", False, time.time()
            )
            res = await store.reserve(info, WORST)
            assert isinstance(res, Reservation), res
            settling = store.settle(res, USED)
            pending.add(settling)
            settling.add_done_callback(pending.discard)
            done += 1
            await asyncio.sleep(0)

    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        began = time.time()
        await asyncio.gather(*(worker() for _ in range(conc)))
        if pending:
            await asyncio.wait(pending)
        return {
            "done": done,
            "seconds": time.time() - began,
            "cpu": time.process_time() - cpu0,
            "stats": dataclasses.asdict(store._writer.stats),
        }
    finally:
        await store.close()


def machine_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    busy = sum(int(x) for x in fields[:3]) + sum(int(x) for x in fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def point(path: str, key: str, processes: int, conc: int, seconds: float) -> str:
    start_at = time.time() + 1.0  # every process open and waiting
    stop_at = start_at + seconds
    share = [conc // processes + (1 if i < conc % processes else 0) for i in range(processes)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", path, key, str(c), repr(start_at), repr(stop_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in share
    ]
    time.sleep(max(0.0, start_at - time.time()))
    machine0 = machine_cpu_s()
    time.sleep(seconds)
    machine = machine_cpu_s() - machine0
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a store process failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    done = sum(r["done"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    stats = [r["stats"] for r in results]
    ops = sum(s["ops"] for s in stats) or 1
    groups = sum(s["groups"] for s in stats) or 1
    reread = sum(s["cache_reread"] for s in stats)
    kept = sum(s["cache_kept"] for s in stats)
    return (
        f"{processes} process{'es' if processes > 1 else '  '}  c={conc:<3} "
        f"{done / elapsed:8,.0f} req/s  cpu {cpu / done * 1e6:5.0f} µs/req  "
        f"ops/txn {ops / groups:5.1f}  lock wait {sum(s['lock_wait_s'] for s in stats) / ops * 1e6:5.1f} "
        f"µs/op  in txn {sum(s['in_transaction_s'] for s in stats) / ops * 1e6:5.1f} µs/op  "
        f"re-read {reread / ((reread + kept) or 1):4.0%}  "
        f"other CPU {max(0.0, (machine - cpu) / seconds):.2f}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, key, conc, start_at, stop_at = sys.argv[2:7]
        import uvloop  # as `capgate serve`

        result = uvloop.run(child(path, key, int(conc), float(start_at), float(stop_at)))
        print(json.dumps(result), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--processes", default="1,2", help="process counts to measure [1,2]")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in all [64]")
    p.add_argument("--rounds", type=int, default=1, help="measure each point this often [1]")
    args = p.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    print(f"{os.cpu_count()} CPUs; {args.seconds:g} s per point", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "capgate.db")
        key = asyncio.run(setup(path))
        for _ in range(args.rounds):
            for n in counts:
                print(point(path, key, n, args.concurrency, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
