#!/usr/bin/env python3
"""Workers and stores: `bench/run --scaling` (see bench/README.md, "Scaling").

Side by side in one run, on bench/run's load (key + team budget, the ledger on):
one capgate process; two processes sharing one store; two processes with a store each
(the same key copied into both: no shared lock, the upper bound of two processes);
on SQLite and, when a PostgreSQL server can be started, on PostgreSQL. The setups are
measured in turn, `--rounds` times, so each ratio compares points taken seconds apart.
Per point: req/s, p50 / p99, and the CPU time per request of the capgate processes
(and of PostgreSQL's backends), which a shared machine moves much less than req/s; for
SQLite, what each process's store counted (`sqlite store ...` line at its exit): groups,
lock waits, busy retries, counter re-reads after another process's commit, checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import PATHS, run_wrk
from procs import HOST, ROOT, Pinning, Proc, log, proc_cpu_s, tree_pids
from services import capgate_port, capgate_problems, create_key, sanity, start_capgate

sys.path.insert(0, str(ROOT / "tests"))
import pgcluster  # the tests' throwaway cluster (after the path is set)

SETUPS = [("1 process", 1, False), ("2 shared", 2, False), ("2 each", 2, True)]
_STATS = re.compile(r"sqlite store \w+: (.*)")


@dataclass
class ScalePoint:
    engine: str
    setup: str
    conc: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float  # capgate's (and PostgreSQL's) CPU per request
    errors: int
    store: dict[str, float] = field(default_factory=dict)  # summed over processes


def _stores(tmp: Path, engine: str, setup: str, each: bool, cluster: Any) -> list[str]:
    """The database URL of each process: one shared, or one each holding the same key."""
    if engine == "sqlite":
        first = tmp / f"{setup.replace(' ', '-')}-a.db"
        urls = [f"sqlite:///{first}"]
        if each:
            urls.append(f"sqlite:///{first.with_name(first.name.replace('-a.db', '-b.db'))}")
        return urls
    name = cluster.new_database("scale")
    return [name] if not each else [name, ""]  # the second is made from the first below


def _clone(engine: str, urls: list[str], cluster: Any) -> list[str]:
    if len(urls) < 2:
        return urls
    if engine == "sqlite":
        src, dst = (sqlite3.connect(u.removeprefix("sqlite:///")) for u in urls)
        with src, dst:
            src.backup(dst)
        src.close()
        dst.close()
        return urls
    base = urls[0].rsplit("/", 1)
    copy = f"{base[1]}_b"
    cluster.sql(f'CREATE DATABASE "{copy}" TEMPLATE "{base[1]}"')
    return [urls[0], f"{base[0]}/{copy}"]


def prepare(
    pin: Pinning, tmp: Path, config: Path, engine: str, cluster: Any
) -> dict[str, tuple[list[str], str]]:
    """Each setup's stores, with the bench key made once (the same in every store)."""
    out = {}
    for setup, _, each in SETUPS:
        urls = _stores(tmp, engine, setup, each, cluster)
        (first,) = start_capgate(pin, tmp, config, 1, database_url=urls[0])
        try:
            key = create_key(capgate_port(first))
        finally:
            first.stop()
        out[setup] = (_clone(engine, urls, cluster), key)
    return out


def _start(pin: Pinning, logs: Path, config: Path, urls: list[str], n: int) -> list[Proc]:
    if len(urls) == 1:
        return start_capgate(pin, logs, config, n, database_url=urls[0])
    return [
        start_capgate(pin, logs / str(i), config, 1, database_url=u)[0] for i, u in enumerate(urls)
    ]


def _store_stats(procs: list[Proc]) -> dict[str, float]:
    """What the processes' stores counted, summed; `*_us` are totals (per op x ops)."""
    total: dict[str, float] = {}
    for proc in procs:
        text = proc.logfile.read_text("utf-8", "replace") if proc.logfile.exists() else ""
        for match in _STATS.finditer(text):
            fields = dict(pair.partition("=")[::2] for pair in match.group(1).split())
            ops = float(fields.get("ops", 0))
            for name, value in fields.items():
                if name.endswith("_us_per_op"):
                    name, number = name.removesuffix("_per_op"), float(value) * ops
                else:
                    number = float(value)
                total[name] = total.get(name, 0.0) + number
    return total


def measure_setup(
    pin: Pinning,
    tmp: Path,
    config: Path,
    engine: str,
    setup: tuple[str, int, bool],
    stores: tuple[list[str], str],
    body: Path,
    conc: int,
    round_: int,
    args: argparse.Namespace,
    pg_pids: Any,
) -> tuple[ScalePoint, list[str]]:
    name, n, _ = setup
    urls, key = stores
    logs = tmp / f"logs-{engine}-{name.replace(' ', '-')}-c{conc}-r{round_}"
    for sub in (logs, logs / "0", logs / "1"):
        sub.mkdir(parents=True, exist_ok=True)
    procs = _start(pin, logs, config, urls, n)
    try:
        ports = [capgate_port(p) for p in procs]
        for port in ports:
            msg = sanity(
                f"http://{HOST}:{port}{PATHS['openai']}", body.read_bytes(), key, False, name
            )
            if msg:
                raise RuntimeError(msg)
        addrs = [f"{HOST}:{p}" for p in ports] if n > 1 else None
        url = f"http://{HOST}:{ports[0]}{PATHS['openai']}"
        if args.warmup > 0:
            run_wrk(pin, url, body, key, conc, args.warmup, addrs)
        pids = [p.pid for p in procs] + pg_pids()
        cpu0 = proc_cpu_s(pids)
        r = run_wrk(pin, url, body, key, conc, args.duration, addrs)
        cpu = proc_cpu_s(pids) - cpu0
    finally:
        for p in procs:
            p.stop()
    lat, done = r["latency_us"], r["requests"]
    point = ScalePoint(
        engine, name, conc, round_,
        rps=done / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0,
        p50_ms=lat["p50"] / 1000, p99_ms=lat["p99"] / 1000, requests=done,
        cpu_us=cpu / done * 1e6 if done else 0.0,
        errors=max(r["errors"]["status"], r["non2xx_line"]) + r["errors"]["connect"]
        + r["errors"]["read"] + r["errors"]["write"] + r["errors"]["timeout"],
        store=_store_stats(procs) if engine == "sqlite" else {},
    )  # fmt: skip
    return point, capgate_problems(procs)


