#!/usr/bin/env python3
"""Instructions per request of the SQLite store alone: reserve + settle, in process.

    .venv/bin/python bench/store_instructions.py                   # 16 at a time
    .venv/bin/python bench/store_instructions.py --concurrency 1   # each its own transaction

No HTTP, no upstream: a store on a fresh file, the bench's team and key limits
(`services.TEAM_LIMITS`, `KEY_LIMITS`), and rounds of `--concurrency` requests that each
reserve, then settle. Run twice under callgrind (`--rounds` and five times as many), the
difference divided by the extra requests is the store's instructions per request, start-up
left out; the WAL checkpoint loop is off (time-based work would make the count depend on
how fast valgrind ran). Same code, same figure to within ~0.5 %. Compare two trees by
putting the other's `src/` first: `PYTHONPATH=/tmp/main/src .venv/bin/python bench/...`.
"""

# ruff: noqa: S603, S607 - runs valgrind on this same script

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services import KEY_LIMITS, TEAM_LIMITS


async def serve(concurrency: int, rounds: int) -> None:
    from capgate.core.engine import Amounts
    from capgate.core.limits import Limit, ScopeKind
    from capgate.core.money import Usage
    from capgate.keys import display_prefix, key_hash, new_key
    from capgate.store import sqlite
    from capgate.store.base import Outcome, RequestInfo, Reservation, ScopeFields

    sqlite.CHECKPOINT_SECONDS = 3600.0
    store = sqlite.SQLiteStore(os.path.join(tempfile.mkdtemp(prefix="capgate-store-"), "c.db"))
    await store.start()
    team = tuple(Limit.from_json(x) for x in TEAM_LIMITS)
    await store.create_scope(ScopeKind.TEAM, "bench", ScopeFields(limits=team))
    key_id, raw = new_key()
    limits = tuple(Limit.from_json(x) for x in KEY_LIMITS)
    await store.create_scope(
        ScopeKind.KEY, "bench", ScopeFields(team="bench", limits=limits), scope_id=key_id,
        secret_hash=key_hash(raw), prefix=display_prefix(raw),
    )  # fmt: skip
    served = 0

    async def one() -> None:
        nonlocal served
        served += 1
        info = RequestInfo(
            f"req-{served}", key_id, "gpt-5-mini", "openai", "gpt-5-mini", "chat", False,
            time.time(),
        )  # fmt: skip
        res = await store.reserve(info, Amounts(1, 20, 1000, 500_000))
        assert isinstance(res, Reservation), res
        await asyncio.sleep(0)  # the answer is relayed meanwhile
        outcome = Outcome(200, "ok", Usage(20, 10), 1200, 3.5, None, 1, None, "gpt-5-mini")
        await store.settle(res, outcome)

    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    await store.close()


def instructions(concurrency: int, rounds: int) -> int:
    out = Path(tempfile.mkdtemp(prefix="capgate-store-cg-")) / "callgrind.out"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, "--serve", "-c", str(concurrency), "--rounds", str(rounds)],
        check=True, capture_output=True,
    )  # fmt: skip
    total = 0
    for part in out.parent.glob(out.name + "*"):
        if m := re.search(r"^summary: (\d+)", part.read_text("utf-8", "replace"), re.M):
            total += int(m.group(1))
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=0, help="default: 3200 requests between runs")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.concurrency, args.rounds))
        return 0
    rounds = args.rounds or max(1, 800 // args.concurrency)
    few, many = instructions(args.concurrency, rounds), instructions(args.concurrency, 5 * rounds)
    per = (many - few) / (4 * rounds * args.concurrency)
    print(f"store c={args.concurrency}: {per / 1000:,.1f} k instructions per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
