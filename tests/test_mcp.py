"""`capgate mcp` driven by the MCP SDK's own client: a real `python -m capgate mcp`
subprocess over stdio and over streamable HTTP, reading session files in a temporary
HOME; the budget tool against a real capgate server (GET /v1/me)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import Capgate

PROJECT = "-home-dev-webapp"


def claude_line(mid: str, at: datetime, session: str, model: str = "claude-sonnet-4-6") -> str:
    data = {
        "type": "assistant", "sessionId": session, "requestId": "r" + mid, "version": "2.1.330",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "message": {"id": mid, "model": model,
                    "usage": {"input_tokens": 1000, "output_tokens": 200,
                              "cache_read_input_tokens": 5000}},
    }  # fmt: skip
    return json.dumps(data, separators=(",", ":")) + "\n"  # as Claude Code writes


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The project of the directory the server runs in (HOME here): an older session and
    one active a minute ago; and another project's session, active just now."""
    now = datetime.now(UTC)
    projects = tmp_path / ".claude" / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(tmp_path))
    projects.mkdir(parents=True)
    old = now - timedelta(days=3)
    (projects / "old.jsonl").write_text(
        claude_line("m1", old, "old") + claude_line("m2", old + timedelta(minutes=1), "old")
    )
    other = tmp_path / ".claude" / "projects" / PROJECT
    other.mkdir()
    (other / "elsewhere.jsonl").write_text(claude_line("m9", now, "elsewhere"))
    (projects / "live.jsonl").write_text(
        claude_line("m3", now - timedelta(minutes=30), "live")
        + claude_line("m4", now - timedelta(minutes=1), "live", model="claude-haiku-4-5")
        + claude_line("m5", now - timedelta(minutes=1), "live", model="claude-nova-9")
    )
    return tmp_path


def server_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC", **extra}


def cli_json(home: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "local", *args, "--json", "--timezone", "UTC"],
        env=server_env(home), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


def over_stdio(home: Path, session: Callable[[Client], Awaitable[Any]], **env: str) -> Any:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "capgate", "mcp"], env=server_env(home, **env),
        cwd=str(home),
    )  # fmt: skip

    async def main() -> Any:
        async with Client(params) as client:
            return await session(client)

    return anyio.run(main)


def call(name: str, arguments: dict[str, Any] | None = None) -> Callable[[Client], Awaitable[Any]]:
    async def session(client: Client) -> Any:
        return await client.call_tool(name, arguments or {})

    return session


def test_tools_are_listed_with_input_and_output_schemas(home: Path) -> None:
    async def session(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = {t.name: t for t in over_stdio(home, session)}
    assert set(tools) == {
        "usage_daily", "usage_weekly", "usage_monthly", "usage_session", "usage_blocks",
        "session_cost", "capgate_budget",
    }  # fmt: skip
    daily = tools["usage_daily"]
    # The CLI's arguments, with the CLI's choices for --agent.
    props = daily.input_schema["properties"]
    assert {"since", "until", "timezone", "project", "agent", "breakdown"} <= set(props)
    assert props["agent"]["enum"] == ["claude", "codex", "all"]
    assert all(t.output_schema is not None for t in tools.values())


def test_daily_rows_equal_the_cli_and_are_structured(home: Path) -> None:
    result = over_stdio(home, call("usage_daily", {"timezone": "UTC", "breakdown": True}))
    assert result.is_error is False
    got = result.structured_content
    want = cli_json(home, "daily")
    assert got["daily"] == want["daily"] and got["totals"] == want["totals"]
    assert got["totals"]["unpricedModels"] == ["claude-nova-9"]  # named, not $0
    assert json.loads(result.content[0].text) == got


def test_rows_are_small_unless_asked(home: Path) -> None:
    result = over_stdio(home, call("usage_session", {"last": 1}))
    got = result.structured_content
    assert [r["sessionId"] for r in got["sessions"]] == [
        cli_json(home, "session")["sessions"][0]["sessionId"]
    ]
    assert got["rowsOmitted"] == 2
    assert "modelBreakdowns" not in got["sessions"][0]


def test_session_cost_is_the_latest_session_of_this_project(home: Path) -> None:
    result = over_stdio(home, call("session_cost"))
    got = result.structured_content
    want = next(s for s in cli_json(home, "session")["sessions"] if s["sessionId"] == "live")
    assert got["sessionId"] == "live" and got["projectPath"] == want["projectPath"] != PROJECT
    assert got["totalCost"] == want["totalCost"] > 0
    assert got["modelsUsed"] == ["claude-haiku-4-5", "claude-nova-9", "claude-sonnet-4-6"]
    named = over_stdio(home, call("session_cost", {"session_id": "old"})).structured_content
    assert named["sessionId"] == "old" and named["totalTokens"] == 2 * 6200


def test_blocks_show_the_active_block_with_its_burn_rate(home: Path) -> None:
    got = over_stdio(home, call("usage_blocks", {"active_only": True})).structured_content
    assert len(got["blocks"]) == 1 and got["blocks"][0]["isActive"] is True
    assert got["blocks"][0]["burnRate"]["costPerHour"] > 0
    assert got["blocks"][0]["projection"]["totalCost"] >= got["blocks"][0]["costUSD"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"since": "yesterday"}, "since: a date like"),
        ({"timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"agent": "cursor"}, "agent"),
    ],
)
def test_bad_arguments_are_tool_errors(home: Path, arguments: dict[str, Any], message: str) -> None:
    result = over_stdio(home, call("usage_daily", arguments))
    assert result.is_error is True
    assert message in result.content[0].text


