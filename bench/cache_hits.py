"""The response cache's benchmark (docs/cache.md): a hit against a forwarded request.

    .venv/bin/python bench/cache_hits.py                 # both keys, c=1 and c=16
    .venv/bin/python bench/cache_hits.py --only forwarded --capgate /other/.venv/bin/capgate

One capgate process (SQLite) in front of bench/fast_upstream.py, as bench/run sets it up
(team `bench`, key `bench` with three limits), plus key `bench-cached` in the same team
with `cache: {ttl: 1h}`. Each point is wrk posting the same body for `--duration`
seconds after a warm-up (which fills the cache): `forwarded` is the key without a cache
setting (the hot path with no cache: compare it with another build through
`--capgate`), `hit` the cached key, answered from memory. Prints req/s and p50.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from load import PATHS, body_for, run_wrk
from procs import HOST, http, pinning
from services import (
    ADMIN_KEY,
    CAPGATE_CMD,
    KEY_LIMITS,
    capgate_config,
    capgate_port,
    create_key,
    start_capgate,
    start_upstream,
)


def cached_key(port: int) -> str:
    body = {"name": "bench-cached", "team": "bench", "limits": KEY_LIMITS, "cache": {"ttl": "1h"}}
    status, data = http("POST", f"http://{HOST}:{port}/admin/keys", body, ADMIN_KEY)
    if status != 201:
        raise RuntimeError(f"POST /admin/keys answered {status}: {data[:500]!r}")
    return str(json.loads(data)["key"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=3, help="seconds per point [3]")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds [1]")
    p.add_argument("--concurrency", default="1,16", help="comma-separated [1,16]")
    p.add_argument("--formats", default="anthropic,openai")
    p.add_argument("--streams", default="no,yes")
    p.add_argument("--only", choices=("forwarded", "hit"), help="one kind of point")
    p.add_argument("--capgate", help="another capgate executable (e.g. main's), to compare")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.capgate:
        CAPGATE_CMD[:] = [args.capgate]
    pin = pinning(True)
    tmp = Path(tempfile.mkdtemp(prefix="capgate-cache-bench-"))
    up, up_port = start_upstream(pin, tmp)
    procs = [up]
    try:
        procs += start_capgate(pin, tmp, capgate_config(tmp, up_port), 1)
        port = capgate_port(procs[-1])
        keys = {"forwarded": create_key(port)}
        if args.only != "forwarded":
            keys["hit"] = cached_key(port)
        if args.only == "hit":
            del keys["forwarded"]
        print(f"{'point':<34} {'req/s':>9} {'p50 ms':>8}")
        for fmt in args.formats.split(","):
            for stream in (s == "yes" for s in args.streams.split(",")):
                body = tmp / f"{fmt}-{stream}.json"
                body.write_bytes(body_for(fmt, stream))
                url = f"http://{HOST}:{port}{PATHS[fmt]}"
                for conc in (int(c) for c in args.concurrency.split(",")):
                    for kind, key in keys.items():
                        if args.warmup:
                            run_wrk(pin, url, body, key, conc, args.warmup)
                        r = run_wrk(pin, url, body, key, conc, args.duration)
                        rps = r["requests"] / (r["duration_us"] / 1e6)
                        name = f"{kind} {fmt} {'stream' if stream else 'whole'} c={conc}"
                        print(f"{name:<34} {rps:>9.0f} {r['latency_us']['p50'] / 1000:>8.2f}")
                        sys.stdout.flush()
    finally:
        for proc in reversed(procs):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
