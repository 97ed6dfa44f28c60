"""The real Codex CLI (npm @openai/codex) through capgate's Responses API, configured as
CLIENTS.md describes: its own CODEX_HOME with a provider whose base URL is capgate."""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal
from pathlib import Path

from conftest import Capgate, need, which


def run_codex(capgate: Capgate, key: str, home: Path, prompt: str) -> list[dict]:
    codex = which("codex")
    need(codex is not None, "the Codex CLI is not installed (bin/test installs it with npm)")
    assert codex is not None
    (home / "config.toml").write_text(
        'model_provider = "gw"\n'
        'model = "gpt-5-mini"\n'
        "[model_providers.gw]\n"
        'name = "capgate"\n'
        f'base_url = "{capgate.url}/v1"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "CODEX_HOME": str(home),
        "OPENAI_API_KEY": key,
    }
    done = subprocess.run(
        [codex, "exec", "--skip-git-repo-check", "--json", "--disable", "plugins", prompt],
        env=env, cwd=home, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events, (
        f"no JSON events from codex (rc={done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return events


def test_codex_answers_through_capgate(capgate: Capgate, key_name: str, tmp_path: Path) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    events = run_codex(capgate, key, tmp_path, "say hi")
    messages = [
        e["item"]["text"]
        for e in events
        if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"
    ]
    assert messages and "capgate mock" in messages[0]
    (entry,) = capgate.ledger(key=key_name)
    assert entry["endpoint"] == "responses" and entry["stream"] is True and entry["outcome"] == "ok"
    assert Decimal(entry["cost_usd"]) > 0


def test_codex_shows_a_spent_budget_at_once(
    capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    events = run_codex(capgate, key, tmp_path, "say hi")
    failed = [e for e in events if e.get("type") == "turn.failed"]
    assert (
        failed and f'Daily request limit of key \\"{key_name}\\"' in failed[0]["error"]["message"]
    )
    refused = capgate.ledger(key=key_name)
    assert len(refused) == 1 and refused[0]["status"] == 400  # one request: not retried


def test_codex_shows_a_wrong_key_at_once(capgate: Capgate, tmp_path: Path) -> None:
    """A mistyped key: capgate's message after one request, not five retries."""
    started = time.monotonic()
    events = run_codex(capgate, "sk-cg-mistyped", tmp_path, "say hi")
    elapsed = time.monotonic() - started
    failed = [e for e in events if e.get("type") == "turn.failed"]
    assert failed and "Invalid API key" in failed[0]["error"]["message"], events
    assert not [e for e in events if "Reconnecting" in json.dumps(e)], events  # no retries
    assert elapsed < 8, elapsed
