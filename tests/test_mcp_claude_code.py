"""The real Claude Code CLI starts `capgate mcp` from an `--mcp-config` file, and the
model (capgate's mock upstream, told with `mock:tool=NAME`) calls one of its tools: the
tool's structured result is in Claude Code's transcript. Claude Code talks to a real
capgate server, so the budget tool reads that server's truth for the same key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Capgate, need, which


def run_claude_with_mcp(
    capgate: Capgate, key: str, home: Path, tool: str, *extra: str
) -> list[Any]:
    """`claude -p` with capgate's MCP server; the tool results of the transcript."""
    claude = which("claude")
    need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
    assert claude is not None
    config = {"mcpServers": {"capgate": {
        "command": sys.executable, "args": ["-m", "capgate", "mcp"],
        "env": {"CAPGATE_KEY": key, "CAPGATE_URL": capgate.url, "HOME": str(home)},
    }}}  # fmt: skip
    config_path = home / "mcp.json"
    config_path.write_text(json.dumps(config))
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home),
        "ANTHROPIC_BASE_URL": capgate.url, "ANTHROPIC_AUTH_TOKEN": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
        # MCP tools in the request's `tools` (not deferred behind a tool search), so the
        # mock can pick one by name.
        "ENABLE_TOOL_SEARCH": "false",
    }  # fmt: skip
    done = subprocess.run(
        [claude, "-p", f"what did I spend? mock:tool={tool}", "--output-format", "json",
         "--model", "claude-sonnet-4-6", "--mcp-config", str(config_path),
         "--strict-mcp-config", "--allowedTools", f"mcp__capgate__{tool}", *extra],
        env=env, cwd=home, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from claude (rc={done.returncode}):\n{done.stdout}\n{done.stderr}"
    result = json.loads(lines[-1])
    assert result["is_error"] is False, result
    transcripts = list((home / ".claude" / "projects").rglob(f"{result['session_id']}.jsonl"))
    assert len(transcripts) == 1, transcripts
    return _tool_results(transcripts[0])


def _tool_results(transcript: Path) -> list[Any]:
    """One per tool call (Claude Code writes some entries twice)."""
    out: dict[str, Any] = {}
    for line in transcript.read_text().splitlines():
        entry = json.loads(line)
        content = (entry.get("message") or {}).get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "tool_result":
                out.setdefault(part["tool_use_id"], part)
    return list(out.values())


def _text(result: dict[str, Any]) -> str:
    content = result["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _json(result: dict[str, Any]) -> Any:
    """The tool's JSON; Claude Code may append a system reminder after it."""
    value, _ = json.JSONDecoder().raw_decode(_text(result))
    return value


def test_claude_code_calls_capgate_budget(capgate: Capgate, key_name: str, tmp_path: Path) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 50}])
    results = run_claude_with_mcp(capgate, key, tmp_path, "capgate_budget")
    assert len(results) == 1 and not results[0].get("is_error"), results
    budget = _json(results[0])
    assert budget["key"] == key_name
    (money,) = budget["limits"]
    assert money["metric"] == "cost_usd" and money["max"] == "50"
    # Claude Code's own first request went through capgate before the tool ran.
    assert 0 < float(money["used"]) < 50
    assert key not in _text(results[0])


def test_claude_code_calls_session_cost(capgate: Capgate, key_name: str, tmp_path: Path) -> None:
    """The session Claude Code is in is the one the tool prices: a first turn, then the
    session resumed and the tool called (Claude Code writes a turn's answer to its
    transcript after the turn's tools ran, so the first turn is what there is to price)."""
    key = capgate.create_key(key_name, [])
    first = run_claude_with_mcp(capgate, key, tmp_path, "none-such")
    assert first == []
    (transcript,) = (tmp_path / ".claude" / "projects").rglob("*.jsonl")
    results = run_claude_with_mcp(
        capgate, key, tmp_path, "session_cost", "--resume", transcript.stem
    )
    assert len(results) == 1 and not results[0].get("is_error"), results
    cost = _json(results[0])
    assert cost["sessionId"] == transcript.stem
    assert cost["modelsUsed"] == ["claude-sonnet-4-6"] and cost["totalCost"] > 0
    # What capgate charged for that first turn (the same price table, the same tokens).
    charged = [e for e in capgate.ledger(key=key_name) if e["outcome"] == "ok"]
    assert charged and cost["totalCost"] >= float(charged[-1]["cost_usd"])