def test_budget_without_a_key_says_what_to_set(home: Path) -> None:
    result = over_stdio(home, call("capgate_budget"))
    assert result.is_error is True and "CAPGATE_KEY" in result.content[0].text


def test_budget_is_the_servers_with_a_forecast(home: Path, capgate: Capgate, key_name: str) -> None:
    limits = [
        {"metric": "cost_usd", "window": "month", "max": 5},
        {"metric": "requests", "window": "total", "max": 100},
    ]
    key = capgate.create_key(key_name, limits)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    sent = httpx.post(capgate.url + "/v1/messages", json=body, headers={"x-api-key": key})
    assert sent.status_code == 200
    result = over_stdio(home, call("capgate_budget"), CAPGATE_KEY=key, CAPGATE_URL=capgate.url)
    assert result.is_error is False
    got = result.structured_content
    me = httpx.get(capgate.url + "/v1/me", headers={"authorization": f"Bearer {key}"}).json()
    rows = {r["metric"]: r for r in got["limits"]}
    money = rows["cost_usd"]
    assert money["scope"] == f"key {key_name}" and money["window"] == "month"
    assert money["left"] == me["limits"][0]["remaining"] and Decimal(money["used"]) > 0
    assert money["resets"] == me["limits"][0]["resets"]
    # The month began more than a minute ago, so there is a pace to project (exactness
    # of the arithmetic: tests/test_mcp_budget.py).
    assert Decimal(money["forecast"]["at_reset"]) >= Decimal(money["used"])
    assert rows["requests"]["forecast"] is None  # a total window has no end
    assert rows["requests"]["used"] == 1
    assert key not in result.content[0].text


def test_budget_with_a_wrong_key_is_the_servers_message(home: Path, capgate: Capgate) -> None:
    result = over_stdio(
        home, call("capgate_budget"), CAPGATE_KEY="sk-cg-wrong-0000", CAPGATE_URL=capgate.url
    )
    assert result.is_error is True
    assert "401" in result.content[0].text and "sk-cg-wrong-0000" not in result.content[0].text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(home: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "capgate", "mcp", "--http", "--port", str(port)],
        env=server_env(home), cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "mcp --http did not start"
                )
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def test_streamable_http_answers_the_same(home: Path, http_server: str) -> None:
    async def main() -> Any:
        async with Client(http_server) as client:
            return await client.call_tool("usage_monthly", {"timezone": "UTC"})

    result = anyio.run(main)
    assert result.is_error is False
    want = cli_json(home, "monthly")["monthly"]
    for row in want:
        assert row.pop("modelBreakdowns")  # left out unless `breakdown` is asked for
    assert result.structured_content["monthly"] == want


def dated_line(mid: str, at: str, session: str, model: str = "claude-sonnet-4-6") -> str:
    return claude_line(mid, datetime.fromisoformat(at), session, model)


@pytest.fixture
def dated(tmp_path: Path) -> Path:
    """Fixed dates: Friday 2026-12-04 (10:00 and 23:30 UTC: the 5th in Tokyo), Saturday
    the 5th (Codex), Monday the 7th (another project), and a Codex session in November."""
    projects = tmp_path / ".claude" / "projects"
    (projects / PROJECT).mkdir(parents=True)
    (projects / PROJECT / "s1.jsonl").write_text(
        dated_line("m1", "2026-12-04T10:00:00+00:00", "s1")
        + dated_line("m2", "2026-12-04T23:30:00+00:00", "s1", "claude-haiku-4-5")
    )
    (projects / "-home-dev-api").mkdir()
    (projects / "-home-dev-api" / "s2.jsonl").write_text(
        dated_line("m3", "2026-12-07T09:00:00+00:00", "s2", "claude-opus-4-7")
    )
    for name, at, cwd, tokens in (
        ("2026/12/05/rollout-a.jsonl", "2026-12-05T12:00:00Z", "/home/dev/cli", 3000),
        ("2026/11/20/rollout-b.jsonl", "2026-11-20T12:00:00Z", "/home/dev/old", 10),
    ):
        usage = {"input_tokens": tokens, "cached_input_tokens": 0, "output_tokens": 100}
        lines = [
            {"timestamp": at, "type": "session_meta", "payload": {"cwd": cwd}},
            {"timestamp": at, "type": "turn_context", "payload": {"model": "gpt-5.4"}},
            {"timestamp": at, "type": "event_msg",
             "payload": {"type": "token_count", "info": {"total_token_usage": usage}}},
        ]  # fmt: skip
        path = tmp_path / ".codex" / "sessions" / name
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path


