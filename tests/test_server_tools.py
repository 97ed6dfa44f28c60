"""Server tools through the gateway, with the mock in this process to see what capgate
forwards: an uncapped server tool gets capgate's cap (so its fees and the input it adds
are bounded upstream too), a capped one is forwarded untouched. Codex sends a hosted
`web_search` tool with every request, next to its own client-side kinds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from capgate.core.estimate import DEFAULT_TOOL_USES
from capgate.mock.runner import MockUpstream
from conftest import Capgate, Upstream, gateway_config, start_capgate


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream(history=20) as server:
        yield server


@pytest.fixture(scope="module")
def gate(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    server = start_capgate(tmp_path_factory.mktemp("tools"), gateway_config(Upstream(mock.url)))
    try:
        yield server
    finally:
        server.close()


def _send(gate: Capgate, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": key, "authorization": f"Bearer {key}"}
    return httpx.post(gate.url + path, json=body, headers=headers, timeout=30, trust_env=False)


def _forwarded(mock: MockUpstream, path: str) -> Any:
    [request] = [r for r in mock.requests() if r.path == path]
    return request


_SEARCH = {"type": "web_search_20250305", "name": "web_search"}
_CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
    {"type": "namespace", "name": "multi_agent_v1", "tools": []},
    {"type": "web_search", "external_web_access": False},
]


def test_an_uncapped_anthropic_server_tool_gets_max_uses(
    gate: Capgate, mock: MockUpstream, key_name: str
) -> None:
    mock.clear()
    key = gate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "10"}])
    function = {"name": "f", "input_schema": {"type": "object"}}
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [function, _SEARCH],
    }
    assert _send(gate, key, "/v1/messages", body).status_code == 200
    sent = _forwarded(mock, "/v1/messages").body
    assert sent["tools"] == [function, {**_SEARCH, "max_uses": DEFAULT_TOOL_USES}]
    [entry] = gate.ledger(key=key_name)
    assert entry["outcome"] == "ok" and entry["flags"] == []


def test_codex_tools_get_max_tool_calls(gate: Capgate, mock: MockUpstream, key_name: str) -> None:
    mock.clear()
    key = gate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "5"}])
    body = {"model": "gpt-5-mini", "input": "hi", "stream": True, "tools": _CODEX_TOOLS}
    assert _send(gate, key, "/v1/responses", body).status_code == 200
    sent = _forwarded(mock, "/v1/responses").body
    assert sent["max_tool_calls"] == DEFAULT_TOOL_USES and sent["tools"] == _CODEX_TOOLS
    [entry] = gate.ledger(key=key_name)
    assert entry["outcome"] == "ok"


def test_a_capped_server_tool_is_forwarded_untouched(
    gate: Capgate, mock: MockUpstream, key_name: str
) -> None:
    mock.clear()
    key = gate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "5"}])
    body = {
        "model": "gpt-5-mini",
        "input": "hi",
        "max_output_tokens": 50,
        "max_tool_calls": 2,
        "tools": _CODEX_TOOLS,
    }
    raw = orjson.dumps(body)
    response = httpx.post(
        gate.url + "/v1/responses",
        content=raw,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        trust_env=False,
    )
    assert response.status_code == 200
    assert _forwarded(mock, "/v1/responses").raw == raw
