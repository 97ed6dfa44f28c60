"""What capgate forwards, and what it charges when the answer does not say.

The mock upstream runs in this process (capgate.mock.runner.MockUpstream) so its request
log, with the exact bytes received, can be read: the subprocess mock of conftest has no
HTTP endpoint for that. A capgate subprocess sits in front of it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from capgate.mock.runner import MockUpstream
from capgate.mock.server import RecordedRequest
from conftest import Capgate, Upstream, gateway_config, start_capgate

SONNET, GPT = "claude-sonnet-4-6", "gpt-5-mini"
# USD per million tokens (src/capgate/data/pricing.yaml): input, output, dearest input-side
# rate (a worst case bills every input token at it: Sonnet's 1-hour cache write).
PRICES = {
    SONNET: (Decimal("3"), Decimal("15"), Decimal("6")),
    GPT: (Decimal("0.25"), Decimal("2"), Decimal("0.25")),
}
REQUEST_OVERHEAD, MESSAGE_OVERHEAD = 1_000, 8  # capgate's input bound: bytes + these
DEFAULT_MAX_TOKENS = 4096


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream(history=50) as server:
        yield server


@pytest.fixture(scope="module")
def gate(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    config = gateway_config(Upstream(mock.url))
    config["models"].append(
        {"match": "alias-sonnet", "targets": [{"provider": "anthropic", "model": SONNET}]}
    )
    server = start_capgate(tmp_path_factory.mktemp("passthrough"), config)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def http(gate: Capgate) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gate.url, timeout=30, trust_env=False) as client:
        yield client


@pytest.fixture
def key(gate: Capgate, key_name: str, mock: MockUpstream) -> str:
    mock.clear()
    return gate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "50"}])


def received(mock: MockUpstream, path: str) -> RecordedRequest:
    matching = [r for r in mock.requests() if r.path == path]
    assert len(matching) == 1, [r.path for r in mock.requests()]
    return matching[0]


def only_entry(gate: Capgate, name: str) -> dict[str, Any]:
    entries = gate.ledger(key=name)
    assert len(entries) == 1, entries
    return entries[0]


def sse_events(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data and data[0] != "[DONE]":
            out.append(json.loads("\n".join(data)))
    return out


# -- a Claude Code request, untouched ------------------------------------------------------


def claude_code_body(*, with_max_tokens: bool = True) -> dict[str, Any]:
    """Shaped like what Claude Code sends: many tools, a long system prompt in blocks,
    thinking, context management, metadata, a system turn inside messages, and fields
    capgate has never heard of."""
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Absolute path of the file. " * 8},
            "pattern": {"type": "string", "description": "A glob or regular expression. " * 6},
            "limit": {"type": "integer", "minimum": 1, "description": "How many lines to read."},
            "flags": {
                "type": "array",
                "items": {"type": "string", "enum": ["-i", "-n", "-A", "-B"]},
            },
        },
        "required": ["path"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    }
    tools = [
        {
            "name": f"Tool{i:02d}",
            "description": f"Tool number {i}. "
            + "Use this tool to read, search and edit files in the workspace; prefer it over shell commands. "
            * 14,
            "input_schema": schema,
        }
        for i in range(25)
    ]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    system = [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {
            "type": "text",
            "text": "# Guidelines\n"
            + "Be concise. Explain non-trivial commands. Ünïcödé ✓ 漢字. " * 300,
            "cache_control": {"type": "ephemeral"},
        },
    ]
    body: dict[str, Any] = {
        "model": SONNET,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Understood."}]},
            {"role": "system", "content": "A system turn inside messages, as some clients send."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Fix the failing test please mock:words=20",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
        "system": system,
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 10_000},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {
            "user_id": json.dumps(
                {
                    "device_id": "d" * 64,
                    "account_uuid": str(uuid.uuid4()),
                    "session_id": str(uuid.uuid4()),
                }
            )
        },
        "temperature": 1,
        "stream": True,
        "some_future_field": {"nested": [1, 2.5, None, True], "empty": {}},
        "x_capgate_never_heard_of_this": "kept",
    }
    if with_max_tokens:
        body["max_tokens"] = 32_000
    return body


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "X-Claude-Code-Session-Id": str(uuid.uuid4()),
    "user-agent": "claude-cli/2.1.0 (external, cli)",
    "x-stainless-lang": "js",
    "accept": "application/json",
    "content-type": "application/json",
}


def encode(body: dict[str, Any]) -> bytes:
    """Deliberately not orjson's compact form: any re-encoding would show in the bytes."""
    return json.dumps(body, ensure_ascii=False, indent=1).encode()


