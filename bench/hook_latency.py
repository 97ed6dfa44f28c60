"""The time hook mode adds per prompt: the hook process (`/usr/bin/python3 -I hook.py claude`
with a UserPromptSubmit event on stdin) from start to exit, gating against a real capgate
server on loopback (SQLite), as HOOKS.md §7 measured it. Median of N runs (default 20);
the goal is under 60 ms on the 2-core test machine (docs/hook-mode.md#speed).

    .venv/bin/python bench/hook_latency.py [--runs 20]
"""

# ruff: noqa: S603 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "capgate" / "hook" / "client"
ADMIN = "sk-cg-admin-bench-0123456789abcdef"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    config = tmp / "capgate.yaml"
    config.write_text("providers: []\nmodels: []\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--port", "0",
         "--database-url", f"sqlite:///{tmp / 'capgate.db'}", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "CAPGATE_ADMIN_KEY": ADMIN},
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"capgate listening on (\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("capgate did not start")


def enrol(url: str, folder: Path) -> None:
    """A person with a limit, an install code, the machine's token: the hook's folder."""
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"})
    limits = [{"metric": "cost_usd", "window": "day", "max": 1000}]
    admin.post("/admin/users", json={"name": "bench", "limits": limits}).raise_for_status()
    code = admin.post("/admin/hook/codes", json={"user": "bench"}).json()["code"]
    body = {"code": code, "hostname": "bench", "os": "linux", "os_user": "bench",
            "agents": ["claude"], "hook_version": "1"}  # fmt: skip
    token = httpx.post(url + "/hook/v1/enrol", json=body).json()["token"]
    folder.mkdir()
    shutil.copy(CLIENT / "hook.py", folder / "hook.py")
    (folder / "config.json").write_text(json.dumps({"server": url}))
    (folder / "token").write_text(token + "\n")


def timed(args: list[str], stdin: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "block" in done.stdout:
        raise RuntimeError(f"the hook did not admit: {done.stdout} {done.stderr}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, url = start_server(tmp)
        try:
            enrol(url, tmp / "capgate-hook")
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "XDG_STATE_HOME": str(tmp / "state")}
            transcript = tmp / "session.jsonl"
            transcript.write_text("")
            hook = [PYTHON, "-I", str(tmp / "capgate-hook" / "hook.py"), "claude"]
            bare = [timed([PYTHON, "-I", "-c", "pass"], "", env) for _ in range(runs)]
            gate = []
            for i in range(runs + 1):  # the first run warms the server's caches: not counted
                event = {"hook_event_name": "UserPromptSubmit", "session_id": "bench",
                         "prompt_id": f"p{i}", "prompt": "say hi", "cwd": str(tmp),
                         "transcript_path": str(transcript)}  # fmt: skip
                ms = timed(hook, json.dumps(event), {**env, "ANTHROPIC_MODEL": "claude-sonnet-4-6"})
                gate.append(ms) if i else None
            tool = {"hook_event_name": "PreToolUse", "session_id": "bench", "prompt_id": "p1",
                    "tool_name": "Glob", "transcript_path": str(transcript)}  # fmt: skip
            check = [timed(hook, json.dumps(tool), env) for _ in range(runs)]
            token = (tmp / "capgate-hook" / "token").read_text().strip()
            server = []  # the server's share: the same gate asked from this process
            with httpx.Client(headers={"authorization": f"Bearer {token}"}) as client:
                for i in range(runs):
                    body = {"agent": "claude", "session_id": "bench-direct",
                            "prompt_id": f"d{i}", "model": "claude-sonnet-4-6",
                            "model_source": "env"}  # fmt: skip
                    started = time.perf_counter()
                    client.post(url + "/hook/v1/gate", json=body).raise_for_status()
                    server.append((time.perf_counter() - started) * 1000)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"python3 -I -c pass       median {statistics.median(bare):6.1f} ms")
    print(f"hook UserPromptSubmit    median {statistics.median(gate):6.1f} ms  "
          f"(min {min(gate):.1f}, max {max(gate):.1f}, {runs} runs)")  # fmt: skip
    print(
        f"server: one gate request median {statistics.median(server):6.1f} ms (from a warm client)"
    )
    print(f"hook PreToolUse          median {statistics.median(check):6.1f} ms  "
          f"(min {min(check):.1f}, max {max(check):.1f}, {runs} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
