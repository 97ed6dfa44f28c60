#!/usr/bin/env python3
"""PostgreSQL beside SQLite: `bench/run-pg` (see bench/README.md, "PostgreSQL").

One run, side by side on the same load (bench/run's bodies, key, team and wrk script):
one capgate node on SQLite, one node on PostgreSQL, and two nodes on PostgreSQL (wrk's
connections split over them), each against the fast upstream, after a direct run of the
same point. PostgreSQL is a throwaway cluster in a temp dir (tests/pgcluster.py), pinned to
the proxy CPUs with capgate: the database's work is then charged to the same CPUs as
SQLite's, which runs inside capgate's process. Prints one table; writes
bench/results/pg.json.
"""

# ruff: noqa: S603 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import PATHS, body_for, measure
from procs import HOST, ROOT, Pinning, Proc, log, others_busy, pinning, tree_pids
from report import MODELS, Point
from services import (
    CAPGATE_CMD,
    SIGPIPE_WRAPPER,
    capgate_config,
    capgate_port,
    capgate_problems,
    create_key,
    sanity,
    sigpipe_disposition,
    start_capgate,
    start_upstream,
)

sys.path.insert(0, str(ROOT / "tests"))
import pgcluster  # the tests' throwaway cluster (after the path is set)

RESULTS = Path(__file__).resolve().parent / "results"
SETUPS = [("sqlite", 1), ("postgres", 1), ("postgres", 2)]


def label(engine: str, nodes: int) -> str:
    return f"{engine} x{nodes}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run-pg", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=None, help="seconds per point [10]")
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds [3; 1 with --quick]")
    p.add_argument("--quick", action="store_true", help="3 s points, 1 s warm-ups")
    p.add_argument("--concurrency", default="1,64", help="comma-separated [1,64]")
    p.add_argument("--formats", default="openai,anthropic", help="openai,anthropic")
    p.add_argument("--streams", default="no,yes", help="no,yes")
    p.add_argument(
        "--pg-cpus",
        choices=["proxy", "load", "none"],
        default="proxy",
        help="where PostgreSQL runs: on capgate's CPUs (default), wrk's, or unpinned",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--json", default=str(RESULTS / "pg.json"), help="where to write the results")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir")
    args = p.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.fmts = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.stream_flags = [s.strip() in ("yes", "true", "1") for s in args.streams.split(",")]
    for f in args.fmts:
        if f not in MODELS:
            p.error(f"--formats: unknown format {f!r}")
    return args


def pin_cluster(cluster: pgcluster.Cluster, cpus: str | None) -> None:
    """Move the running server and every process it has forked onto `cpus`; backends
    forked later inherit the postmaster's affinity."""
    if cpus is None:
        return
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    for pid in tree_pids(postmaster):
        taskset = ["taskset", "-a", "-cp", cpus, str(pid)]  # from PATH, as procs.Pinning
        subprocess.run(taskset, capture_output=True, check=False)


def run_setup(
    pin: Pinning,
    tmp: Path,
    config: Path,
    engine: str,
    nodes: int,
    url: str,
    bodies: dict[tuple[str, bool], Path],
    args: argparse.Namespace,
) -> tuple[list[Point], list[str]]:
    workers: list[Proc] = start_capgate(pin, tmp, config, nodes, database_url=url)
    try:
        ports = [capgate_port(w) for w in workers]
        addrs = [f"{HOST}:{port}" for port in ports] if nodes > 1 else None
        key = create_key(ports[0])
        for (fmt, stream), body in bodies.items():
            for port in ports:
                msg = sanity(
                    f"http://{HOST}:{port}{PATHS[fmt]}", body.read_bytes(), key, stream, engine
                )
                if msg:
                    raise RuntimeError(msg)
        points = []
        for (fmt, stream), body in bodies.items():
            for conc in args.conc:
                url_ = f"http://{HOST}:{ports[0]}{PATHS[fmt]}"
                point = measure(
                    pin, label(engine, nodes), fmt, stream, conc, url_, body, key, args, addrs
                )
                points.append(point)
                log(
                    f"  {label(engine, nodes):12} {fmt:9} stream={'yes' if stream else 'no '} "
                    f"c={conc:<3} {point.rps:8,.0f}/s p50 {point.p50_ms:6.2f} ms"
                )
        dead = [w.exit_note() for w in workers if not w.alive()]
        return points, dead + capgate_problems(workers)
    finally:
        for w in workers:
            w.stop()