def test_claude_code_request_forwarded_byte_for_byte(
    gate: Capgate, mock: MockUpstream, http: httpx.Client, key: str, key_name: str
) -> None:
    raw = encode(claude_code_body())
    assert 70_000 < len(raw) < 120_000
    headers = {**CLAUDE_CODE_HEADERS, "x-api-key": key}
    with http.stream("POST", "/v1/messages?beta=true", content=raw, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = sse_events(text)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    words = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert len(words.split()) == 20

    upstream = received(mock, "/v1/messages")
    assert upstream.raw == raw  # byte for byte
    assert upstream.headers["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.headers["x-api-key"] == "up-key-a"  # the provider's key, not the client's
    assert all(key not in value for value in upstream.headers.values())
    assert "authorization" not in upstream.headers

    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "ok" and entry["stream"] is True and entry["output_tokens"] == 20
    assert entry["input_tokens"] == events[0]["message"]["usage"]["input_tokens"] > 10_000


def test_missing_max_tokens_is_set_before_forwarding(
    gate: Capgate, mock: MockUpstream, http: httpx.Client, key: str, key_name: str
) -> None:
    body = claude_code_body(with_max_tokens=False)
    body["stream"] = False
    raw = encode(body)
    response = http.post(
        "/v1/messages", content=raw, headers={**CLAUDE_CODE_HEADERS, "x-api-key": key}
    )
    assert response.status_code == 200, response.text
    forwarded = received(mock, "/v1/messages").body
    assert forwarded["max_tokens"] == DEFAULT_MAX_TOKENS
    assert {k: v for k, v in forwarded.items() if k != "max_tokens"} == body  # nothing else changed
    assert list(forwarded)[: len(body)] == list(body)  # not even the order of fields
    assert only_entry(gate, key_name)["output_tokens"] == 20


def test_openai_missing_max_tokens_gets_max_completion_tokens(
    gate: Capgate, mock: MockUpstream, http: httpx.Client, key: str
) -> None:
    body = {
        "model": GPT,
        "messages": [{"role": "user", "content": "hi mock:words=2"}],
        "user": "u-1",
    }
    response = http.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    upstream = received(mock, "/v1/chat/completions")
    # OpenAI's reasoning models refuse max_tokens: capgate sets max_completion_tokens.
    assert upstream.body == {**body, "max_completion_tokens": DEFAULT_MAX_TOKENS}
    assert upstream.headers["authorization"] == "Bearer up-key-o"


def test_routed_alias_rewrites_only_the_model(
    gate: Capgate, mock: MockUpstream, http: httpx.Client, key: str, key_name: str
) -> None:
    body = {
        "model": "alias-sonnet",
        "max_tokens": 77,
        "messages": [{"role": "user", "content": "hi"}],
        "zz": 1,
    }
    response = http.post("/v1/messages", json=body, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    assert received(mock, "/v1/messages").body == {**body, "model": SONNET}
    entry = only_entry(gate, key_name)
    assert (entry["model"], entry["upstream_model"]) == ("alias-sonnet", SONNET)


def test_body_with_what_capgate_needs_is_not_reencoded(
    gate: Capgate, mock: MockUpstream, http: httpx.Client, key: str
) -> None:
    """An OpenAI stream that already asks for usage and gives max_tokens needs no change."""
    body = {
        "model": GPT,
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi mock:words=5"}],
        "unknown": ["é", 1e-7],
    }
    raw = encode(body)
    response = http.post(
        "/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert received(mock, "/v1/chat/completions").raw == raw


# -- usage accounted even when the client did not ask for it ---------------------------------


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": False}, {"include_usage": False, "continuous_usage_stats": False}],
    ids=["absent", "false", "false-with-other-option"],
)
def test_openai_stream_without_usage_is_still_accounted(
    gate: Capgate,
    mock: MockUpstream,
    http: httpx.Client,
    key: str,
    key_name: str,
    stream_options: dict[str, Any] | None,
) -> None:
    body: dict[str, Any] = {
        "model": GPT,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "count mock:words=17"}],
    }
    if stream_options is not None:
        body["stream_options"] = stream_options
    response = http.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    chunks = sse_events(response.text)
    assert response.text.rstrip().endswith("data: [DONE]")
    # The client did not ask for usage: it gets no usage chunk and no usage field.
    assert all(c.get("choices") for c in chunks)
    assert not any(c.get("usage") for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert len(text.split()) == 17

    upstream = received(mock, "/v1/chat/completions").body
    assert upstream["stream_options"] == {**(stream_options or {}), "include_usage": True}
    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 17 and entry["input_tokens"] > 0
    price_in, price_out, _ = PRICES[GPT]
    assert Decimal(entry["cost_usd"]) == (entry["input_tokens"] * price_in + 17 * price_out) / 10**6


# -- answers without usage: charged in full ------------------------------------------------


def worst_case(model: str, raw: bytes, messages: int, max_tokens: int) -> tuple[int, Decimal]:
    bound = len(raw) + REQUEST_OVERHEAD + MESSAGE_OVERHEAD * messages
    _, price_out, dearest_in = PRICES[model]
    return bound, (bound * dearest_in + max_tokens * price_out) / 10**6


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [SONNET, GPT])
def test_no_usage_charges_the_full_reservation(
    gate: Capgate, http: httpx.Client, key: str, key_name: str, model: str, stream: bool
) -> None:
    max_tokens = 300
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "answer without usage mock:no_usage mock:words=5"},
        ],
    }
    raw = json.dumps(body).encode()
    path = "/v1/messages" if model == SONNET else "/v1/chat/completions"
    response = http.post(
        path, content=raw, headers={"x-api-key": key, "content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    bound, worst = worst_case(model, raw, 3, max_tokens)
    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "ok"
    assert Decimal(entry["cost_usd"]) == worst > 0
    assert (entry["input_tokens"], entry["output_tokens"]) == (bound, max_tokens)
    assert entry["error"] and "no usage" in entry["error"]
    used = {u["metric"]: u for u in gate.key_usage(key_name)}["cost_usd"]
    assert Decimal(used["used"]) == worst and used["reserved"] == "0"


# -- streams cut short ---------------------------------------------------------------------


def read_cut_stream(http: httpx.Client, path: str, key: str, body: dict[str, Any]) -> str:
    """The text that reached the client before the stream broke off."""
    received_text = b""
    with http.stream("POST", path, json=body, headers={"x-api-key": key}) as response:
        assert response.status_code == 200
        try:
            for chunk in response.iter_raw():
                received_text += chunk
        except httpx.HTTPError:  # an incomplete body is what a cut stream looks like
            pass
    return received_text.decode("utf-8", "replace")


def test_cut_anthropic_stream_is_an_error_charged_for_what_was_streamed(
    gate: Capgate, http: httpx.Client, key: str, key_name: str
) -> None:
    body = {
        "model": SONNET,
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "long answer mock:words=60 mock:cut_stream"}],
    }
    text = read_cut_stream(http, "/v1/messages", key, body)
    events = sse_events(text.rsplit("\n\n", 1)[0] + "\n\n")
    assert events[0]["type"] == "message_start"
    assert not any(e["type"] == "message_stop" for e in events)
    streamed = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    streamed_words = len(streamed.split())
    assert 0 < streamed_words < 60

    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "error" and entry["stream"] is True
    assert entry["error"]
    input_tokens = events[0]["message"]["usage"]["input_tokens"]
    assert entry["input_tokens"] == input_tokens
    assert entry["output_tokens"] >= streamed_words  # at least what the client received
    price_in, price_out, _ = PRICES[SONNET]
    cost = Decimal(entry["cost_usd"])
    assert cost == (input_tokens * price_in + entry["output_tokens"] * price_out) / 10**6
    assert cost >= (input_tokens * price_in + streamed_words * price_out) / 10**6
    used = {u["metric"]: u for u in gate.key_usage(key_name)}["cost_usd"]
    assert Decimal(used["used"]) == cost and used["reserved"] == "0"


