#!/usr/bin/env python3
"""capgate's performance benchmark: `bench/run` (see bench/README.md).

Starts bench/fast_upstream.py and capgate (SQLite in a temp dir, a key with limits made
through the admin API), then for each (format, stream, concurrency) point drives wrk
first at the upstream directly, then through capgate, after a warm-up run each. Prints
one table and writes bench/results/latest.json.
"""

# ruff: noqa: S603 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from load import PATHS, body_for, measure
from procs import (
    HOST,
    ROOT,
    Proc,
    cpu_busy_s,
    http,
    log,
    others_busy,
    own_cpu_s,
    pinning,
    proc_cpu_s,
    proc_status,
    tree_pids,
)
from report import (
    MODELS,
    Point,
    ledger_check,
    print_memory_series,
    print_problems,
    print_table,
    print_ttfb,
)
from scale import ScalePoint, as_json, print_scaling, run_scaling
from services import (
    ADMIN_KEY,
    BENCH,
    CAPGATE,
    CAPGATE_CMD,
    LITELLM,
    LITELLM_KEY,
    SIGPIPE_WRAPPER,
    capgate_config,
    capgate_port,
    capgate_problems,
    create_key,
    sanity,
    sigpipe_disposition,
    start_capgate,
    start_floor,
    start_litellm,
    start_upstream,
    start_worker,
    ttfb,
)

RESULTS = BENCH / "results"

# --- the services -------------------------------------------------------------------------


# How capgate is started: as shipped, or through bench/capgate_sigpipe.py (SIGPIPE ignored).