def run_scaling(
    pin: Pinning,
    tmp: Path,
    config: Path,
    body: Path,
    args: argparse.Namespace,
) -> tuple[list[ScalePoint], list[str]]:
    """Every setup on every engine, in turn, `args.scale_rounds` times."""
    points: list[ScalePoint] = []
    problems: list[str] = []
    os.environ["CAPGATE_LOG_LEVEL"] = "debug"  # the store's counts, logged at its close
    engines = ["sqlite"] + (["postgres"] if args.scale_pg and not pgcluster.missing() else [])
    if args.scale_pg and pgcluster.missing():
        problems.append(f"postgres skipped: {pgcluster.missing()}")
    for engine in engines:
        cm = pgcluster.cluster() if engine == "postgres" else None
        cluster = cm.__enter__() if cm is not None else None
        try:
            pg_pids = functools.partial(_pg_pids, cluster) if cluster is not None else list
            stores = prepare(pin, tmp, config, engine, cluster)
            for round_ in range(1, args.scale_rounds + 1):
                order = SETUPS if round_ % 2 else SETUPS[::-1]  # alternate the order
                for setup in order:
                    for conc in args.scale_conc:
                        if conc == 1 and setup[1] > 1:
                            continue  # one connection reaches one process only
                        point, issues = measure_setup(
                            pin, tmp, config, engine, setup, stores[setup[0]], body, conc,
                            round_, args, pg_pids,
                        )  # fmt: skip
                        points.append(point)
                        problems += issues
                        log(
                            f"  {engine:8} {setup[0]:9} c={conc:<3} r{round_} "
                            f"{point.rps:8,.0f}/s p50 {point.p50_ms:6.2f} ms "
                            f"cpu {point.cpu_us:5.0f} us/req"
                        )
        finally:
            if cm is not None:
                cm.__exit__(None, None, None)
    return points, problems


def _pg_pids(cluster: Any) -> list[int]:
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return tree_pids(postmaster)


def print_scaling(points: list[ScalePoint], floor_rps: float | None) -> None:
    """Per engine and concurrency: each setup's median over rounds, and the ratios."""
    print("Scaling (OpenAI, non-streamed; medians over rounds; cpu = CPU us per request of")
    print("the capgate processes, PostgreSQL's backends included):")
    print()
    print(f"{'engine':8} {'c':>3} {'setup':10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu us':>7}  {'vs 1':>5} {'vs each':>7} {'cpu vs 1':>8}  store")  # fmt: skip
    keys = sorted({(p.engine, p.conc) for p in points}, key=lambda k: (k[0] != "sqlite", k))
    for engine, conc in keys:
        med = {}
        for name, _, _ in SETUPS:
            got = [p for p in points if (p.engine, p.conc, p.setup) == (engine, conc, name)]
            if got:
                med[name] = (got, _median([p.rps for p in got]), _median([p.cpu_us for p in got]))
        one = med.get("1 process")
        each = med.get("2 each")
        for name, (got, rps, cpu) in med.items():
            vs1 = f"{rps / one[1]:.2f}" if one and name != "1 process" and one[1] else ""
            vse = f"{rps / each[1]:.2f}" if each and name == "2 shared" and each[1] else ""
            cpu1 = f"{cpu / one[2]:.2f}" if one and name != "1 process" and one[2] else ""
            print(
                f"{engine:8} {conc:>3} {name:10} {rps:8,.0f} "
                f"{_median([p.p50_ms for p in got]):7.2f} {_median([p.p99_ms for p in got]):7.2f} "
                f"{cpu:7.0f}  {vs1:>5} {vse:>7} {cpu1:>8}  {_store_note(got)}"
            )
    if floor_rps:
        one64 = [
            p.rps
            for p in points
            if p.setup == "1 process" and p.conc == 64 and p.engine == "sqlite"
        ]
        if one64:
            print(f"\none process, SQLite, c=64: {_median(one64) / floor_rps:.2f} of the floor "
                  f"({floor_rps:,.0f} req/s in this run)")  # fmt: skip
    print("\nstore: per request, summed over the processes of a point (warm-up included):")
    print("  groups/req, busy = BEGIN refused because the other process held the lock,")
    print("  reread = transactions that re-read counters and keys (another process wrote),")
    print("  wait = us per op waiting for the lock; txn = us per op inside transactions.")


def _store_note(got: list[ScalePoint]) -> str:
    s = got[-1].store
    ops = s.get("ops") or 0
    if not ops:
        return ""
    groups = s.get("groups", 0) or 1
    return (
        f"ops/group {ops / groups:.1f}, busy/op {s.get('busy_tries', 0) / ops:.2f}, "
        f"reread {s.get('cache_reread', 0) / groups:.0%} of groups, "
        f"wait {s.get('lock_wait_us', 0) / ops:.0f} us/op, "
        f"txn {s.get('transaction_us', 0) / ops:.0f} us/op, "
        f"checkpoints {s.get('checkpoint_ms', 0):.0f} ms"
    )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def as_json(points: list[ScalePoint]) -> list[dict[str, Any]]:
    return [p.__dict__ for p in points]
