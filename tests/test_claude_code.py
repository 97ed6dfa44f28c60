"""The real Claude Code CLI (npm @anthropic-ai/claude-code) answers through capgate, and
its requests land in the ledger with their cost. Run as CLIENTS.md describes: its own
HOME, the base URL and key in the environment (`ANTHROPIC_AUTH_TOKEN`, as the docs lead
with), no non-essential traffic."""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal
from pathlib import Path

from conftest import Capgate, need, which


def run_claude(capgate: Capgate, key: str, home: Path, prompt: str, *extra: str) -> dict:
    claude = which("claude")
    need(
        claude is not None,
        "the Claude Code CLI is not installed (bin/test installs it with npm)",
    )
    assert claude is not None
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": capgate.url,
        "ANTHROPIC_AUTH_TOKEN": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [claude, "-p", prompt, "--output-format", "json", *extra],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, (
        f"no JSON result from claude (rc={done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return dict(json.loads(lines[-1]))


def test_claude_code_answers_through_capgate(
    capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 50}])
    result = run_claude(capgate, key, tmp_path, "say hi", "--model", "claude-sonnet-4-6")
    assert result["is_error"] is False, result
    assert "capgate mock" in result["result"]
    entries = [e for e in capgate.ledger(key=key_name) if e["outcome"] == "ok"]
    assert entries, capgate.ledger(key=key_name)
    main = [e for e in entries if e["model"] == "claude-sonnet-4-6"]
    assert main and main[0]["stream"] is True and main[0]["endpoint"] == "messages"
    assert all(Decimal(e["cost_usd"]) > 0 for e in entries)
    spent = {u["metric"]: u for u in capgate.key_usage(key_name)}["cost_usd"]
    assert Decimal(spent["used"]) == sum(Decimal(e["cost_usd"]) for e in entries)


def test_claude_code_shows_a_spent_budget_at_once(
    capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    result = run_claude(capgate, key, tmp_path, "say hi", "--model", "claude-sonnet-4-6")
    assert result["is_error"] is True
    assert "Daily request limit" in result["result"] and key_name in result["result"]
    assert result.get("api_error_status") == 429  # with x-should-retry: false
    assert result["result"].startswith("API Error: Request rejected (429) · capgate: ")
    refused = capgate.ledger(key=key_name, outcome="refused")
    assert len(refused) == 1  # shown at once: Claude Code did not retry
    assert refused[0]["status"] == 429  # the ledger has what was sent


def test_claude_code_gives_up_at_once_on_a_wrong_key(capgate: Capgate, tmp_path: Path) -> None:
    """A mistyped key: capgate's message at once, not ten retries over three minutes."""
    started = time.monotonic()
    result = run_claude(
        capgate, "sk-cg-mistyped", tmp_path, "say hi", "--model", "claude-sonnet-4-6"
    )
    assert time.monotonic() - started < 30
    assert result["is_error"] is True
    assert "capgate: Invalid API key" in result["result"], result
    assert "ANTHROPIC_AUTH_TOKEN" in result["result"] and "/login" not in result["result"]


def test_claude_code_is_told_how_to_fit_a_small_budget(
    capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    """Room left, but less than Claude Code's worst case: the advice is what a Claude Code
    user can change (its output cap, the model), not max_tokens."""
    limits = [{"metric": "cost_usd", "window": "day", "max": "0.05"}]
    key = capgate.create_key(key_name, limits, on_short_budget="reject")
    result = run_claude(capgate, key, tmp_path, "say hi", "--model", "claude-sonnet-4-6")
    assert result["is_error"] is True
    message = result["result"]
    assert "would be exceeded" in message and "CLAUDE_CODE_MAX_OUTPUT_TOKENS" in message
    assert "/model" in message and "Lower max_tokens" not in message
    assert len(capgate.ledger(key=key_name, outcome="refused")) == 1
