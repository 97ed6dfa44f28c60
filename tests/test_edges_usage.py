"""The budget at its edges, through a real server and the mock upstream: answers that
report more than was reserved, usage that cannot be read, input the body does not show
(server-side state, server tools), absurd max_tokens. See "At the edges" in
docs/budgets.md for the guarantee in each case."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from conftest import Capgate
from test_cli import ok, run_cli

# (path, model, stream) for each dialect; prices from the bundled table.
_ENDPOINTS = {
    "messages": ("/v1/messages", "claude-sonnet-4-6"),
    "chat": ("/v1/chat/completions", "gpt-5"),
    "responses": ("/v1/responses", "gpt-5"),
}
# pico-dollars per token: (input, dearest input-side rate, output)
_PRICES = {"claude-sonnet-4-6": (3_000_000, 6_000_000, 15_000_000), "gpt-5": (1_250_000, 1_250_000, 10_000_000)}  # fmt: skip
_USAGE_NAMES = {
    "messages": ("input_tokens", "output_tokens"),
    "chat": ("prompt_tokens", "completion_tokens"),
    "responses": ("input_tokens", "output_tokens"),
}


def _body(endpoint: str, text: str, stream: bool = False, max_out: int = 100) -> dict[str, Any]:
    model = _ENDPOINTS[endpoint][1]
    if endpoint == "responses":
        return {"model": model, "input": text, "max_output_tokens": max_out, "stream": stream}
    field = "max_completion_tokens" if endpoint == "chat" else "max_tokens"
    messages = [{"role": "user", "content": text}]
    return {"model": model, field: max_out, "messages": messages, "stream": stream}


def _post(capgate: Capgate, key: str, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    path = _ENDPOINTS[endpoint][0]
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if endpoint == "messages":
        headers = {"x-api-key": key, "content-type": "application/json"}
    return httpx.post(capgate.url + path, content=orjson.dumps(body), headers=headers, timeout=30)


def _worst_nano(endpoint: str, body: dict[str, Any]) -> int:
    """The worst case capgate holds for `body` (the byte bound of docs/budgets.md)."""
    raw = orjson.dumps(body)
    turns = len(body["messages"]) if "messages" in body else 0
    bound = len(raw) + 1000 + 8 * turns
    _, dearest, output = _PRICES[body["model"]]
    max_out = body.get("max_tokens") or body.get("max_completion_tokens")
    max_out = max_out or body["max_output_tokens"]
    return -(-(bound * dearest + max_out * output) // 1000)


def _error_message(response: httpx.Response, endpoint: str, status: int) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    if endpoint == "messages":
        assert data["type"] == "error"
    else:
        assert set(data) == {"error"}
    return str(data["error"]["message"])


def _cost_limit(usd: str) -> list[dict[str, Any]]:
    return [{"metric": "cost_usd", "window": "day", "max": usd}]


def _nano(usd: str) -> int:
    return int(Decimal(usd) * 10**9)


# -- over the reservation ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", list(_ENDPOINTS))
def test_usage_above_the_reservation_is_charged_and_flagged(
    capgate: Capgate, key_name: str, endpoint: str, stream: bool
) -> None:
    """A provider that bills input the body does not show and ignores max_tokens: 5M
    input and 5,000 output tokens for max_tokens 100, on a $0.02 budget."""
    key = capgate.create_key(key_name, _cost_limit("0.02"))
    text = "hi mock:input_tokens=5000000 mock:output_tokens=5000"
    response = _post(capgate, key, endpoint, _body(endpoint, text, stream))
    assert response.status_code == 200, response.text
    [entry] = capgate.ledger(key=key_name)
    price_in, _, price_out = _PRICES[_ENDPOINTS[endpoint][1]]
    truth = (5_000_000 * price_in + 5000 * price_out) // 1000  # $15.075 on Sonnet
    assert entry["outcome"] == "ok"
    assert entry["flags"] == ["over_reservation"]
    assert _nano(entry["cost_usd"]) == truth  # the money was spent: the ledger says so
    assert (entry["input_tokens"], entry["output_tokens"]) == (5_000_000, 5000)
    [usage] = capgate.key_usage(key_name)
    assert _nano(usage["used"]) == truth > _nano("0.02")  # the truth, above the limit
    assert Decimal(usage["reserved"]) == 0
    # Nothing breaks, and the next request is refused.
    again = _post(capgate, key, endpoint, _body(endpoint, "hi"))
    assert "reached" in _error_message(again, endpoint, 402)
    me = httpx.get(capgate.url + "/v1/me", headers={"authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["limits"][0]["used"] == usage["used"]


def test_usage_within_the_reservation_has_no_flag(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, _cost_limit("1"))
    assert _post(capgate, key, "messages", _body("messages", "hi mock:words=5")).status_code == 200
    [entry] = capgate.ledger(key=key_name)
    assert entry["flags"] == [] and entry["output_tokens"] == 5


# -- usage that cannot be read -----------------------------------------------------------

_BAD_COUNTS = {
    "fraction": 10.5,
    "string": "10",
    "negative": -10,
    "boolean": True,
    "null": None,
    "huge": 2**40,
}


def _usage_directive(usage: Any) -> str:
    return "hi mock:usage=" + json.dumps(usage)


def _check_unreadable(capgate: Capgate, key_name: str, endpoint: str, body: dict[str, Any]) -> None:
    [entry] = capgate.ledger(key=key_name)
    assert entry["outcome"] == "ok"
    assert entry["flags"] == ["usage_unreadable"]
    assert _nano(entry["cost_usd"]) == _worst_nano(endpoint, body)  # the reservation
    [usage] = capgate.key_usage(key_name)
    assert _nano(usage["used"]) == _worst_nano(endpoint, body)
    assert Decimal(usage["reserved"]) == 0


@pytest.mark.parametrize("bad", list(_BAD_COUNTS))
def test_an_unreadable_count_charges_the_reservation(
    capgate: Capgate, key_name: str, bad: str
) -> None:
    key = capgate.create_key(key_name, _cost_limit("1"))
    body = _body("messages", _usage_directive({"input_tokens": _BAD_COUNTS[bad], "output_tokens": 3}))  # fmt: skip
    assert _post(capgate, key, "messages", body).status_code == 200
    _check_unreadable(capgate, key_name, "messages", body)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", list(_ENDPOINTS))
@pytest.mark.parametrize("shape", ["empty", "string", "output missing"])
def test_unreadable_usage_in_every_reader(
    capgate: Capgate, key_name: str, endpoint: str, stream: bool, shape: str
) -> None:
    names = _USAGE_NAMES[endpoint]
    usage: dict[str, Any] = {
        "empty": {},
        "string": {names[0]: "12", names[1]: 3},
        "output missing": {names[0]: 12},
    }[shape]
    key = capgate.create_key(key_name, _cost_limit("1"))
    body = _body(endpoint, _usage_directive(usage), stream)
    response = _post(capgate, key, endpoint, body)
    assert response.status_code == 200, response.text
    _check_unreadable(capgate, key_name, endpoint, body)


@pytest.mark.parametrize("endpoint", list(_ENDPOINTS))
def test_integral_floats_are_read(capgate: Capgate, key_name: str, endpoint: str) -> None:
    names = _USAGE_NAMES[endpoint]
    key = capgate.create_key(key_name, _cost_limit("1"))
    body = _body(endpoint, _usage_directive({names[0]: 1000.0, names[1]: 20.0}))
    assert _post(capgate, key, endpoint, body).status_code == 200
    [entry] = capgate.ledger(key=key_name)
    price_in, _, price_out = _PRICES[body["model"]]
    assert entry["flags"] == []
    assert (entry["input_tokens"], entry["output_tokens"]) == (1000, 20)
    assert _nano(entry["cost_usd"]) == (1000 * price_in + 20 * price_out) // 1000


# -- input the body does not show --------------------------------------------------------


def test_server_side_state_is_bounded_by_the_context_window(
    capgate: Capgate, key_name: str
) -> None:
    """previous_response_id: the provider adds the stored conversation to the input; up
    to gpt-5's 400K-token context window ($0.50 at $1.25/M) is held."""
    body = _body("responses", "hi mock:input_tokens=399000") | {"previous_response_id": "resp_1"}
    key = capgate.create_key(key_name, _cost_limit("0.45"))
    message = _error_message(_post(capgate, key, "responses", body), "responses", 402)
    assert "may need up to $0.50" in message
    key = capgate.create_key(key_name + "-b", _cost_limit("0.60"))
    assert _post(capgate, key, "responses", body).status_code == 200
    [entry] = capgate.ledger(key=key_name + "-b")
    assert entry["input_tokens"] == 399_000 and entry["flags"] == []  # within the bound


