"""Provider types `claude-cli` and `codex-cli`: capgate runs the real Claude Code and Codex
CLIs (from .tools, pinned by bin/test) as its backend, and they talk to the real mock
upstream. The official SDKs are the clients; the ledger must hold the exact usage and cost.
The pure parts (prompt, flags, result reading) are checked at the end without a server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from capgate.mock.runner import MockUpstream
from capgate.providers import claude_code, codex_exec
from capgate.providers.cli_process import child_environment
from capgate.providers.prompt import Turn, Unsupported, check_model, nano_from_usd, transcript
from conftest import Capgate, Upstream, need, start_capgate, which

# Claude Code's own price of claude-haiku-4-5 (USD per million tokens): what it reports as
# total_cost_usd. capgate's table is overridden below so that the two differ.
HAIKU_BY_CLAUDE_CODE = {"input": Decimal("1"), "output": Decimal("5")}
GPT5_MINI = {"input": Decimal("0.25"), "output": Decimal("2"), "cache_read": Decimal("0.025")}
MARK = "CLI_TEST_MARK"  # in the environment of every run of the short-timeout provider
NANO = Decimal("0.000000001")


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    claude, codex = which("claude"), which("codex")
    need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
    need(codex is not None, "the Codex CLI is not installed (bin/test installs it)")
    assert claude is not None and codex is not None
    return claude, codex


@pytest.fixture(scope="module")
def spy_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spy") / "runs.log"


@pytest.fixture(scope="module")
def mark() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(
    tools: tuple[str, str],
    upstream: Upstream,
    spy_log: Path,
    mark: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Capgate]:
    claude, codex = tools
    base = tmp_path_factory.mktemp("cli")
    claude_home, codex_home = base / "claude-home", base / "codex-home"
    claude_home.mkdir()
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        'model_provider = "gw"\n'
        "[model_providers.gw]\n"
        'name = "mock"\n'
        f'base_url = "{upstream.url}/v1"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    # The spy runs the real Claude Code and logs when each run starts and ends.
    spy = base / "claude-spy"
    spy.write_text(
        "#!/bin/sh\n"
        f'echo "start $$ $(date +%s%N)" >> "{spy_log}"\n'
        f'"{claude}" "$@"\n'
        "code=$?\n"
        f'echo "end $$ $(date +%s%N)" >> "{spy_log}"\n'
        "exit $code\n"
    )
    spy.chmod(0o755)
    claude_env = {
        "ANTHROPIC_BASE_URL": upstream.url,
        "ANTHROPIC_API_KEY": "up-key-cli",
        "HOME": str(claude_home),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    codex_env = {"CODEX_HOME": str(codex_home), "HOME": str(codex_home), "OPENAI_API_KEY": "k"}
    config: dict[str, Any] = {
        "server": {"allow_unpriced_models": True},
        "providers": [
            # First: model names no route matches go here (see the injection test).
            {"name": "claude-spy", "type": "claude-cli", "command": str(spy),
             "env": claude_env, "max_concurrency": 1},
            {"name": "claude-sub", "type": "claude-cli", "command": claude, "env": claude_env},
            {"name": "claude-short", "type": "claude-cli", "command": claude,
             "env": {**claude_env, MARK: mark}, "timeout_s": 3},
            # Stopped mid-stream: its first words must come before the timeout even when
            # Claude Code starts slowly (~2.5 s to the first one on a loaded machine).
            {"name": "claude-mid", "type": "claude-cli", "command": claude,
             "env": {**claude_env, MARK: mark}, "timeout_s": 8},
            {"name": "claude-tiny", "type": "claude-cli", "command": claude, "env": claude_env,
             "max_output_mb": 0.01},
            {"name": "codex-sub", "type": "codex-cli", "command": codex, "env": codex_env},
        ],
        "models": [
            {"match": "claude-*", "targets": [{"provider": "claude-sub"}]},
            {"match": "gpt-*", "targets": [{"provider": "codex-sub"}]},
            {"match": "spy-*", "targets": [{"provider": "claude-spy"}]},
            {"match": "slow", "targets": [{"provider": "claude-short",
                                           "model": "claude-sonnet-4-6"}]},
            {"match": "slow-stream", "targets": [{"provider": "claude-mid",
                                                  "model": "claude-sonnet-4-6"}]},
            {"match": "tiny", "targets": [{"provider": "claude-tiny",
                                           "model": "claude-sonnet-4-6"}]},
        ],
        # capgate's own price of haiku is far off Claude Code's: the ledger must show the
        # cost Claude Code reported, not this.
        "pricing": {"claude-haiku-4-5": {"input": "50", "output": "50"}},
    }  # fmt: skip
    capgate = start_capgate(base, config, env={"ANTHROPIC_API_KEY": "server-secret"})
    try:
        yield capgate
    finally:
        capgate.close()


def claude_client(capgate: Capgate, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=0, timeout=60)


def codex_client(capgate: Capgate, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=0, timeout=60)


def only_entry(capgate: Capgate, key: str) -> dict[str, Any]:
    entries = capgate.ledger(key=key)
    assert len(entries) == 1, entries
    return entries[0]


def claude_code_cost(input_tokens: int, output_tokens: int) -> Decimal:
    price = HAIKU_BY_CLAUDE_CODE
    cost = (input_tokens * price["input"] + output_tokens * price["output"]) / 10**6
    return cost.quantize(NANO)


def gpt5_mini_cost(prompt: int, cached: int, completion: int) -> Decimal:
    p = GPT5_MINI
    pico = (prompt - cached) * p["input"] + cached * p["cache_read"] + completion * p["output"]
    return (pico / 10**6).quantize(NANO, rounding="ROUND_UP")


# -- claude-cli ----------------------------------------------------------------------------


def test_claude_cli_message_with_the_cost_claude_code_reported(
    server: Capgate, key_name: str
) -> None:
    key = server.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    with claude_client(server, key) as client:
        message = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            system="Answer briefly.",
            messages=[{"role": "user", "content": "say hi"}],
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and "capgate mock" in message.content[0].text
    assert message.stop_reason == "end_turn" and message.model == "claude-haiku-4-5"
    usage = message.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    entry = only_entry(server, key_name)
    assert entry["outcome"] == "ok" and entry["status"] == 200
    assert entry["provider"] == "claude-sub" and entry["stream"] is False
    assert (entry["input_tokens"], entry["output_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    assert Decimal(entry["cost_usd"]) == claude_code_cost(usage.input_tokens, usage.output_tokens)
    spent = {u["metric"]: u for u in server.key_usage(key_name)}["cost_usd"]
    assert Decimal(spent["used"]) == Decimal(entry["cost_usd"]) and Decimal(spent["reserved"]) == 0


def test_claude_cli_stream(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    events = []
    with (
        claude_client(server, key) as client,
        client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "count mock:words=12"}],
        ) as stream,
    ):
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    text = final.content[0].text if final.content[0].type == "text" else ""
    assert text.split() == ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
                            "adipiscing", "elit", "sed", "lorem", "ipsum", "dolor"]  # fmt: skip
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events and "message_delta" in events
    assert final.usage.output_tokens == 12
    entry = only_entry(server, key_name)
    assert entry["stream"] is True and entry["outcome"] == "ok"
    assert entry["input_tokens"] == final.usage.input_tokens and entry["output_tokens"] == 12
    assert Decimal(entry["cost_usd"]) == claude_code_cost(final.usage.input_tokens, 12)


def test_claude_cli_budget_refuses_once_spent(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.0075"}])
    outcomes = []
    with claude_client(server, key) as client:
        for _ in range(6):
            try:
                client.messages.create(
                    model="claude-sonnet-4-6",
                    max_tokens=16,
                    messages=[{"role": "user", "content": "hi mock:words=3"}],
                )
                outcomes.append(200)
            except anthropic.APIStatusError as exc:
                outcomes.append(exc.status_code)
                assert "Daily cost limit" in exc.message and key_name in exc.message
                break
    assert outcomes[0] == 200 and outcomes[-1] == 402, outcomes
    entries = server.ledger(key=key_name)
    spent = sum(Decimal(e["cost_usd"]) for e in entries if e["outcome"] == "ok")
    used = {u["metric"]: u for u in server.key_usage(key_name)}["cost_usd"]
    assert Decimal(used["used"]) == spent > 0
    assert [e["outcome"] for e in entries].count("refused") == 1


def test_claude_cli_concurrency_cap_runs_one_at_a_time(
    server: Capgate, key_name: str, spy_log: Path
) -> None:
    key = server.create_key(key_name)
    statuses: list[int] = []

    def ask() -> None:
        response = httpx.post(
            server.url + "/v1/messages",
            headers={"x-api-key": key},
            json={"model": "spy-serial", "max_tokens": 16,
                  "messages": [{"role": "user", "content": "wait mock:delay_ms=800"}]},
            timeout=60,
        )  # fmt: skip
        statuses.append(response.status_code)

    before = spy_log.read_text().splitlines() if spy_log.exists() else []
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200, 200]
    lines = spy_log.read_text().splitlines()[len(before) :]
    runs: dict[str, dict[str, int]] = {}
    for line in lines:
        what, pid, ns = line.split()
        runs.setdefault(pid, {})[what] = int(ns)
    assert len(runs) == 2, lines
    first, second = sorted(runs.values(), key=lambda r: r["start"])
    assert first["end"] <= second["start"]  # max_concurrency 1: the second waited


def _marked_processes(mark: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ:
            found.append(int(entry.name))
    return found


def test_claude_cli_timeout_stops_the_process(server: Capgate, key_name: str, mark: str) -> None:
    key = server.create_key(key_name)
    started = time.monotonic()
    response = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": "slow", "max_tokens": 16,
              "messages": [{"role": "user", "content": "hang mock:delay_ms=30000"}]},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 20
    error = response.json()["error"]
    assert 'provider "claude-short"' in error["message"] and "timeout_s=3" in error["message"]
    deadline = time.monotonic() + 10
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(mark) == []  # nothing left of its process group
    entry = only_entry(server, key_name)
    assert entry["status"] == 504 and entry["outcome"] == "error"
    # It may have been generating when it was stopped: charged its reservation in full.
    assert Decimal(entry["cost_usd"]) > Decimal("0.001")


def test_claude_cli_timeout_mid_stream_ends_it_with_an_error_event(
    server: Capgate, key_name: str, mark: str
) -> None:
    key = server.create_key(key_name)
    body = {
        "model": "slow-stream",
        "max_tokens": 64,
        "stream": True,  # 40 words 0.5 s apart: 20 s, stopped at 8
        "messages": [{"role": "user", "content": "mock:words=40 mock:stream_delay_ms=500"}],
    }
    with httpx.stream(
        "POST", server.url + "/v1/messages", headers={"x-api-key": key}, json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert text.startswith("event: message_start") and "event: content_block_delta" in text
    assert "event: message_stop" not in text
    assert text.rstrip().splitlines()[-2] == "event: error" and "timeout_s=8" in text
    entry = only_entry(server, key_name)
    assert entry["outcome"] == "error" and entry["error"] == "stream ended early"
    # Charged for what was relayed: the text's bytes bound its tokens, up to max_tokens.
    assert entry["input_tokens"] > 0 and 0 < entry["output_tokens"] <= 64
    assert Decimal(entry["cost_usd"]) > 0
    deadline = time.monotonic() + 10
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(mark) == []


def test_claude_cli_output_cap_stops_the_run(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    with claude_client(server, key) as client:
        small = client.messages.create(
            model="tiny", max_tokens=64, messages=[{"role": "user", "content": "mock:words=5"}]
        )
        with pytest.raises(anthropic.APIStatusError) as big:
            client.messages.create(
                model="tiny",
                max_tokens=4000,
                messages=[{"role": "user", "content": "mock:words=3000"}],
            )
    assert small.usage.output_tokens == 5
    assert big.value.status_code == 502 and "max_output_mb=0.01" in big.value.message
    entries = server.ledger(key=key_name)  # newest first; the stopped run charged in full
    assert [e["status"] for e in entries] == [502, 200]
    assert Decimal(entries[0]["cost_usd"]) > 4000 * Decimal("15") / 10**6


def test_claude_cli_errors_are_mapped(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    with claude_client(server, key) as client:
        # The CLI's own login fails upstream: the gateway's problem (502), with its text.
        with pytest.raises(anthropic.APIStatusError) as auth:
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi mock:status=401"}],
            )
        # A rate limit stays one: 429, retryable elsewhere or later.
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi mock:status=429"}],
            )
    assert auth.value.status_code == 502
    assert 'provider "claude-sub" (claude-cli)' in auth.value.message
    assert "Failed to authenticate" in auth.value.message and "401" in auth.value.message
    assert "429" in limited.value.message
    statuses = sorted(e["status"] for e in server.ledger(key=key_name))
    assert statuses == [429, 502]


# -- codex-cli -----------------------------------------------------------------------------


def test_codex_cli_completion_priced_from_usage(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    with codex_client(server, key) as client:
        completion = client.chat.completions.create(
            model="gpt-5-mini",
            messages=[
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "say hi"},
            ],
        )
    assert completion.object == "chat.completion" and completion.model == "gpt-5-mini"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and "capgate mock" in (choice.message.content or "")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    entry = only_entry(server, key_name)
    assert entry["outcome"] == "ok" and entry["provider"] == "codex-sub"
    assert entry["input_tokens"] + entry["cache_read_tokens"] == usage.prompt_tokens
    assert entry["output_tokens"] == usage.completion_tokens
    cost = gpt5_mini_cost(usage.prompt_tokens, cached or 0, usage.completion_tokens)
    assert Decimal(entry["cost_usd"]) == cost


def test_codex_cli_stream_with_usage(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    with codex_client(server, key) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-5-mini",
                messages=[{"role": "user", "content": "count mock:words=5"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "lorem ipsum dolor sit amet"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    entry = only_entry(server, key_name)
    assert entry["stream"] is True and entry["outcome"] == "ok" and entry["output_tokens"] == 5
    prompt = chunks[-1].usage.prompt_tokens
    assert Decimal(entry["cost_usd"]) == gpt5_mini_cost(prompt, 0, 5)


def test_codex_cli_budget_refuses_once_spent(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name, [{"metric": "requests", "window": "day", "max": 1}])
    with codex_client(server, key) as client:
        client.chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "hi mock:words=2"}]
        )
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="gpt-5-mini", messages=[{"role": "user", "content": "hi again"}]
            )
    assert refused.value.status_code == 402 and "Daily request limit" in refused.value.message
    assert [e["outcome"] for e in server.ledger(key=key_name)] == ["refused", "ok"]


# -- what a CLI cannot do is refused before any process starts -----------------------------


@pytest.mark.parametrize(
    "model",
    ["--dangerously-skip-permissions", "x; rm -rf /", "spy-x --tools default",
     "spy-x\n--dangerously-skip-permissions", "spy-$(id)", "-spy", "spy-" + "x" * 200],
)  # fmt: skip
def test_injected_model_names_are_refused(
    server: Capgate, key_name: str, spy_log: Path, model: str
) -> None:
    key = server.create_key(key_name)
    before = spy_log.read_text() if spy_log.exists() else ""
    response = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "is not allowed for a CLI provider" in error["message"]
    assert (spy_log.read_text() if spy_log.exists() else "") == before  # no process ran
    assert only_entry(server, key_name)["provider"] == "claude-spy"


def test_codex_model_injection_is_refused(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    with codex_client(server, key) as client, pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="gpt-5; --dangerously-bypass-approvals-and-sandbox",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert "is not allowed for a CLI provider" in bad.value.message


def test_tools_and_images_are_refused(server: Capgate, key_name: str) -> None:
    key = server.create_key(key_name)
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}  # fmt: skip
    with claude_client(server, key) as client:
        with pytest.raises(anthropic.BadRequestError) as with_tools:
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=16,
                tools=[tool],
                messages=[{"role": "user", "content": "weather?"}],
            )
        with pytest.raises(anthropic.BadRequestError) as with_image:
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=16,
                messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}],
            )
    with codex_client(server, key) as oai, pytest.raises(openai.BadRequestError) as oai_tools:
        oai.chat.completions.create(
            model="gpt-5-mini",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        )
    assert "client-defined tools" in with_tools.value.message
    assert 'content blocks of type "image"' in with_image.value.message
    assert "client-defined tools" in oai_tools.value.message
    assert {e["status"] for e in server.ledger(key=key_name)} == {400}


# -- what the CLIs send upstream ----------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(
    tools: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Capgate, MockUpstream]]:
    """A capgate whose CLIs talk to a mock in this process, whose request log is readable."""
    claude, codex = tools
    base = tmp_path_factory.mktemp("recorded")
    with MockUpstream() as mock:
        (base / "config.toml").write_text(
            f'model_provider = "gw"\n[model_providers.gw]\nname = "mock"\n'
            f'base_url = "{mock.url}/v1"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
        )
        env = {"HOME": str(base), "ANTHROPIC_BASE_URL": mock.url, "ANTHROPIC_API_KEY": "k",
               "CODEX_HOME": str(base), "OPENAI_API_KEY": "k"}  # fmt: skip
        config = {
            "providers": [
                {"name": "claude-rec", "type": "claude-cli", "command": claude, "env": env},
                {"name": "codex-rec", "type": "codex-cli", "command": codex, "env": env},
            ],
        }
        capgate = start_capgate(base, config)
        try:
            yield capgate, mock
        finally:
            capgate.close()


CONVERSATION = [
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Hello Ada."},
    {"role": "user", "content": "What is my name?"},
]
TRANSCRIPT = (
    "<user>\nMy name is Ada.\n</user>\n\n<assistant>\nHello Ada.\n</assistant>\n\n"
    "<user>\nWhat is my name?\n</user>"
)


def test_claude_code_sends_the_request_and_nothing_of_an_agent(
    recorded: tuple[Capgate, MockUpstream], key_name: str
) -> None:
    capgate, mock = recorded
    key = capgate.create_key(key_name)
    mock.clear()
    with claude_client(capgate, key) as client:
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=300,
            system="You answer in French.",
            messages=CONVERSATION,
        )
    (sent,) = [r for r in mock.requests() if r.path == "/v1/messages"]
    body = sent.body
    assert body["model"] == "claude-sonnet-4-6" and body["tools"] == []
    assert body["max_tokens"] == 300 and body["thinking"] == {"type": "disabled"}
    system = " ".join(block["text"] for block in body["system"])
    assert "You answer in French." in system and len(system) < 400  # not Claude Code's prompt
    (message,) = body["messages"]
    text = message["content"][-1]["text"]
    assert TRANSCRIPT in text and text.endswith("without tags.")
    assert sent.headers["x-api-key"] == "k"  # the CLI's own credentials, not the client's


def test_codex_sends_the_request_and_nothing_of_an_agent(
    recorded: tuple[Capgate, MockUpstream], key_name: str
) -> None:
    capgate, mock = recorded
    key = capgate.create_key(key_name)
    mock.clear()
    with codex_client(capgate, key) as client:
        client.chat.completions.create(
            model="gpt-5-mini",
            messages=[{"role": "system", "content": "You answer in French."}, *CONVERSATION],
        )
    (sent,) = [r for r in mock.requests() if r.path == "/v1/responses"]
    body = sent.body
    assert body["model"] == "gpt-5-mini"
    texts = [(item["role"], part["text"]) for item in body["input"] for part in item["content"]]
    assert texts[0] == ("developer", "You answer in French.")  # instead of the agent prompt
    assert texts[-1][0] == "user" and TRANSCRIPT in texts[-1][1]
    assert len(texts) == 2  # no skills, environment or sandbox notes
    tools = {tool.get("name") or tool.get("type") for tool in body.get("tools", [])}
    assert not tools & {"shell", "exec_command", "apply_patch", "web_search", "update_plan"}


def test_a_missing_command_stops_the_server_at_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-claude")
    config = tmp_path / "capgate.yaml"
    config.write_text(
        f"providers: [{{name: claude-sub, type: claude-cli, command: '{missing}'}}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f'capgate: bad configuration: provider "claude-sub" (claude-cli): the command '
        f"{missing!r} was not found or is not executable; install it or set `command` to its path"
    )


# -- the pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["claude-sonnet-4-5", "claude-sonnet-4-5[1m]", "gpt-5.1-codex", "org:model_v2", "o3"],
)
def test_plain_model_names_pass(name: str) -> None:
    assert check_model(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a\n", "a;b", "a/b", "é", 7, None, "a" * 129])
def test_other_model_names_are_refused(name: object) -> None:
    with pytest.raises(Unsupported):
        check_model(name)


def test_a_single_turn_goes_as_written_and_a_conversation_as_a_transcript() -> None:
    assert transcript([Turn("user", "hi there")]) == "hi there"
    text = transcript([Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "more")])
    assert (
        "<user>\nhi\n</user>\n\n<assistant>\nhello\n</assistant>\n\n<user>\nmore\n</user>" in text
    )
    assert text.endswith(
        "Write the assistant's next reply. Answer with the reply text only, without tags."
    )
    prefill = transcript([Turn("user", "hi"), Turn("assistant", "Once upon")])
    assert "Continue it from exactly where it stops" in prefill


def test_claude_job_flags_environment_and_system() -> None:
    job = claude_code.messages_job(
        {"model": "claude-opus-4-1", "max_tokens": 300, "stream": True,
         "system": [{"type": "text", "text": "Be kind."}],
         "thinking": {"type": "enabled", "budget_tokens": 200},
         "messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "a"}]},
                      {"role": "user", "content": "b"}]}
    )  # fmt: skip
    assert job.system == "Be kind.\n\nBe brief." and job.prompt == "a\n\nb"
    argv = job.argv("/bin/claude", Path("/tmp/run"))
    assert argv[argv.index("--model") + 1] == "claude-opus-4-1"
    assert argv[argv.index("--system-prompt-file") + 1] == "/tmp/run/system.md"
    assert job.files() == {"system.md": "Be kind.\n\nBe brief."}
    assert argv[argv.index("--tools") + 1] == "" and "--strict-mcp-config" in argv
    assert argv[argv.index("--output-format") + 1] == "stream-json"
    assert "--include-partial-messages" in argv and "--dangerously-skip-permissions" not in argv
    assert job.env() == {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "300", "MAX_THINKING_TOKENS": "200"}
    plain = claude_code.messages_job(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert plain.env()["MAX_THINKING_TOKENS"] == "0" and "json" in plain.argv("claude", Path("/r"))


def test_claude_result_cost_is_read_exactly_from_the_number_text() -> None:
    line = (
        b'{"type":"result","subtype":"success","is_error":false,"result":"hi",'
        b'"total_cost_usd":0.30000000000000004,"usage":{"input_tokens":3,"output_tokens":1}}'
    )
    data = claude_code.parse_line(line)
    assert data is not None
    result = claude_code.ClaudeResult(data)
    assert result.cost_nano == 300_000_000 and not result.is_error
    assert (
        claude_code.ClaudeResult({**data, "total_cost_usd": Decimal("0.000123456")}).cost_nano
        == 123_456
    )
    assert nano_from_usd(Decimal("1E-9")) == 1 and nano_from_usd("0.1") is None
    error = claude_code.ClaudeResult(
        {**data, "is_error": True, "api_error_status": 429, "result": "API Error: 429"}
    )
    assert error.is_error and error.failure() == (429, "API Error: 429")
    auth = claude_code.ClaudeResult({**data, "is_error": True, "api_error_status": 401})
    assert auth.failure()[0] == 502


def test_codex_job_and_events() -> None:
    job = codex_exec.chat_job(
        {"model": "gpt-5-mini", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "developer", "content": "Be terse."},
                      {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    )  # fmt: skip
    assert job.instructions == "Be terse." and job.prompt == "hi" and job.include_usage
    argv = job.argv("/bin/codex", Path("/tmp/run"))
    assert argv[-3:] == ["-m", "gpt-5-mini", "-"]
    assert 'model_instructions_file="/tmp/run/instructions.md"' in argv
    assert argv[argv.index("--sandbox") + 1] == "read-only" and "--ephemeral" in argv
    assert codex_exec.toml_string('a"b\\c\n') == '"a\\"b\\\\c\\u000a"'
    output = (
        b'{"type":"error","message":"Reconnecting... 1/5"}\n'
        b'{"type":"item.completed","item":{"type":"agent_message","text":"hello"}}\n'
        b'{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":4,'
        b'"output_tokens":2}}\n'
    )
    result = codex_exec.read_events(output)
    assert result.failure() is None and result.text == "hello"
    failed = codex_exec.read_events(
        b'{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429"}}\n'
    )
    assert failed.failure() == (429, "exceeded retry limit, last status: 429")
    assert os.path.basename(codex_exec.INSTRUCTIONS) == "instructions.md"


def test_the_cli_environment_keeps_the_basics_and_drops_secrets() -> None:
    server_env = {
        "PATH": "/usr/bin", "HOME": "/home/cg", "LANG": "C.UTF-8", "CODEX_HOME": "/home/cg/.codex",
        "CAPGATE_ADMIN_KEY": "a", "ANTHROPIC_API_KEY": "b", "ANTHROPIC_BASE_URL": "http://gw",
        "OPENAI_API_KEY": "c", "GITHUB_TOKEN": "d", "DB_PASSWORD": "e", "AWS_SECRET_ACCESS_KEY": "f",
        "CLAUDE_CODE_OAUTH_TOKEN": "g", "INNOCENT_NAME": "sk-provider-key",
    }  # fmt: skip
    env = child_environment(
        server_env, {"sk-provider-key"}, {"DISABLE_AUTOUPDATER": "1"}, {"HOME": "/srv/claude"}
    )
    assert env == {
        "PATH": "/usr/bin", "HOME": "/srv/claude", "LANG": "C.UTF-8",
        "CODEX_HOME": "/home/cg/.codex", "DISABLE_AUTOUPDATER": "1",
    }  # fmt: skip
