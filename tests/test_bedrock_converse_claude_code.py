"""The real Claude Code CLI through a Bedrock Converse route: its requests (thinking,
context_management, metadata, ~25 tools, anthropic-beta headers) are translated, signed
(the mock checks SigV4 with botocore) and answered; tool use works; the ledger charges
what the mock reported; and Anthropic answering 429 fails over to Converse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudmocks import ConverseSetup as Setup
from cloudmocks import converse_gateway, cost_at
from test_claude_code import run_claude

AWS = ("AKIAMOCKCLAUDECODE", "claude/code+SECRET0123456789", "claude-code-session-token")
REGION = "us-west-2"
SONNET = "anthropic.claude-sonnet-4-5-20250929-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
# USD per million tokens: input, output, cache write, cache read (data/pricing.yaml).
PRICES = {SONNET: ("3", "15", "3.75", "0.30"), NOVA: ("0.06", "0.24", "0.06", "0.015")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    models: list[dict[str, Any]] = [
        # Claude Code's main model on Bedrock through Converse
        {"match": "claude-sonnet-4-6", "retries": 0,
         "targets": [{"provider": "converse", "model": SONNET}]},
        # its small model on Amazon Nova
        {"match": "claude-haiku-4-5", "retries": 0,
         "targets": [{"provider": "converse", "model": NOVA}]},
        # Anthropic first, Converse when Anthropic fails
        {"match": "claude-opus-4-5", "retries": 0, "targets": [{"provider": "anthropic"}],
         "fallbacks": [{"provider": "converse", "model": SONNET}]},
    ]  # fmt: skip
    with converse_gateway(tmp_path_factory.mktemp("converse_cc"), AWS, REGION, models) as setup:
        yield setup


def _charged_as_reported(setup: Setup, key_name: str) -> list[dict[str, Any]]:
    """Every ledger entry is an ok Converse call charged exactly what the mock reported."""
    entries = setup.gw.ledger(key=key_name)
    assert entries and all(e["outcome"] == "ok" for e in entries), entries
    assert all(e["provider"] == "converse" for e in entries)
    for entry in entries:
        assert Decimal(entry["cost_usd"]) == cost_at(entry, PRICES[entry["upstream_model"]]) > 0
    return entries


# What the mock reports for the answer (Converse's usage), charged as is.
REPORTED = {"inputTokens": 21000, "outputTokens": 7, "cacheReadInputTokens": 15000,
            "cacheWriteInputTokens": 4000, "totalTokens": 40007}  # fmt: skip


def test_claude_code_answers_through_converse(setup: Setup, key_name: str, tmp_path: Path) -> None:
    setup.bedrock.clear()
    key = setup.gw.create_key(key_name)
    prompt = f"say hi mock:words=7 mock:usage={json.dumps(REPORTED)}"
    result = run_claude(setup.gw, key, tmp_path, prompt, "--model", "claude-sonnet-4-6")
    assert result["is_error"] is False, result
    assert len(result["result"].split()) == 7
    assert result["usage"]["cache_read_input_tokens"] == 15000  # Claude Code read it too
    sent = setup.bedrock.requests()
    assert len(sent) == 1 and sent[0].path == f"/model/{SONNET}/converse-stream"
    body = sent[0].body
    # Claude Code's own tools, as Converse tool specs; its system prompt; its thinking and
    # betas for the Anthropic model; context_management and the rest left out (the mock
    # refuses any field Converse does not know)
    assert len(body["toolConfig"]["tools"]) > 10 and body["system"]
    additional = body["additionalModelRequestFields"]
    assert additional["thinking"]["type"] in ("adaptive", "enabled")
    assert "interleaved-thinking-2025-05-14" in additional["anthropic_beta"]
    (entry,) = _charged_as_reported(setup, key_name)
    assert entry["upstream_model"] == SONNET and entry["stream"] is True
    assert (entry["input_tokens"], entry["output_tokens"]) == (21000, 7)
    assert (entry["cache_read_tokens"], entry["cache_write_tokens"]) == (15000, 4000)
    # $3 / $15 / $3.75 / $0.30 per million: input, output, cache write, cache read
    # (21000 * 3 + 7 * 15 + 4000 * 3.75 + 15000 * 0.30) / 1e6
    assert Decimal(entry["cost_usd"]) == Decimal("0.082605")


def test_claude_code_on_amazon_nova(setup: Setup, key_name: str, tmp_path: Path) -> None:
    """A model that is not Anthropic's gets no `thinking` (Bedrock would refuse it)."""
    setup.bedrock.clear()
    key = setup.gw.create_key(key_name)
    result = run_claude(
        setup.gw, key, tmp_path, "say hi mock:words=4", "--model", "claude-haiku-4-5"
    )
    assert result["is_error"] is False, result
    assert len(result["result"].split()) == 4
    body = setup.bedrock.last_request().body
    assert "thinking" not in body.get("additionalModelRequestFields", {})
    (entry,) = _charged_as_reported(setup, key_name)
    assert entry["upstream_model"] == NOVA and entry["output_tokens"] == 4


