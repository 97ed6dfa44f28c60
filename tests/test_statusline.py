"""`capgate-statusline` (`capgate statusline`): the budget left from a real capgate server
and today's local cost, cached in a small file; fast on a cache hit (nothing of capgate's
core, local readers or the network imported); and shown by the real interactive Claude
Code (tmux) from its `statusLine` setting, as docs/local.md says to set it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import httpx
import pytest

import test_claude_code_interactive as interactive
from conftest import Capgate
from test_claude_code_interactive import Start, ask

# The interactive Claude Code fixtures (a private HOME, Claude Code in tmux), shared.
claude_home = interactive.claude_home
start_claude = interactive.start_claude

SCRIPT = str(Path(sys.executable).parent / "capgate-statusline")  # the installed entry point
SESSION_JSON = json.dumps({"session_id": "s1", "transcript_path": "/x.jsonl",
                           "model": {"id": "claude-sonnet-4-6"}})  # fmt: skip


def today_line(mid: str, tokens: int) -> str:
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    data = {"type": "assistant", "sessionId": "s1", "requestId": "r" + mid, "timestamp": at,
            "message": {"id": mid, "model": "claude-sonnet-4-6",
                        "usage": {"input_tokens": tokens, "output_tokens": 0}}}  # fmt: skip
    return json.dumps(data, separators=(",", ":")) + "\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    project = tmp_path / ".claude" / "projects" / "-w"
    project.mkdir(parents=True)
    (project / "s1.jsonl").write_text(today_line("m1", 1_000_000))  # $3.00 at $3/M input
    return tmp_path


def statusline(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(argv or (SCRIPT,))], input=SESSION_JSON, capture_output=True, text=True,
        timeout=30, check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC", **env},
    )  # fmt: skip


def spend(capgate: Capgate, key: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi mock:input_tokens=1000000"}]}  # fmt: skip
    answer = httpx.post(capgate.url + "/v1/messages", json=body, headers={"x-api-key": key})
    assert answer.status_code == 200, answer.text


def test_shows_budget_left_and_todays_cost(home: Path, capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 10}])
    line = statusline(home, CAPGATE_KEY=key, CAPGATE_URL=capgate.url).stdout
    assert line == "capgate $10.00 left (day) · today $3.00\n"


def test_a_cache_hit_is_the_cached_line_until_the_ttl(
    home: Path, capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 10}])
    env = {"CAPGATE_KEY": key, "CAPGATE_URL": capgate.url}
    assert statusline(home, **env).stdout.startswith("capgate $10.00 left")
    spend(capgate, key)  # $3 more at the server
    with (home / ".claude" / "projects" / "-w" / "s1.jsonl").open("a") as f:
        f.write(today_line("m2", 1_000_000))  # and $3 more locally
    assert statusline(home, **env).stdout == "capgate $10.00 left (day) · today $3.00\n"
    fresh = statusline(home, CAPGATE_STATUSLINE_TTL="0", **env).stdout
    assert fresh.startswith("capgate $6.99") or fresh.startswith("capgate $7.00"), fresh
    assert fresh.endswith(" · today $6.00\n")
    cache = (home / ".cache" / "capgate" / "statusline.json").read_text()
    assert key not in cache  # a hash of who asked, never the key


def test_another_key_is_not_served_from_the_cache(
    home: Path, capgate: Capgate, key_name: str
) -> None:
    one = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 10}])
    two = capgate.create_key(key_name + "-b", [{"metric": "cost_usd", "window": "month", "max": 2}])
    assert "$10.00 left (day)" in statusline(home, CAPGATE_KEY=one, CAPGATE_URL=capgate.url).stdout
    assert "$2.00 left (month)" in statusline(home, CAPGATE_KEY=two, CAPGATE_URL=capgate.url).stdout


def test_without_a_key_or_server_it_still_prints_a_line(home: Path, capgate: Capgate) -> None:
    assert statusline(home).stdout == "today $3.00\n"
    down = statusline(home, CAPGATE_KEY="sk-cg-x", CAPGATE_URL="http://127.0.0.1:9").stdout
    assert down == "capgate unreachable · today $3.00\n"


def test_a_cache_hit_imports_nothing_heavy(home: Path) -> None:
    """What keeps it under 50 ms: a hit reads one small file and prints. (The command
    `capgate statusline` works too, but pays for the whole CLI's imports.)"""
    statusline(home)  # fills the cache
    done = subprocess.run(
        [sys.executable, "-X", "importtime", SCRIPT], input=SESSION_JSON,
        capture_output=True, text=True, timeout=30, check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC"},
    )  # fmt: skip
    assert done.stdout == "today $3.00\n"
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "capgate.cli.statusline" in imported
    heavy = {"capgate.local", "capgate.core", "capgate.mcp", "urllib.request", "typer", "rich",
             "yaml", "httpx", "orjson"}  # fmt: skip
    assert not heavy & imported, heavy & imported


def test_the_cli_command_prints_the_same(home: Path) -> None:
    assert statusline(home, sys.executable, "-m", "capgate", "statusline").stdout == (
        "today $3.00\n"
    )


def test_interactive_claude_code_shows_the_status_line(
    capgate: Capgate,
    key_name: str,
    claude_home: Path,
    start_claude: Start,
) -> None:
    """Settings exactly as docs/local.md shows them; Claude Code's own environment has the
    gateway's URL and key (ANTHROPIC_BASE_URL / ANTHROPIC_AUTH_TOKEN), which is all it
    needs. TTL 0 so the line follows each turn."""
    settings = {"statusLine": {"type": "command",
                               "command": f"CAPGATE_STATUSLINE_TTL=0 {SCRIPT}"}}  # fmt: skip
    (claude_home / ".claude").mkdir(exist_ok=True)
    (claude_home / ".claude" / "settings.json").write_text(json.dumps(settings))
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 50}])
    terminal = start_claude(key, "--model", "claude-sonnet-4-6")
    terminal.wait_for("capgate $50.00 left (day) · today $0.00")
    ask(terminal, "say hi", "capgate mock")
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "local", "daily", "--json"], capture_output=True,
        text=True, timeout=60, check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(claude_home)},
    )  # fmt: skip
    cost = json.loads(done.stdout)["totals"]["totalCost"]
    assert cost > 0
    me = httpx.get(capgate.url + "/v1/me", headers={"authorization": f"Bearer {key}"}).json()
    left = Decimal(me["limits"][0]["remaining"]).quantize(Decimal("0.01"), ROUND_DOWN)
    # Claude Code refreshes the line after the turn: the new numbers, to the cent.
    terminal.wait_for(f"capgate ${left} left (day) · today ${cost:.2f}")