# --- output -------------------------------------------------------------------------------


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=None, help="seconds per point [10]")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up seconds before each point [3; 1 with --quick]",
    )
    p.add_argument(
        "--quick", action="store_true", help="3 s points, 1 s warm-ups, 150 TTFB requests"
    )
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated [1,16,64]")
    p.add_argument("--formats", default="openai,anthropic", help="openai,anthropic")
    p.add_argument("--streams", default="no,yes", help="no,yes")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="capgate processes on consecutive ports, one SQLite file [1]",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also the scaling table: 1 process, 2 sharing a store, 2 with a store each, "
        "on SQLite and PostgreSQL (bench/scale.py)",
    )
    p.add_argument("--scale-rounds", type=int, default=2, help="rounds of the scaling table [2]")
    p.add_argument(
        "--scale-concurrency", default="1,64", help="concurrency of the scaling table [1,64]"
    )
    p.add_argument(
        "--scale-engines", default="sqlite,postgres", help="engines of the scaling table"
    )
    p.add_argument(
        "--ttfb-requests",
        type=int,
        default=None,
        help="sequential requests per TTFB measurement [300]",
    )
    p.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM even if bench/.litellm-venv exists"
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the bare Python pass-through (bench/floor.py) measured beside capgate",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="run capgate exactly as installed even if its SIGPIPE handling kills it "
        "(default: if it would, run it with SIGPIPE ignored and say so)",
    )
    p.add_argument(
        "--json", default=str(RESULTS / "latest.json"), help="where to write the results"
    )
    p.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (logs, config, database)"
    )
    args = p.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)  # wrk takes whole seconds
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.ttfb_requests = args.ttfb_requests or (150 if args.quick else 300)
    args.conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.scale_conc = [int(c) for c in args.scale_concurrency.split(",") if c.strip()]
    args.scale_pg = "postgres" in args.scale_engines
    args.fmts = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.stream_flags = [
        s.strip() in ("yes", "true", "1") for s in args.streams.split(",") if s.strip()
    ]
    for f in args.fmts:
        if f not in MODELS:
            p.error(f"--formats: unknown format {f!r}")
    if args.workers < 1 or any(c < 1 for c in args.conc) or args.duration <= 0 or args.warmup < 0:
        p.error("--workers, --concurrency and --duration must be positive, --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        log("bench/run needs wrk: apt-get update && apt-get install -y wrk")
        return 2
    if not CAPGATE.exists():
        log(f"bench/run needs capgate installed in {ROOT / '.venv'} (bin/capgate sets it up)")
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    pin = pinning(not args.no_pin)
    busy_before = others_busy(1.0) * (os.cpu_count() or 1)
    if busy_before > 0.1:
        log(
            f"bench: WARNING: other processes keep {busy_before:.2f} CPUs busy right now; "
            "the figures will be lower and noisier than on an idle machine"
        )
    tmp = Path(tempfile.mkdtemp(prefix="capgate-bench-"))
    procs: list[Proc] = []
    t_start = time.monotonic()
    n_points = len(args.fmts) * len(args.stream_flags) * len(args.conc)
    log(
        f"bench: {n_points} points x (direct + capgate{'' if args.no_floor else ' + floor'}), "
        f"{args.warmup:g} s warm-up + "
        f"{args.duration:g} s each; {pin.note}; temp dir {tmp}"
    )
    try:
        up, up_port = start_upstream(pin, tmp)
        procs.append(up)
        config = capgate_config(tmp, up_port)
        workers = start_capgate(pin, tmp, config, args.workers)
        procs += workers
        startup = workers[0].startup_s  # of `capgate serve` as installed
        sigpipe = {"as_shipped": sigpipe_disposition(workers[0].pid), "workaround": False}
        if sigpipe["as_shipped"] == "DEFAULT":
            log(
                "bench: !!! capgate serve runs with SIGPIPE at SIG_DFL: a client that closes its "
                "connection mid-answer kills the server (wrk does that at the end of every run)."
            )
            if not args.as_shipped:
                log("bench: restarting capgate with SIGPIPE ignored (bench/capgate_sigpipe.py)")
                for w in workers:
                    w.stop()
                    procs.remove(w)
                CAPGATE_CMD[:] = SIGPIPE_WRAPPER
                workers = start_capgate(pin, tmp, config, args.workers)
                procs += workers
                sigpipe["workaround"] = True
                sigpipe["with_workaround"] = sigpipe_disposition(workers[0].pid)
        cg_port = capgate_port(workers[0])
        addrs = [f"{HOST}:{capgate_port(w)}" for w in workers] if args.workers > 1 else None
        key = create_key(cg_port)
        floor_port = None
        if not args.no_floor:
            floor, floor_port = start_floor(pin, tmp, up_port)
            procs.append(floor)
        log(
            f"bench: upstream on :{up_port}; capgate on :{cg_port}"
            f"{f' (+{args.workers - 1} workers)' if args.workers > 1 else ''}, "
            f"started in {startup:.2f} s; key 'bench' (team 'bench') created"
            f"{f'; floor on :{floor_port}' if floor_port else ''}"
        )

        problems: list[str] = []
        bodies: dict[tuple[str, bool], Path] = {}
        for fmt in args.fmts:
            for stream in args.stream_flags:
                path = tmp / f"body-{fmt}-{'stream' if stream else 'whole'}.json"
                path.write_bytes(body_for(fmt, stream))
                bodies[(fmt, stream)] = path
                targets = [("direct", up_port, None), ("capgate", cg_port, key)]
                if floor_port:
                    targets.append(("floor", floor_port, None))
                for target, base, k in targets:
                    msg = sanity(
                        f"http://{HOST}:{base}{PATHS[fmt]}",
                        path.read_bytes(),
                        k,
                        stream,
                        f"{target} {fmt} stream={stream}",
                    )
                    if msg:
                        problems.append(msg)
        if problems:
            for msg in problems:
                log("!!! " + msg)
            raise RuntimeError("requests fail before any load; see above")

        crashes: list[dict[str, Any]] = []

        def check_workers(where: str) -> None:
            """A capgate process that died is reported loudly and restarted on its port."""
            time.sleep(0.2)  # a death from the run that just ended shows up a moment later
            for idx, w in enumerate(workers):
                if w.alive():
                    continue
                note = w.exit_note()
                crashes.append({"after": where, "what": note, "log_tail": w.tail(15)})
                log(f"  !!! CAPGATE DIED: {note} (after {where}); restarting it on the same port")
                if len(crashes) > 20:
                    raise RuntimeError("capgate died more than 20 times; giving up")
                fresh = start_worker(pin, tmp, config, idx, capgate_port(w), len(crashes))
                workers[idx] = fresh
                procs.append(fresh)

        service_pids = [p.pid for p in procs]
        cpu0 = (time.monotonic(), cpu_busy_s(), own_cpu_s(), proc_cpu_s(service_pids))
        points: list[Point] = []
        served = 0  # requests capgate answered so far, warm-ups included
        memory_series = [{"requests": 0, "rss_kb": _rss_kb(workers)}]
        for fmt in args.fmts:
            for stream in args.stream_flags:
                for conc in args.conc:
                    body = bodies[(fmt, stream)]
                    d = measure(
                        pin,
                        "direct",
                        fmt,
                        stream,
                        conc,
                        f"http://{HOST}:{up_port}{PATHS[fmt]}",
                        body,
                        None,
                        args,
                    )
                    where = f"{fmt} stream={'yes' if stream else 'no'} c={conc}"
                    try:
                        g = measure(
                            pin,
                            "capgate",
                            fmt,
                            stream,
                            conc,
                            f"http://{HOST}:{cg_port}{PATHS[fmt]}",
                            body,
                            key,
                            args,
                            addrs,
                            lambda where=where: check_workers(f"the warm-up of {where}"),
                            lambda: [pid for w in workers for pid in tree_pids(w.pid)],
                        )
                    except RuntimeError as exc:
                        dead = [w.exit_note() for w in workers if not w.alive()]
                        raise RuntimeError(
                            f"{exc}\n!!! {'; '.join(dead) or 'capgate is running'}"
                        ) from None
                    points += [d, g]
                    served += g.requests + g.warmup_requests
                    memory_series.append({"requests": served, "rss_kb": _rss_kb(workers)})
                    if floor_port:
                        f = measure(
                            pin,
                            "floor",
                            fmt,
                            stream,
                            conc,
                            f"http://{HOST}:{floor_port}{PATHS[fmt]}",
                            body,
                            None,
                            args,
                            pids=lambda: [floor.pid],
                        )
                        points.append(f)
                    log(
                        f"  {fmt:9} stream={'yes' if stream else 'no ':3} c={conc:<3} "
                        f"direct {d.rps:8,.0f}/s p50 {d.p50_ms:6.2f} ms | capgate {g.rps:8,.0f}/s "
                        f"p50 {g.p50_ms:6.2f} ms  ({g.rps / d.rps if d.rps else 0:.2f}x)"
                    )
                    check_workers(f"the measured run of {where}")

        ttfbs: dict[str, dict[str, Any]] = {}
        if True in args.stream_flags:
            for fmt in args.fmts:
                body = bodies[(fmt, True)]
                direct = ttfb(
                    pin, f"http://{HOST}:{up_port}{PATHS[fmt]}", body, None, args.ttfb_requests
                )
                through = ttfb(
                    pin, f"http://{HOST}:{cg_port}{PATHS[fmt]}", body, key, args.ttfb_requests
                )
                ttfbs[fmt] = {"direct": direct, "capgate": through}
                check_workers(f"the TTFB requests ({fmt})")
                for r in (direct, through):
                    if r["non_200"]:
                        log(f"!!! TTFB {fmt} {r['url']}: {r['non_200']} non-200 answers")

        cpu1 = (time.monotonic(), cpu_busy_s(), own_cpu_s(), proc_cpu_s(service_pids))
        wall = cpu1[0] - cpu0[0]
        foreign_s = max(0.0, (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2]) - (cpu1[3] - cpu0[3]))
        foreign = {
            "cpu_s": round(foreign_s, 1),
            "cores": round(foreign_s / wall, 3) if wall else 0,
            "cores_before_start": round(busy_before, 3),
        }

        # Memory after the load, then the ledger's count (reads flush queued settlements).
        memory: list[dict[str, Any]] = [
            {"name": w.name, "pid": w.pid, **proc_status(w.pid)} for w in workers
        ]
        if len(workers) > 1:
            time.sleep(1.0)  # let the other workers' writers flush their settlements
        status, data = http("GET", f"http://{HOST}:{cg_port}/admin/keys/bench", token=ADMIN_KEY)
        ledger = json.loads(data) if status == 200 else {"status": status}

        lite_points: list[Point] = []
        lite_info: dict[str, Any] = {}
        want_litellm = not args.no_litellm and "openai" in args.fmts and False in args.stream_flags
        if want_litellm and LITELLM.exists():
            log("bench: LiteLLM proxy (same OpenAI non-stream points) ...")
            lite = None
            try:
                lite = start_litellm(pin, tmp, up_port)
                procs.append(lite)
                lport = lite.port  # type: ignore[attr-defined]
                lurl = f"http://{HOST}:{lport}/v1/chat/completions"
                body = bodies[("openai", False)]
                msg = sanity(lurl, body.read_bytes(), LITELLM_KEY, False, "litellm")
                if msg:
                    raise RuntimeError(msg)
                for conc in args.conc:
                    p = measure(
                        pin, "litellm", "openai", False, conc, lurl, body, LITELLM_KEY, args,
                        pids=lambda: tree_pids(lite.pid),
                    )  # fmt: skip
                    lite_points.append(p)
                    log(
                        f"  litellm   stream=no  c={conc:<3} {p.rps:8,.0f}/s p50 {p.p50_ms:6.2f} ms"
                    )
                rss = sum(proc_status(pid).get("VmRSS", 0) for pid in tree_pids(lite.pid))
                lite_info = {
                    "startup_s": round(lite.startup_s or 0, 2),
                    "rss_kb": rss,
                    "version": litellm_version(),
                }
            except Exception as exc:  # noqa: BLE001 - optional: report and go on
                lite_info = {"error": str(exc)[:2000]}
                log(f"!!! LiteLLM comparison failed: {str(exc)[:2000]}")
            finally:
                if lite is not None:
                    lite.stop()

        scale_points: list[ScalePoint] = []
        if args.scaling:
            log("bench: scaling table (bench/scale.py) ...")
            body = tmp / "body-openai-whole.json"
            body.write_bytes(body_for("openai", False))
            (tmp / "scaling").mkdir()
            scale_points, scale_problems = run_scaling(pin, tmp / "scaling", config, body, args)
            problems += scale_problems

        # --- report --------------------------------------------------------------------
        print()
        print(
            f"capgate benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, "
            f"{os.cpu_count()} CPUs, {args.duration:g} s per point after {args.warmup:g} s warm-up, "
            f"wrk, {'1 capgate process' if args.workers == 1 else f'{args.workers} capgate processes'})"
        )
        print(f"pinning: {pin.note}")
        print("upstream: bench/fast_upstream.py, 32-token answers, whole stream written at once")
        print()
        print_table(points, lite_points)
        print()
        print("ratio = capgate req/s / direct req/s; added p50 = capgate p50 - direct p50.")
        print("'direct' = wrk -> fast upstream; 'capgate' = wrk -> capgate -> fast upstream.")
        if floor_port:
            print(
                "'floor' = wrk -> bench/floor.py -> fast upstream: a bare aiohttp pass-through "
                "(orjson, pooled client, reads usage; no keys, budgets or ledger), same CPU."
            )
        print_ttfb(ttfbs)
        if scale_points:
            print()
            floor64 = [
                p.rps for p in points
                if (p.target, p.fmt, p.stream, p.conc) == ("floor", "openai", False, 64)
            ]  # fmt: skip
            print_scaling(scale_points, floor64[0] if floor64 else None)
            print()
        rss = sum(int(m.get("VmRSS", 0)) for m in memory)
        hwm = sum(int(m.get("VmHWM", 0)) for m in memory)
        print(
            f"capgate resident memory after the run: {rss / 1024:.1f} MiB (VmRSS; peak VmHWM "
            f"{hwm / 1024:.1f} MiB){' summed over workers' if len(memory) > 1 else ''}"
            f"{'; !!! of a process restarted after a death, so it saw only part of the load' if crashes else ''}"
        )
        print_memory_series(memory_series)
        print(f"capgate startup (spawn to 'listening' line): {startup:.2f} s")
        check = ledger_check(ledger, points, ttfbs, len(args.fmts) * len(args.stream_flags))
        if check:
            print(
                check["text"]
                + (
                    " (capgate died and restarted: requests it had in flight "
                    "count as worst case, so this is approximate)"
                    if crashes
                    else ""
                )
            )
        print(
            "budgets: every request is reserved and settled against the key's limits "
            "(cost_usd/month, requests/day, tokens/day) and team 'bench''s cost_usd/month, "
            "all in one transaction each; the ledger records every request."
        )
        flag = "!!! " if foreign["cores"] > 0.05 or busy_before > 0.1 else ""
        print(
            f"{flag}other processes on this machine used {foreign['cores']:.2f} CPUs on average "
            f"during the capgate/direct points ({busy_before:.2f} just before the start)"
            f"{': the figures are lower and noisier than on an idle machine' if flag else ''}"
        )
        if lite_points:
            print(
                f"LiteLLM {lite_info.get('version', '?')}: startup {lite_info['startup_s']:.2f} s, "
                f"resident memory {lite_info['rss_kb'] / 1024:.1f} MiB after its points "
                "(master key, no database: no spend tracking or budgets)"
            )
        elif "error" in lite_info:
            print(f"LiteLLM comparison FAILED: {lite_info['error'][:300]}")
        elif not LITELLM.exists():
            print(
                "LiteLLM comparison skipped: not installed. To add it: python3 -m venv "
                "bench/.litellm-venv && bench/.litellm-venv/bin/pip install 'litellm[proxy]'"
            )
        all_points = points + lite_points
        bad = [p for p in all_points if any(v for k, v in p.errors.items() if k != "status")]
        issues = capgate_problems(workers) + [p for p in problems if p.startswith("capgate")]
        print_problems(bad, sigpipe, crashes, issues)
        print(f"total time {time.monotonic() - t_start:.0f} s")

        results = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "pinning": pin.note,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.conc,
                "workers": args.workers,
                "ttfb_requests": args.ttfb_requests,
            },
            "points": [p.__dict__ for p in all_points],
            "ttfb": ttfbs,
            "capgate": {
                "startup_s": round(startup or 0, 3),
                "memory_kb": memory,
                "memory_series": memory_series,
                "ledger": ledger,
                "ledger_check": check,
                "log_error_lines": issues[:50],
            },
            "other_processes": foreign,
            "capgate_deaths": crashes,
            "sigpipe": sigpipe,
            "litellm": lite_info or None,
            "scaling": as_json(scale_points),
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results: {out}")
        ours_bad = [p for p in bad if p.target != "litellm"]
        return 1 if ours_bad or crashes or issues or sigpipe["as_shipped"] == "DEFAULT" else 0
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    except RuntimeError as exc:
        log(f"bench: FAILED: {exc}")
        for proc in procs:
            if proc.name.startswith("capgate"):
                log(f"--- {proc.name}: {proc.exit_note()}; log tail ---\n{proc.tail(30)}")
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep_tmp:
            log(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _rss_kb(workers: list[Proc]) -> int:
    return sum(int(proc_status(w.pid).get("VmRSS", 0)) for w in workers)


def _interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


def litellm_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [
                str(LITELLM.parent / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
