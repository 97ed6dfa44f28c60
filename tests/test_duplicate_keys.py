"""A body with a key twice among the fields capgate reads is refused: orjson keeps the
last, an upstream parser may keep the first, so the request could be priced as one model
and run as another. 400 in the client's dialect, nothing reserved, spent or recorded."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from conftest import Capgate

_MESSAGES = b'"messages":[{"role":"user","content":"hi mock:words=3"}]'


def _post(capgate: Capgate, key: str, path: str, raw: bytes) -> httpx.Response:
    headers = {"x-api-key": key, "authorization": f"Bearer {key}"}
    headers["content-type"] = "application/json"
    return httpx.post(capgate.url + path, content=raw, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("path", "raw", "twice"),
    [
        (
            "/v1/messages",
            b'{"model":"claude-opus-4-1","max_tokens":100000,"model":"claude-haiku-4-5",'
            b'"max_tokens":10,' + _MESSAGES + b"}",
            "model",
        ),
        (
            "/v1/messages",
            b'{"model":"claude-haiku-4-5","max_tokens":2000,"thinking":{"type":"enabled",'
            b'"budget_tokens":1500,"budget_tokens":1024},' + _MESSAGES + b"}",
            "budget_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"model":"gpt-5","max_completion_tokens":100000,' + _MESSAGES + b","
            b'"max_completion_tokens":10}',
            "max_completion_tokens",
        ),
        ("/v1/responses", b'{"model":"gpt-5","input":"a","stream":false,"stream":true}', "stream"),
        (  # the second spelled with an escape: the same key to every JSON parser
            "/v1/messages",
            b'{"model":"claude-haiku-4-5","max_tokens":100000,' + _MESSAGES + b","
            b'"max\\u005ftokens":10}',
            "max_tokens",
        ),
    ],
    ids=["messages-model", "messages-thinking", "chat-max", "responses-stream", "escaped"],
)
def test_duplicate_keys_are_refused(
    capgate: Capgate, key_name: str, path: str, raw: bytes, twice: str
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "5"}])
    response = _post(capgate, key, path, raw)
    assert response.status_code == 400, response.text
    data = response.json()
    if path == "/v1/messages":
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert set(data) == {"error"} and data["error"]["type"] == "invalid_request_error"
    assert f'the key "{twice}" more than once' in data["error"]["message"]
    assert capgate.ledger(key=key_name) == []
    [usage] = capgate.key_usage(key_name)
    assert Decimal(usage["used"]) == 0 and Decimal(usage["reserved"]) == 0


def test_the_same_name_in_different_objects_passes(capgate: Capgate, key_name: str) -> None:
    """Tool calls in a conversation repeat "input" and "type": not duplicates."""
    key = capgate.create_key(key_name)
    raw = (
        b'{"model":"claude-haiku-4-5","max_tokens":20,"messages":['
        b'{"role":"user","content":"q"},'
        b'{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}},'
        b'{"type":"tool_use","id":"t2","name":"f","input":{"model":"x"}}]},'
        b'{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"a"},'
        b'{"type":"tool_result","tool_use_id":"t2","content":"b"}]}]}'
    )
    response = _post(capgate, key, "/v1/messages", raw)
    assert response.status_code == 200, response.text
    assert len(capgate.ledger(key=key_name)) == 1