def print_side_by_side(points: list[Point]) -> None:
    by = {(p.target, p.fmt, p.stream, p.conc): p for p in points}
    names = [label(e, n) for e, n in SETUPS]
    head = f"{'format':9} {'stream':6} {'c':>3}  {'direct':>16}"
    for name in names:
        head += f"  {name:>24}"
    print(head)
    print(f"{'':22}  {'req/s   p50 ms':>16}" + f"  {'req/s   p50 ms  vs sqlite':>24}" * len(names))
    keys = sorted({(p.fmt, p.stream, p.conc) for p in points})
    for fmt, stream, conc in keys:
        d = by.get(("direct", fmt, stream, conc))
        row = f"{fmt:9} {'yes' if stream else 'no':6} {conc:>3}  "
        row += f"{d.rps:8,.0f} {d.p50_ms:7.2f}" if d else f"{'-':>16}"
        base = by.get((names[0], fmt, stream, conc))
        for name in names:
            g = by.get((name, fmt, stream, conc))
            if g is None:
                row += f"  {'-':>24}"
                continue
            if base is None or g is base:
                versus = ""
            elif conc == 1:
                versus = f"{g.p50_ms - base.p50_ms:+.2f} ms"
            else:
                versus = f"{g.rps / base.rps:.2f}x" if base.rps else "-"
            row += f"  {g.rps:8,.0f} {g.p50_ms:7.2f} {versus:>8}"
        print(row)


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        log("bench/run-pg needs wrk: apt-get update && apt-get install -y wrk")
        return 2
    why = pgcluster.missing()
    if why:
        log(f"bench/run-pg needs a PostgreSQL server: {why}")
        return 2
    pin = pinning(not args.no_pin)
    pg_cpus = {"proxy": pin.proxy_cpus, "load": pin.load_cpu, "none": None}[args.pg_cpus]
    busy_before = others_busy(1.0) * (os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="capgate-bench-pg-"))
    procs: list[Proc] = []
    t_start = time.monotonic()
    log(f"bench: {pin.note}; PostgreSQL on CPUs {pg_cpus or 'any'}; temp dir {tmp}")
    problems: list[str] = []
    points: list[Point] = []
    try:
        with pgcluster.cluster() as cluster:
            pin_cluster(cluster, pg_cpus)
            up, up_port = start_upstream(pin, tmp)
            procs.append(up)
            config = capgate_config(tmp, up_port)
            probe = start_capgate(pin, tmp, config, 1)
            if sigpipe_disposition(probe[0].pid) == "DEFAULT":
                CAPGATE_CMD[:] = SIGPIPE_WRAPPER  # as bench/run does: see its README
            for w in probe:
                w.stop()
            bodies: dict[tuple[str, bool], Path] = {}
            for fmt in args.fmts:
                for stream in args.stream_flags:
                    path = tmp / f"body-{fmt}-{'stream' if stream else 'whole'}.json"
                    path.write_bytes(body_for(fmt, stream))
                    bodies[(fmt, stream)] = path
            for (fmt, stream), body in bodies.items():
                for conc in args.conc:
                    url = f"http://{HOST}:{up_port}{PATHS[fmt]}"
                    points.append(measure(pin, "direct", fmt, stream, conc, url, body, None, args))
            for engine, nodes in SETUPS:
                where = tmp / f"{engine}-{nodes}"
                where.mkdir()
                url = (
                    f"sqlite:///{where / 'capgate.db'}"
                    if engine == "sqlite"
                    else cluster.new_database("bench")
                )
                log(f"bench: {label(engine, nodes)} ...")
                got, issues = run_setup(pin, where, config, engine, nodes, url, bodies, args)
                points += got
                problems += issues
    except RuntimeError as exc:
        log(f"bench: FAILED: {exc}")
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"capgate on PostgreSQL beside SQLite ({time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"{platform.node()}, {os.cpu_count()} CPUs, {args.duration} s per point after "
        f"{args.warmup} s warm-up, wrk)"
    )
    print(f"pinning: {pin.note}; PostgreSQL on CPUs {pg_cpus or 'any'}")
    print()
    print_side_by_side(points)
    print()
    print("vs sqlite: req/s ratio to one node on SQLite (c > 1), added p50 over it (c = 1).")
    bad = [p for p in points if any(v for k, v in p.errors.items() if k != "status")]
    for p in bad:
        print(f"!!! ERRORS {p.target} {p.fmt} stream={p.stream} c={p.conc}: {p.errors}")
    for line in problems[:20]:
        print(f"!!! {line}")
    print(f"other processes kept {busy_before:.2f} CPUs busy just before the start")
    print(f"total time {time.monotonic() - t_start:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "pinning": pin.note,
        "pg_cpus": pg_cpus,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup},
        "points": [p.__dict__ for p in points],
        "problems": problems,
    }
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return 1 if bad or problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
