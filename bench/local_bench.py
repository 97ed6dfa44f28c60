"""`capgate local daily` against ccusage 20.0.24 on the same generated corpus, side by
side: wall time, CPU and peak memory of each whole process, medians over runs taken in
turn (A B A B ...), so a drift of the machine hits both.

    python bench/local_corpus.py /tmp/corpus --megabytes 500 --files 3000
    python bench/local_bench.py /tmp/corpus --runs 5

    # memory against the corpus's size: 1x, 2x and 4x (peak MB should stay flat)
    for n in 1 2 4; do python bench/local_corpus.py /tmp/c$n --megabytes $((130*n)) \
        --files $((750*n)); done
    python bench/local_bench.py /tmp/c1 /tmp/c2 /tmp/c4 --runs 3

Three commands: ccusage (`daily --offline --json`, all agents), capgate without its
cache (`--no-cache`: every file read), and capgate with the cache warm (a second run over
unchanged files). ccusage comes from `.tools/node_modules/.bin` (bin/test installs it) or
`--ccusage PATH`. Given several corpora (of growing size), it adds a table of each
command's peak memory (maximum resident set of the process and its workers) per corpus,
and how much it grew from the smallest. `--src DIR`: run capgate from another checkout's
`src/` (e.g. `git archive main src | tar -x -C /tmp/before`), to compare. Not a test."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], home: Path, src: str | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one run of `command`."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC"}
    if src:
        env["PYTHONPATH"] = src
    start = os.times().elapsed
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 - the command being timed, from the caller
    _, status, usage = os.wait4(proc.pid, 0)
    wall = os.times().elapsed - start
    if status != 0:
        sys.exit(f"{command[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("homes", type=Path, nargs="+", help="corpora from bench/local_corpus.py")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ccusage", default=str(ROOT / ".tools/node_modules/.bin/ccusage"))
    parser.add_argument("--src", help="capgate's src/ directory to run (default: installed)")
    args = parser.parse_args()
    if not Path(args.ccusage).exists() and not shutil.which(args.ccusage):
        sys.exit(f"no ccusage at {args.ccusage}: npm install --prefix .tools ccusage@20.0.24")
    capgate = [sys.executable, "-m", "capgate", "local", "daily", "--json"]
    commands = {
        "ccusage daily": [args.ccusage, "daily", "--offline", "--json"],
        "capgate local daily --no-cache": [*capgate, "--no-cache"],
        "capgate local daily (cache warm)": capgate,
    }
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    sizes = []
    for home in args.homes:
        for command in commands.values():  # warm-up: page cache, and capgate's own cache
            run(command, home, args.src)
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                results[name].append(run(command, home, args.src))
        sizes.append(sum(p.stat().st_size for p in home.rglob("*.jsonl")) / 2**20)
        print(f"corpus {home}: {sizes[-1]:.0f} MB; medians of {args.runs} runs")
        print(f"{'command':34} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
        for name, rows in results.items():
            wall, cpu, rss = (statistics.median(col) for col in zip(*rows, strict=True))
            peaks[name].append(rss)
            print(f"{name:34} {wall:8.2f} {cpu:8.2f} {rss:8.0f}")
        print()
    if len(args.homes) > 1:
        print("peak MB by corpus size, and its growth from the smallest")
        print(f"{'command':34} " + " ".join(f"{f'{s:.0f} MB':>8}" for s in sizes) + "   growth")
        for name, row in peaks.items():
            cells = " ".join(f"{p:8.0f}" for p in row)
            print(f"{name:34} {cells} {row[-1] - row[0]:+8.0f}")


if __name__ == "__main__":
    main()