def cli_plain(home: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "local", *args, "--json"],
        env=server_env(home), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


# (tool, arguments, the same as `capgate local` options); each changes the answer.
CLI_ARGUMENTS = [
    ("usage_daily", {"since": "2026-12-05"}, ["daily", "--since", "2026-12-05"]),
    ("usage_daily", {"until": "20261204"}, ["daily", "--until", "20261204"]),
    ("usage_daily", {"timezone": "Asia/Tokyo"}, ["daily", "--timezone", "Asia/Tokyo"]),
    ("usage_daily", {"project": "-home-dev-api"}, ["daily", "--project", "-home-dev-api"]),
    ("usage_daily", {"agent": "codex"}, ["daily", "--agent", "codex"]),
    ("usage_daily", {"breakdown": True}, ["daily", "--breakdown"]),
    ("usage_daily", {"order": "desc"}, ["daily", "--order", "desc"]),
    ("usage_daily", {"instances": True}, ["daily", "--instances"]),
    ("usage_weekly", {"start_of_week": "monday"}, ["weekly", "--start-of-week", "monday"]),
    ("usage_weekly", {"order": "desc"}, ["weekly", "--order", "desc"]),
    ("usage_monthly", {"order": "desc"}, ["monthly", "--order", "desc"]),
    ("usage_monthly", {"agent": "claude"}, ["monthly", "--agent", "claude"]),
    ("usage_session", {"order": "asc"}, ["session", "--order", "asc"]),
    ("usage_session", {"since": "20261205"}, ["session", "--since", "20261205"]),
    ("usage_session", {"project": PROJECT}, ["session", "--project", PROJECT]),
    ("usage_blocks", {"order": "desc"}, ["blocks", "--order", "desc"]),
]


def test_each_cli_option_is_a_tool_argument_with_the_same_effect(dated: Path) -> None:
    """Every argument the CLI takes, passed through the MCP client: the answer is the
    CLI's with that option, and differs from the tool's answer without it."""

    async def session(client: Client) -> list[tuple[Any, Any]]:
        answers = []
        for tool, arguments, _ in CLI_ARGUMENTS:
            given = await client.call_tool(tool, {**arguments, "last": 0})
            plain = await client.call_tool(tool, {"last": 0})
            answers.append((given, plain))
        return answers

    answers = over_stdio(dated, session)
    for (tool, arguments, options), (given, plain) in zip(CLI_ARGUMENTS, answers, strict=True):
        assert given.is_error is False and plain.is_error is False, (tool, given.content)
        got = dict(given.structured_content)
        assert got.pop("rowsOmitted") == 0
        want = cli_plain(dated, *options)
        if not arguments.get("breakdown"):
            for rows in [want.get(k) for k in ("daily", "weekly", "monthly", "sessions")] + list(
                want.get("projects", {}).values()
            ):
                for row in rows or []:
                    row.pop("modelBreakdowns")
        assert got == want, (tool, arguments)
        assert given.structured_content != plain.structured_content, (tool, arguments)


def test_tool_schemas_take_the_options_of_their_command(home: Path) -> None:
    async def session(client: Client) -> Any:
        return (await client.list_tools()).tools

    props = {t.name: t.input_schema["properties"] for t in over_stdio(home, session)}
    common = {"since", "until", "timezone", "project", "agent", "breakdown", "order", "last"}
    assert set(props["usage_daily"]) == common | {"instances"}
    assert set(props["usage_weekly"]) == common | {"start_of_week"}
    assert set(props["usage_monthly"]) == set(props["usage_session"]) == common
    assert set(props["usage_blocks"]) == {"active_only", "order", "last"}
    assert props["usage_weekly"]["start_of_week"]["enum"][:2] == ["sunday", "monday"]
    assert props["usage_session"]["order"]["default"] == "desc"
    assert props["usage_daily"]["order"]["enum"] == ["asc", "desc"]
