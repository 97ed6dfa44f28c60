"""The load: request bodies, wrk runs, and one measured point (warm-up, then the run)."""

# ruff: noqa: S603 - runs wrk against loopback only

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import Pinning, log, proc_cpu_s
from report import MODELS, Point
from services import BENCH

PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
PROMPT = "Write one short sentence about load testing."


def body_for(fmt: str, stream: bool) -> bytes:
    msgs = [{"role": "user", "content": PROMPT}]
    if fmt == "openai":  # as the OpenAI SDK sends it: no stream_options (capgate adds them)
        body: dict[str, Any] = {
            "model": MODELS[fmt],
            "messages": msgs,
            "max_completion_tokens": 256,
        }
    else:
        body = {"model": MODELS[fmt], "max_tokens": 256, "messages": msgs}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def run_wrk(
    pin: Pinning,
    url: str,
    body_file: Path,
    key: str | None,
    conc: int,
    seconds: float,
    addrs: list[str] | None = None,
) -> dict[str, Any]:
    threads = min(len(addrs), conc) if addrs else 1
    conns = max(threads, (conc // threads) * threads)
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": key or ""}
    env.pop("BENCH_BODY", None)
    if addrs:
        env["BENCH_ADDRS"] = ",".join(addrs)
    args = pin.wrap(
        "load",
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(BENCH / "post.lua"),
            url,
        ],
    )
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 60)
    match = re.search(r"BENCH_RESULT (\{.*\})", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", proc.stdout)
    result["non2xx_line"] = int(non2xx.group(1)) if non2xx else 0
    result["threads"], result["connections"] = threads, conns
    result["stdout"] = proc.stdout
    return result


def measure(
    pin: Pinning,
    target: str,
    fmt: str,
    stream: bool,
    conc: int,
    url: str,
    body_file: Path,
    key: str | None,
    args: argparse.Namespace,
    addrs: list[str] | None = None,
    after_warmup: Any = None,
    pids: Callable[[], list[int]] | None = None,
) -> Point:
    """One point; `pids` gives the proxy's processes, whose CPU per request is measured."""
    warm = run_wrk(pin, url, body_file, key, conc, args.warmup, addrs) if args.warmup > 0 else None
    if after_warmup is not None:
        after_warmup()
    cpu0 = proc_cpu_s(pids()) if pids is not None else 0.0
    r = run_wrk(pin, url, body_file, key, conc, args.duration, addrs)
    cpu_us = None
    if pids is not None and r["requests"]:
        cpu_us = (proc_cpu_s(pids()) - cpu0) / r["requests"] * 1e6
    lat = r["latency_us"]
    point = Point(
        target,
        fmt,
        stream,
        conc,
        rps=r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        requests=r["requests"],
        errors=dict(r["errors"]),
        connections=r["connections"],
        threads=r["threads"],
        warmup_requests=warm["requests"] if warm else 0,
        cpu_us=cpu_us,
    )
    point.errors["non2xx"] = max(r["errors"]["status"], r["non2xx_line"])
    bad = {k: v for k, v in point.errors.items() if v and k != "status"}
    if bad:
        log(f"  !!! {target} {fmt} stream={stream} c={conc}: {bad}")
        if point.errors["non2xx"]:
            log("  !!! NON-2xx RESPONSES: see the wrk output below and the process log")
            log("      " + r["stdout"].replace("\n", "\n      "))
    return point
