"""`capgate local` on session files written by the REAL Claude Code and Codex CLIs (run
through a capgate server and the mock upstream, in a temporary HOME): several projects,
multi-turn (continued) sessions, a tool call, 1-hour cache writes, several models. The
numbers are checked against the ledger's view of the same answers and, when ccusage
20.0.24 is installed (bin/test installs it), against ccusage: tokens equal, cost within
0.5%."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import Capgate, need, which

SPLIT_1H = json.dumps(
    {"input_tokens": 12, "output_tokens": 34, "cache_creation_input_tokens": 3000,
     "cache_read_input_tokens": 500,
     "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}},
    separators=(",", ":"),
)  # fmt: skip


def _claude(capgate: Capgate, key: str, home: Path, cwd: Path, *args: str) -> None:
    claude = which("claude")
    need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
    assert claude is not None
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home),
        "ANTHROPIC_BASE_URL": capgate.url, "ANTHROPIC_AUTH_TOKEN": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
    }  # fmt: skip
    done = subprocess.run(
        [claude, *args, "--output-format", "json"], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=180, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def _codex(capgate: Capgate, key: str, home: Path, cwd: Path, model: str, prompt: str) -> None:
    codex = which("codex")
    need(codex is not None, "the Codex CLI is not installed (bin/test installs it)")
    assert codex is not None
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model_provider = "gw"\n[model_providers.gw]\nname = "capgate"\n'
        f'base_url = "{capgate.url}/v1"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "CODEX_HOME": str(codex_home), "OPENAI_API_KEY": key}  # fmt: skip
    done = subprocess.run(
        [codex, "exec", "--skip-git-repo-check", "--json", "--disable", "plugins",
         "-m", model, prompt],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def home(capgate: Capgate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME with real sessions of both CLIs."""
    home = tmp_path_factory.mktemp("localhome")
    key = capgate.create_key("local-real", [{"metric": "cost_usd", "window": "day", "max": 500}])
    webapp, api, tools = (home / "code" / n for n in ("webapp", "api", "tools"))
    for d in (webapp, api, tools):
        d.mkdir(parents=True)
    _claude(capgate, key, home, webapp, "-p", "hello", "--model", "claude-sonnet-4-6")
    _claude(capgate, key, home, webapp, "-c", "-p", f"again mock:usage={SPLIT_1H}",
            "--model", "claude-sonnet-4-6")  # fmt: skip
    _claude(capgate, key, home, api, "-p", "hi mock:words=300", "--model", "claude-haiku-4-5")
    _claude(capgate, key, home, tools, "-p", "use a tool mock:tool", "--model",
            "claude-sonnet-4-6", "--allowedTools", "Bash,Read,Glob,Grep,LS")  # fmt: skip
    _codex(capgate, key, home, api, "gpt-5.2-codex", "say hi")
    _codex(capgate, key, home, tools, "gpt-5-mini", "write more mock:words=200")
    return home


def _local(home: Path, *args: str, zone: str = "UTC", **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "local", *args, "--json", "--timezone", zone],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **env},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


def test_real_sessions_are_read_whole(home: Path) -> None:
    claude = _local(home, "session", "--agent", "claude")
    projects = {s["projectPath"] for s in claude["sessions"]}
    assert {p.rsplit("-", 1)[-1] for p in projects} >= {"webapp", "api", "tools"}
    webapp = [s for s in claude["sessions"] if s["projectPath"].endswith("-webapp")]
    assert len(webapp) == 1  # `-c` continued the same session file
    assert webapp[0]["cacheCreation1hTokens"] == 2000  # from the 1-hour split
    daily = _local(home, "daily")
    models = set(daily["totals"].get("modelsUsed", [])) | {
        m for row in daily["daily"] for m in row["modelsUsed"]
    }
    assert {"claude-sonnet-4-6", "claude-haiku-4-5", "gpt-5.2-codex", "gpt-5-mini"} <= models
    assert daily["totals"]["unpricedModels"] == [] and daily["skipped"]["badLines"] == 0
    codex = _local(home, "session", "--agent", "codex")
    assert len(codex["sessions"]) == 2 and all(s["outputTokens"] > 0 for s in codex["sessions"])
    words = [s for s in codex["sessions"] if s["modelsUsed"] == ["gpt-5-mini"]]
    assert words and words[0]["outputTokens"] >= 200


