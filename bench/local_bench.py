"""`capgate local daily` against ccusage 20.0.24 on the same generated corpus, side by
side: wall time, CPU and peak memory of each whole process, medians over runs taken in
turn (A B A B ...), so a drift of the machine hits both.

    python bench/local_corpus.py /tmp/corpus --megabytes 500 --files 3000
    python bench/local_bench.py /tmp/corpus --runs 5

Three commands: ccusage (`daily --offline --json`, all agents), capgate without its
cache (`--no-cache`: every file read), and capgate with the cache warm (a second run over
unchanged files). ccusage comes from `.tools/node_modules/.bin` (bin/test installs it) or
`--ccusage PATH`. Run it at two corpus sizes to see that memory stays flat. Not a test."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], home: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one run of `command`."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC"}
    start = os.times().elapsed
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = os.times().elapsed - start
    if status != 0:
        sys.exit(f"{command[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("home", type=Path, help="a corpus from bench/local_corpus.py")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ccusage", default=str(ROOT / ".tools/node_modules/.bin/ccusage"))
    args = parser.parse_args()
    if not Path(args.ccusage).exists() and not shutil.which(args.ccusage):
        sys.exit(f"no ccusage at {args.ccusage}: npm install --prefix .tools ccusage@20.0.24")
    capgate = [sys.executable, "-m", "capgate", "local", "daily", "--json"]
    commands = {
        "ccusage daily": [args.ccusage, "daily", "--offline", "--json"],
        "capgate local daily --no-cache": [*capgate, "--no-cache"],
        "capgate local daily (cache warm)": capgate,
    }
    for command in commands.values():  # warm-up: page cache, and capgate's own cache
        run(command, args.home)
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            results[name].append(run(command, args.home))
    size = sum(p.stat().st_size for p in args.home.rglob("*.jsonl")) / 2**20
    print(f"corpus: {size:.0f} MB; medians of {args.runs} runs")
    print(f"{'command':34} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for name, rows in results.items():
        wall, cpu, rss = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"{name:34} {wall:8.2f} {cpu:8.2f} {rss:8.0f}")


if __name__ == "__main__":
    main()