def test_server_side_state_without_a_known_context_window_is_refused(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name)
    for extra in ({"previous_response_id": "resp_1"}, {"conversation": "conv_1"}):
        body = _body("responses", "hi") | {"model": "gpt-6-sol"} | extra
        message = _error_message(_post(capgate, key, "responses", body), "responses", 400)
        assert 'context window of model "gpt-6-sol" is unknown' in message
        assert next(iter(extra)) in message and "context_window" in message
    assert capgate.ledger(key=key_name) == []


def test_a_server_tool_capgate_cannot_bound_is_refused(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    for tool in ({"type": "code_execution_20250825"}, {"type": "some_new_tool_20270101"}):
        body = _body("messages", "hi") | {"tools": [tool]}
        message = _error_message(_post(capgate, key, "messages", body), "messages", 400)
        assert f'server tool "{tool["type"]}"' in message and "unbounded_hold_usd" in message
    body = _body("responses", "hi") | {"tools": [{"type": "code_interpreter"}]}
    message = _error_message(_post(capgate, key, "responses", body), "responses", 400)
    assert 'hosted tool "code_interpreter"' in message
    assert capgate.ledger(key=key_name) == []


def test_a_server_tool_holds_its_fees_and_the_context_window(
    capgate: Capgate, key_name: str
) -> None:
    """web_search with max_uses 5 on Sonnet 4.6: the 1M-token context at the dearest
    input rate ($6) plus 5 searches at $10 / 1,000 ($0.05), plus the output."""
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    body = _body("messages", "hi mock:input_tokens=900000") | {"tools": [tool]}
    worst = 1_000_000 * 6_000_000 // 1000 + 100 * 15_000 + 50_000_000
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "6.05"}])
    message = _error_message(_post(capgate, key, "messages", body), "messages", 402)
    assert f"may need up to ${Decimal(worst) / 10**9:.2f}" in message
    key = capgate.create_key(key_name + "-b", _cost_limit("6.10"))
    assert _post(capgate, key, "messages", body).status_code == 200
    [entry] = capgate.ledger(key=key_name + "-b")
    assert entry["input_tokens"] == 900_000 and entry["flags"] == []