def _ccusage(home: Path, agent: str, zone: str = "UTC", **env: str) -> dict[str, Any]:
    tool = which("ccusage")
    need(tool is not None, "ccusage 20.0.24 is not installed (bin/test installs it with npm)")
    assert tool is not None
    done = subprocess.run(
        [tool, agent, "daily", "--offline", "--json", "--timezone", zone],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


TOKENS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens", "totalTokens")


@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_same_tokens_as_ccusage_and_cost_within_half_a_percent(home: Path, agent: str) -> None:
    theirs = _ccusage(home, agent)
    ours = _local(home, "daily", "--agent", agent)
    assert [r["date"] for r in ours["daily"]] == [r["date"] for r in theirs["daily"]]
    cost_key = "totalCost" if agent == "claude" else "costUSD"
    for mine, other in zip(ours["daily"], theirs["daily"], strict=True):
        assert {k: mine[k] for k in TOKENS} == {k: other[k] for k in TOKENS}
        assert mine["totalCost"] == pytest.approx(other[cost_key], rel=0.005)
        assert mine["totalCost"] > 0


def _same_rows_as_ccusage(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Row by row: the same days, the same tokens, costs within 0.5%."""
    assert [r["date"] for r in ours["daily"]] == [r["date"] for r in theirs["daily"]]
    for mine, other in zip(ours["daily"], theirs["daily"], strict=True):
        assert {k: mine[k] for k in TOKENS} == {k: other[k] for k in TOKENS}
        assert mine["totalCost"] == pytest.approx(other["totalCost"], rel=0.005)
        assert mine["totalCost"] > 0


@pytest.fixture(scope="module")
def lineage(capgate: Capgate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME with a session continued a few seconds later (two turns, one file) and a
    session whose answer calls the Agent tool: Claude Code runs a subagent, whose answers
    go to `<session>/subagents/agent-*.jsonl`."""
    home = tmp_path_factory.mktemp("lineage")
    key = capgate.create_key("local-lineage", [{"metric": "cost_usd", "window": "day", "max": 500}])
    chat, tools = home / "code" / "chat", home / "code" / "tools"
    for d in (chat, tools):
        d.mkdir(parents=True)
    _claude(capgate, key, home, chat, "-p", "first", "--model", "claude-sonnet-4-6")
    time.sleep(2)  # the turns at least 2 s apart: a day can end between them (see below)
    _claude(capgate, key, home, chat, "-c", "-p", "second mock:words=40", "--model",
            "claude-sonnet-4-6")  # fmt: skip
    _claude(capgate, key, home, tools, "-p", f"delegate mock:tool={SUBAGENT_TOOL}", "--model",
            "claude-sonnet-4-6", "--allowedTools", SUBAGENT_TOOL)  # fmt: skip
    return home


SUBAGENT_TOOL = "Agent"  # Claude Code 2.1's tool that starts a subagent (once "Task")


def test_a_subagents_sidechain_file_counts_with_its_session_as_ccusage_counts_it(
    lineage: Path,
) -> None:
    projects = lineage / ".claude" / "projects"
    (subagent,) = projects.glob("*-tools/*/subagents/*.jsonl")
    lines = [json.loads(x) for x in subagent.read_text().splitlines() if '"usage":{' in x]
    assert lines and all(x["isSidechain"] is True for x in lines)
    parent = subagent.parent.parent.name  # the session the subagent file belongs to
    sessions = _local(lineage, "session", "--agent", "claude")["sessions"]
    tools = [s for s in sessions if s["projectPath"].endswith("-tools")]
    assert [s["sessionId"] for s in tools] == [parent]
    main_only = sum(
        x["message"]["usage"]["output_tokens"]
        for x in map(json.loads, (projects / subagent.parent.parent.parent.name
                                  / f"{parent}.jsonl").read_text().splitlines())
        if x.get("type") == "assistant" and "usage" in x.get("message", {})
    )  # fmt: skip
    assert tools[0]["outputTokens"] > main_only > 0  # the subagent's answers counted too
    _same_rows_as_ccusage(_local(lineage, "daily", "--agent", "claude"),
                          _ccusage(lineage, "claude"))  # fmt: skip


def _boundary_zone(directory: Path, name: str, offset: int) -> None:
    """A zone file (TZif, by zic) for a fixed UTC offset of `offset` seconds."""
    sign, offset = ("-" if offset < 0 else ""), abs(offset)
    hours, rest = divmod(offset, 3600)
    source = directory / "zone.txt"
    source.write_text(f"Zone {name} {sign}{hours}:{rest // 60:02d}:{rest % 60:02d} - TST\n")
    zic = shutil.which("zic") or "/usr/sbin/zic"
    need(Path(zic).exists(), "zic (tzdata's zone compiler) is not installed")
    subprocess.run([zic, "-d", str(directory), str(source)], check=True, capture_output=True)


def test_a_session_over_two_days_is_split_by_day_as_ccusage_splits_it(
    lineage: Path, tmp_path: Path
) -> None:
    """The clock cannot be moved, the day can: a zone (a fixed offset, to the second) in
    which midnight falls between the two turns of the continued session; capgate reads
    it from PYTHONTZPATH, ccusage from TZDIR."""
    (chat,) = (lineage / ".claude" / "projects").glob("*-chat/*.jsonl")
    stamps = sorted(
        datetime.fromisoformat(x["timestamp"])
        for x in map(json.loads, chat.read_text().splitlines())
        if x.get("type") == "assistant" and "usage" in x.get("message", {})
    )
    first, last = stamps[0], stamps[-1]
    assert last - first > timedelta(seconds=1)
    boundary = int((first.timestamp() + last.timestamp()) / 2)  # whole seconds since 1970
    assert first.timestamp() < boundary <= last.timestamp()
    offset = -(boundary % 86400)  # local midnight at `boundary`
    if offset <= -43200:
        offset += 86400
    _boundary_zone(tmp_path, "Test/Midnight", offset)
    zone = {"PYTHONTZPATH": str(tmp_path), "TZDIR": str(tmp_path)}
    ours = _local(lineage, "daily", "--agent", "claude", zone="Test/Midnight", **zone)
    days = [r["date"] for r in ours["daily"]]
    assert len(days) == 2 and days[0] < days[1]  # the chat's turns, a day apart
    assert ours["daily"][0]["outputTokens"] < ours["daily"][1]["outputTokens"]  # 40 words
    _same_rows_as_ccusage(ours, _ccusage(lineage, "claude", zone="Test/Midnight", **zone))
    sessions = _local(lineage, "session", "--agent", "claude", zone="Test/Midnight", **zone)
    assert len([s for s in sessions["sessions"] if s["projectPath"].endswith("-chat")]) == 1
