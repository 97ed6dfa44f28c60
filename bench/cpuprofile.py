#!/usr/bin/env python3
"""Where capgate's time goes: CPU per request, and a py-spy profile, under wrk load.

    .venv/bin/python bench/cpuprofile.py                      # openai, no stream, c=64, 8 s
    .venv/bin/python bench/cpuprofile.py --format anthropic --stream -c 1 --seconds 6
    .venv/bin/python bench/cpuprofile.py --no-spy             # CPU per request only
    .venv/bin/python bench/cpuprofile.py --rounds 3           # three readings of the same setup

Same setup and pinning as `bench/run` (fast upstream and wrk on the last CPU, capgate
alone on the others, SQLite, the bench key with its limits and team budget). Prints the
CPU seconds the capgate process used per request (from /proc/PID/stat: steadier than
req/s on a shared machine), and, unless --no-spy, the functions with the most samples
(own and total) from `py-spy record --format raw` over the same run. The raw profile is
kept (--out) for a flame graph (`py-spy` writes speedscope / svg with other --format).
"""

# ruff: noqa: S603 - runs fixed local programs against loopback only

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import PATHS, body_for, run_wrk
from procs import HOST, pinning, tree_pids
from services import (
    VENV_PY,
    capgate_config,
    capgate_port,
    create_key,
    start_capgate,
    start_upstream,
)


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, threads included."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def summarise(raw: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text("utf-8", "replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            total[frame] += count
    if not samples:
        print("py-spy recorded no samples")
        return
    print(f"\n{samples} samples; by thread:")
    for name, count in threads.most_common(6):
        print(f"  {100 * count / samples:5.1f}%  {name}")
    for title, counter in (("own", own), ("total (inclusive)", total)):
        print(f"\ntop {top} by {title} samples:")
        for name, count in counter.most_common(top):
            print(f"  {100 * count / samples:5.1f}%  {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", choices=sorted(PATHS), default="openai")
    p.add_argument("--stream", action="store_true")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="CPU readings, one after the other")
    p.add_argument("--no-spy", action="store_true", help="CPU per request only")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "profile.raw"
    )
    args = p.parse_args()

    pin = pinning(True)
    tmp = Path(tempfile.mkdtemp(prefix="capgate-profile-"))
    up, up_port = start_upstream(pin, tmp)
    procs = start_capgate(pin, tmp, capgate_config(tmp, up_port), 1)
    try:
        port = capgate_port(procs[0])
        key = create_key(port)
        body_file = tmp / "body.json"
        body_file.write_bytes(body_for(args.format, args.stream))
        url = f"http://{HOST}:{port}{PATHS[args.format]}"
        run_wrk(pin, url, body_file, key, args.concurrency, 2)  # warm-up
        pids = tree_pids(procs[0].pid)
        spy = None
        if not args.no_spy:
            spy_bin = shutil.which("py-spy") or str(VENV_PY.parent / "py-spy")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [spy_bin, "record", "--format", "raw", "--threads", "--gil", "-r", "500", "-o"]
            cmd += [str(args.out), "-p", str(procs[0].pid), "-d", str(args.seconds * args.rounds)]
            spy = subprocess.Popen(
                pin.wrap("load", [*cmd, *(["--native"] if args.native else [])]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
        for _ in range(args.rounds):
            (user0, sys0) = cpu_split(pids)
            done = run_wrk(pin, url, body_file, key, args.concurrency, args.seconds)["requests"]
            (user1, sys1) = cpu_split(pids)
            per = 1e6 / max(done, 1)
            print(
                f"{args.format} stream={args.stream} c={args.concurrency}: "
                f"{done / args.seconds:,.0f} req/s, capgate CPU per request "
                f"{per * (user1 - user0 + sys1 - sys0):,.0f} µs "
                f"(user {per * (user1 - user0):,.0f}, system {per * (sys1 - sys0):,.0f})"
            )
        if spy is not None:
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)
                return 1
            summarise(args.out, args.top)
    finally:
        for proc in [*procs, up]:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