def test_cut_openai_stream_is_an_error_charged_for_what_was_streamed(
    gate: Capgate, http: httpx.Client, key: str, key_name: str
) -> None:
    body = {
        "model": GPT,
        "max_tokens": 500,
        "stream": True,
        "messages": [{"role": "user", "content": "long answer mock:words=60 mock:cut_stream"}],
    }
    text = read_cut_stream(http, "/v1/chat/completions", key, body)
    assert "[DONE]" not in text
    chunks = sse_events(text.rsplit("\n\n", 1)[0] + "\n\n")
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    streamed_words = len(streamed.split())
    assert 0 < streamed_words < 60

    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "error"
    # No usage arrived: the whole input bound and at least the streamed output are charged.
    assert entry["input_tokens"] >= len(json.dumps(body))
    assert entry["output_tokens"] >= streamed_words
    price_in, price_out, _ = PRICES[GPT]
    cost = Decimal(entry["cost_usd"])
    assert cost == (entry["input_tokens"] * price_in + entry["output_tokens"] * price_out) / 10**6
    used = {u["metric"]: u for u in gate.key_usage(key_name)}["cost_usd"]
    assert Decimal(used["used"]) == cost and used["reserved"] == "0"


@pytest.mark.parametrize("model", [SONNET, GPT])
def test_cut_stream_never_charges_more_than_reserved(
    gate: Capgate, http: httpx.Client, key_name: str, model: str
) -> None:
    """max_tokens 40 under an output limit of 40: whatever happens, at most 40 are used."""
    key = gate.create_key(key_name, [{"metric": "output_tokens", "window": "day", "max": 40}])
    body = {
        "model": model,
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": "long answer mock:words=60 mock:cut_stream"}],
    }
    path = "/v1/messages" if model == SONNET else "/v1/chat/completions"
    read_cut_stream(http, path, key, body)
    entry = only_entry(gate, key_name)
    assert entry["outcome"] == "error"
    assert entry["output_tokens"] <= 40
    used = gate.key_usage(key_name)[0]
    assert used["used"] <= used["max"] == 40