# -- absurd max_tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("messages", "max_tokens", 2**63 - 1),
        ("chat", "max_completion_tokens", 2**63 - 1),
        ("chat", "n", 1000),
        ("responses", "max_output_tokens", 2**40),
    ],
)
def test_absurd_max_tokens_is_a_clear_400(
    capgate: Capgate, key_name: str, endpoint: str, field: str, value: int
) -> None:
    key = capgate.create_key(key_name)  # no dollar limit
    body = _body(endpoint, "hi") | {field: value}
    message = _error_message(_post(capgate, key, endpoint, body), endpoint, 400)
    assert f"{field}: {value} is more than any model allows" in message
    assert capgate.ledger(key=key_name) == []


def test_the_largest_max_tokens_allowed_is_held_without_overflow(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name, [{"metric": "output_tokens", "window": "day", "max": 2**40}])
    body = _body("chat", "hi mock:words=3", max_out=2**31 - 1) | {"n": 128}
    assert _post(capgate, key, "chat", body).status_code == 200
    [entry] = capgate.ledger(key=key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 3


# -- a key's stated hold for what cannot be bounded --------------------------------------


def test_a_key_can_hold_a_stated_amount_instead_of_refusing(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name, _cost_limit("1"), unbounded_hold_usd="0.40")
    assert capgate.admin("GET", f"/admin/keys/{key_name}").json()["unbounded_hold_usd"] == "0.4"
    unbounded = [
        ("messages", {"tools": [{"type": "code_execution_20250825", "name": "code"}]}),
        ("responses", {"tools": [{"type": "image_generation"}]}),
        ("responses", {"previous_response_id": "resp_1", "model": "gpt-6-sol"}),
    ]
    for endpoint, extra in unbounded:
        response = _post(capgate, key, endpoint, _body(endpoint, "hi mock:words=2") | extra)
        assert response.status_code == 200, response.text
    entries = capgate.ledger(key=key_name)
    assert [e["outcome"] for e in entries] == ["ok"] * 3
    assert all(e["flags"] == [] for e in entries)  # the real use was under the hold
    # The hold is held like any worst case: a budget below it refuses.
    low = capgate.create_key(key_name + "-low", _cost_limit("0.30"), unbounded_hold_usd="0.40")
    body = _body("messages", "hi") | dict(unbounded[0][1])
    message = _error_message(_post(capgate, low, "messages", body), "messages", 402)
    assert "may need up to $0.40" in message
    # The hold cleared: refused again, with the reason.
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"unbounded_hold_usd": None})
    assert patched.status_code == 200 and patched.json()["unbounded_hold_usd"] is None
    message = _error_message(_post(capgate, key, "messages", body), "messages", 400)
    assert "code_execution_20250825" in message and "unbounded_hold_usd" in message


def test_a_hold_that_is_not_a_positive_amount_is_refused(capgate: Capgate, key_name: str) -> None:
    for bad in ("-1", "0", "lots"):
        response = capgate.admin(
            "POST", "/admin/keys", json={"name": key_name, "unbounded_hold_usd": bad}
        )
        assert response.status_code == 400, response.text
        assert "unbounded_hold_usd" in response.json()["error"]["message"]


def test_the_cli_sets_and_clears_the_hold(capgate: Capgate, key_name: str) -> None:
    ok(run_cli(capgate, "keys", "create", key_name, "--unbounded-hold", "2.00"))
    shown = json.loads(ok(run_cli(capgate, "keys", "show", key_name, "--json")))
    assert shown["unbounded_hold_usd"] == "2"
    ok(run_cli(capgate, "keys", "update", key_name, "--unbounded-hold", "none"))
    shown = json.loads(ok(run_cli(capgate, "keys", "show", key_name, "--json")))
    assert shown["unbounded_hold_usd"] is None
