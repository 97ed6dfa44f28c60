"""`POST /generate` and `POST /generate-codex`: ai-cli-bridge's simple API, through the
same engine (routing, budgets, ledger) as every other endpoint."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest

from conftest import Capgate


def _post(capgate: Capgate, path: str, key: str | None, body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(capgate.url + path, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("path", "model"), [("/generate", "claude-sonnet-4-5"), ("/generate-codex", "gpt-5-codex")]
)
def test_generate_answers_in_the_bridge_shape(
    capgate: Capgate, key_name: str, path: str, model: str
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 1}])
    body = {"systemPrompt": "Be brief.", "userPrompt": "Say hi mock:words=6"}
    response = _post(capgate, path, key, body)
    assert response.status_code == 200, response.text
    data = orjson.loads(response.content)
    assert set(data) == {"content", "usage", "cost_usd", "duration_ms", "model"}
    assert len(data["content"].split()) == 6
    assert data["usage"]["output_tokens"] == 6 and data["usage"]["input_tokens"] > 0
    assert data["model"] == model and data["duration_ms"] >= 0
    (entry,) = capgate.ledger(key=key_name)
    assert entry["model"] == model and entry["outcome"] == "ok"
    # The cost is the ledger's, exactly (a JSON number written from the decimal).
    assert Decimal(response.text.split('"cost_usd":')[1].split(",")[0]) == Decimal(
        entry["cost_usd"]
    )
    assert entry["output_tokens"] == 6


def test_generate_takes_a_model_and_the_system_prompt_reaches_upstream(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name)
    response = _post(
        capgate, "/generate", key, {"userPrompt": "hello", "model": "claude-haiku-4-5"}
    )
    assert response.status_code == 200
    assert response.json()["model"] == "claude-haiku-4-5"
    assert capgate.ledger(key=key_name)[0]["upstream_model"] == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "userPrompt"),
        ({"userPrompt": ""}, "userPrompt"),
        ({"userPrompt": "x", "systemPrompt": 3}, "systemPrompt"),
        ({"userPrompt": "x", "model": 7}, "model"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    capgate: Capgate, key_name: str, body: object, needle: str
) -> None:
    key = capgate.create_key(key_name)
    response = _post(capgate, "/generate", key, body)
    assert response.status_code == 400
    assert needle in response.json()["error"]
    assert capgate.ledger(key=key_name) == []


def test_generate_needs_a_key_and_respects_budgets(capgate: Capgate, key_name: str) -> None:
    assert _post(capgate, "/generate", None, {"userPrompt": "x"}).status_code == 401
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 1}])
    assert _post(capgate, "/generate-codex", key, {"userPrompt": "x"}).status_code == 200
    refused = _post(capgate, "/generate-codex", key, {"userPrompt": "x"})
    assert refused.status_code == 402
    assert "Daily request limit" in refused.json()["error"]
    assert len(capgate.ledger(key=key_name)) == 2  # the answer and the refusal
