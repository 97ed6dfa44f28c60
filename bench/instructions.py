#!/usr/bin/env python3
"""Instructions per request: a steady measure of capgate's own cost, for A/B comparisons.

    .venv/bin/python bench/instructions.py                    # openai, no stream, 400 requests
    .venv/bin/python bench/instructions.py --format anthropic --stream --requests 300
    .venv/bin/python bench/instructions.py --concurrency 16   # with wrk: grouped commits

Timings on a shared VM swing by 25 % between two runs of the same code, more than most
changes are worth. This runs capgate under valgrind's callgrind (user-space instructions,
all threads, counted from after a warm-up) and divides by the requests served: the same
code gives the same figure to within about 1 %. It leaves out kernel time (loopback
sockets, thread wake-ups), which `bench/cpuprofile.py` shows. At concurrency 1 the requests
go one after the other on one keep-alive socket (bench/ttfb.py); otherwise wrk drives
them for --seconds and the count is wrk's.

The callgrind file is kept (--out) for `callgrind_annotate`.
"""

# ruff: noqa: S603, S607 - runs fixed local programs (valgrind tools) against loopback only

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import PATHS, body_for, run_wrk
from procs import HOST, Proc, pinning
from services import (
    ADMIN_KEY,
    CAPGATE,
    VENV_PY,
    capgate_config,
    capgate_port,
    create_key,
    start_upstream,
    ttfb,
)


def callgrind(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True)


def total_ir(out: Path) -> int:
    """Sum of the instruction counts of every dump of every thread."""
    total = 0
    for part in out.parent.glob(out.name + "*"):
        for line in part.read_text("utf-8", "replace").splitlines():
            if m := re.match(r"(?:summary|totals): (\d+)", line):
                total += int(m.group(1))
                break
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", choices=sorted(PATHS), default="openai")
    p.add_argument("--stream", action="store_true")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=400, help="at concurrency 1")
    p.add_argument("--seconds", type=int, default=10, help="at concurrency > 1")
    p.add_argument(
        "--floor", action="store_true", help="measure bench/floor.py (no accounting) instead"
    )
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "callgrind.out"
    )
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2

    pin = pinning(True)
    tmp = Path(tempfile.mkdtemp(prefix="capgate-instr-"))
    up, up_port = start_upstream(pin, tmp)
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for old in args.out.parent.glob(args.out.name + "*"):
        old.unlink()
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
        f"--callgrind-out-file={args.out}", "--separate-threads=no", str(VENV_PY),
    ]  # fmt: skip
    if args.floor:
        cmd += [str(Path(__file__).parent / "floor.py"), "--upstream", f"http://{HOST}:{up_port}"]
        ready = r"floor listening on ([\d.]+):(\d+)"
    else:
        cmd += [
            str(CAPGATE), "serve", "--config", str(capgate_config(tmp, up_port)), "--host",
            HOST, "--port", "0", "--database-url", f"sqlite:///{tmp / 'capgate.db'}",
        ]  # fmt: skip
        ready = r"capgate listening on http://([\d.]+):(\d+)"
    proc = Proc(
        "floor" if args.floor else "capgate",
        pin.wrap("proxy", cmd),
        tmp / "proxy.log",
        ready,
        env={"CAPGATE_ADMIN_KEY": ADMIN_KEY},
    )
    try:
        proc.wait_ready(600)
        port = capgate_port(proc)
        key = "" if args.floor else create_key(port)
        body_file = tmp / "body.json"
        body_file.write_bytes(body_for(args.format, args.stream))
        url = f"http://{HOST}:{port}{PATHS[args.format]}"
        ttfb(pin, url, body_file, key, 100)  # warm-up: caches, pools, lazy imports
        callgrind(proc.pid, "-i", "on")
        callgrind(proc.pid, "-z")
        if args.concurrency == 1:
            ttfb(pin, url, body_file, key, args.requests)
            served = args.requests + 30  # ttfb.py's own warm-up requests count too
        else:
            served = run_wrk(pin, url, body_file, key, args.concurrency, args.seconds)["requests"]
        time.sleep(0.3)  # settlements of the last requests
        callgrind(proc.pid, "-d")
        callgrind(proc.pid, "-i", "off")
        ir = total_ir(args.out)
        print(
            f"{'floor' if args.floor else 'capgate'} "
            f"{args.format} stream={args.stream} c={args.concurrency}: {served} requests, "
            f"{ir / served / 1e3:,.0f} k instructions per request (user space, all threads)"
        )
    finally:
        proc.stop()
        up.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