def test_claude_code_uses_a_tool_through_converse(
    setup: Setup, key_name: str, tmp_path: Path
) -> None:
    """The mock calls Claude Code's Read tool once; Claude Code runs it and sends the
    result back (a toolUse / toolResult round trip through the translation)."""
    setup.bedrock.clear()
    key = setup.gw.create_key(key_name)
    result = run_claude(
        setup.gw, key, tmp_path, "read it mock:tool=Read", "--model",
        "claude-sonnet-4-6", "--allowedTools", "Read",
    )  # fmt: skip
    assert result["is_error"] is False, result
    entries = _charged_as_reported(setup, key_name)
    assert len(entries) >= 2
    last = setup.bedrock.last_request().body
    kinds = {k for m in last["messages"] for block in m["content"] for k in block}
    assert {"toolUse", "toolResult"} <= kinds


def test_claude_code_fails_over_from_anthropic_to_converse(
    setup: Setup, key_name: str, tmp_path: Path
) -> None:
    faults = setup.anthropic.url + "/mock/faults"
    httpx.post(faults, json={"status": 429, "count": -1}, timeout=10).raise_for_status()
    try:
        key = setup.gw.create_key(key_name)
        result = run_claude(
            setup.gw, key, tmp_path, "say hi mock:words=5", "--model", "claude-opus-4-5"
        )
    finally:
        httpx.post(faults, json={}, timeout=10).raise_for_status()
    assert result["is_error"] is False, result
    assert len(result["result"].split()) == 5
    entries = _charged_as_reported(setup, key_name)
    main = [e for e in entries if e["model"] == "claude-opus-4-5"]
    assert main and all(e["attempts"] == 2 and e["upstream_model"] == SONNET for e in main)


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_request_id_reaches_the_client(setup: Setup, key_name: str, stream: bool) -> None:
    """Bedrock's `x-amzn-requestid` is passed on, also as Anthropic's `request-id` (what
    the SDKs and Claude Code's transcripts record), and names the message."""
    key = setup.gw.create_key(key_name)
    response = httpx.post(
        setup.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": stream,
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    request_id = response.headers["x-amzn-requestid"]
    assert len(request_id) == 36 and response.headers["request-id"] == request_id
    assert ("msg_bdrk_" + request_id.replace("-", "")).encode() in response.content


def test_a_system_turn_is_folded_and_structured_output_refused(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "again mock:words=3"},
    ]
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": turns}
    url, headers = setup.gw.url + "/v1/messages", {"x-api-key": key}
    response = httpx.post(url, headers=headers, json=body, timeout=30)
    assert response.status_code == 200, response.text
    sent = setup.bedrock.last_request().body
    assert sent["system"] == [{"text": "Answer in French."}]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    setup.bedrock.clear()
    schema = {"type": "json_schema", "schema": {"type": "object"}}
    refused = httpx.post(
        url, headers=headers, json=body | {"output_config": {"format": schema}}, timeout=30
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and "output_config.format" in error["message"]
    assert setup.bedrock.requests() == []  # nothing sent
    last, first = setup.gw.ledger(key=key_name)  # newest first
    assert first["outcome"] == "ok" and (last["outcome"], last["status"]) == ("error", 400)
    assert Decimal(last["cost_usd"]) == 0
