"""Routing rules through a real capgate server and the mock upstream, driven by the
official SDKs and httpx: a rule changes the model (the ledger shows the cheap model's
cost and the rule), refuses in each dialect, adds a fallback, follows a header and a
team's remaining budget; no rule matched changes nothing. And a recorded interactive
Claude Code session replayed with and without the background-call rule."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

DATA = Path(__file__).parent / "data"
# Per million tokens (src/capgate/data/pricing.yaml)
PRICES = {
    "claude-opus-4-5": (Decimal(5), Decimal(25)),
    "claude-opus-4-6": (Decimal(5), Decimal(25)),
    "claude-sonnet-4-5": (Decimal(3), Decimal(15)),
    "claude-haiku-4-5": (Decimal(1), Decimal(5)),
}
BACKGROUND = {
    "name": "background-to-haiku",
    "when": {"model": "claude-opus-*", "tools": False, "thinking": False},
    "then": {"model": "claude-haiku-4-5"},
}
RULES: list[dict[str, Any]] = [
    {
        "name": "small-to-haiku",
        "when": {"model": "claude-opus-4-6", "max_tokens": "<= 1024"},
        "then": {"model": "claude-haiku-4-5"},
    },
    {
        "name": "free-tier-no-opus",
        "when": {"model": "*opus*", "header": {"x-capgate-tier": "free"}},
        "then": {"refuse": "Opus is for the paid tier; ask for claude-sonnet-4-5."},
    },
    {
        "name": "free-tier-gpt-4o",
        "when": {"model": "gpt-4o", "header": {"x-capgate-tier": "free"}},
        "then": {"refuse": "gpt-4o is for the paid tier.", "status": 429},
    },
    {
        "name": "team-low",
        "when": {
            "team": "rules-low-*",
            "model": "claude-opus-4-6",
            "budget_left": {"scope": "team", "metric": "cost", "below": "20%"},
        },
        "then": {"model": "claude-sonnet-4-5"},
    },
    {
        "name": "tier-cheap",
        "when": {"header": {"x-capgate-tier": "cheap*"}},
        "then": {"model": "claude-haiku-4-5"},
    },
    {
        "name": "sonnet-falls-to-haiku",
        "when": {"model": "claude-sonnet-4-0", "header": {"x-capgate-tier": "fallback"}},
        "then": {"fallback": ["claude-haiku-4-5"]},
    },
]


@pytest.fixture(scope="module")
def ruled(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    config = gateway_config(upstream, rules=RULES)
    config["server"] = {"retries": 0}
    # claude-sonnet-4-0 goes to a provider nobody listens for: it always fails.
    config["providers"].append(
        {"name": "down", "type": "anthropic", "base_url": "http://127.0.0.1:9"}
    )
    config["models"].insert(0, {"match": "claude-sonnet-4-0", "targets": [{"provider": "down"}]})
    server = start_capgate(tmp_path_factory.mktemp("rules"), config)
    try:
        yield server
    finally:
        server.close()


def cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The exact charge, rounded up to the nano-dollar once (core/money.py)."""
    price_in, price_out = PRICES[model]
    dollars = (input_tokens * price_in + output_tokens * price_out) / Decimal(1_000_000)
    return dollars.quantize(Decimal("1e-9"), rounding=ROUND_CEILING).normalize()


def post(server: Capgate, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key, **headers}, timeout=30
    )


def ask(model: str, max_tokens: int, text: str = "hello") -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }


def test_small_max_tokens_goes_to_the_cheap_model(ruled: Capgate, key_name: str) -> None:
    key = ruled.create_key(key_name)
    client = anthropic.Anthropic(base_url=ruled.url, api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(**ask("claude-opus-4-6", 512))
    assert raw.headers["x-capgate-rule"] == "small-to-haiku"
    assert raw.parse().model == "claude-haiku-4-5"
    big = client.messages.with_raw_response.create(**ask("claude-opus-4-6", 2048))
    assert "x-capgate-rule" not in big.headers
    cheap, dear = sorted(ruled.ledger(key=key_name), key=lambda e: e["id"])
    assert (cheap["model"], cheap["upstream_model"], cheap["rule"]) == (
        "claude-opus-4-6", "claude-haiku-4-5", "small-to-haiku",
    )  # fmt: skip
    assert Decimal(cheap["cost_usd"]) == cost(
        "claude-haiku-4-5", cheap["input_tokens"], cheap["output_tokens"]
    )
    assert (dear["upstream_model"], dear["rule"]) == ("claude-opus-4-6", None)
    assert Decimal(dear["cost_usd"]) == cost(
        "claude-opus-4-6", dear["input_tokens"], dear["output_tokens"]
    )


def test_a_refusal_rule_in_the_anthropic_dialect(ruled: Capgate, key_name: str) -> None:
    key = ruled.create_key(key_name, [{"metric": "requests", "window": "day", "max": 10}])
    client = anthropic.Anthropic(base_url=ruled.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        client.messages.create(
            **ask("claude-opus-4-6", 2048), extra_headers={"x-capgate-tier": "free"}
        )
    assert err.value.status_code == 403
    assert err.value.body["error"]["message"].endswith(  # type: ignore[index]
        "Opus is for the paid tier; ask for claude-sonnet-4-5."
    )
    assert err.value.response.headers["x-capgate-rule"] == "free-tier-no-opus"
    assert err.value.response.headers["x-should-retry"] == "false"
    # nothing held, nothing charged: the key's budget is untouched
    assert ruled.ledger(key=key_name) == []
    assert ruled.key_usage(key_name)[0]["used"] == 0
    ok = client.messages.with_raw_response.create(
        **ask("claude-sonnet-4-5", 2048), extra_headers={"x-capgate-tier": "free"}
    )
    assert "x-capgate-rule" not in ok.headers


def test_a_refusal_rule_in_the_openai_dialect(ruled: Capgate, key_name: str) -> None:
    key = ruled.create_key(key_name)
    client = openai.OpenAI(base_url=ruled.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-capgate-tier": "free"},
        )  # fmt: skip
    assert err.value.status_code == 429
    body = err.value.body
    assert isinstance(body, dict) and "gpt-4o is for the paid tier." in body["message"]
    assert err.value.response.headers["x-capgate-rule"] == "free-tier-gpt-4o"
    assert ruled.ledger(key=key_name) == []


def test_a_header_rule(ruled: Capgate, key_name: str) -> None:
    key = ruled.create_key(key_name)
    answer = post(ruled, key, ask("claude-sonnet-4-5", 2048), **{"x-capgate-tier": "cheap-batch"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-capgate-rule"] == "tier-cheap"
    (entry,) = ruled.ledger(key=key_name)
    assert (entry["upstream_model"], entry["rule"]) == ("claude-haiku-4-5", "tier-cheap")


def test_a_fallback_rule_adds_a_target(ruled: Capgate, key_name: str) -> None:
    key = ruled.create_key(key_name)
    failing = ask("claude-sonnet-4-0", 2048)
    answer = post(ruled, key, failing, **{"x-capgate-tier": "fallback"})
    assert answer.status_code == 200, answer.text  # the route alone would fail: 502
    assert answer.json()["model"] == "claude-haiku-4-5"
    (entry,) = ruled.ledger(key=key_name)
    assert (entry["provider"], entry["upstream_model"], entry["rule"]) == (
        "anthropic", "claude-haiku-4-5", "sonnet-falls-to-haiku",
    )  # fmt: skip
    without = post(ruled, key, failing)
    assert without.status_code == 502 and "x-capgate-rule" not in without.headers


def test_no_rule_matched_changes_nothing(ruled: Capgate, capgate: Capgate, key_name: str) -> None:
    """The same request through a server with rules (none of which holds) and one without:
    same model, same tokens, same cost, no rule."""
    body = ask("claude-sonnet-4-5", 2048)
    entries = []
    for server in (ruled, capgate):
        key = server.create_key(key_name)
        answer = post(server, key, body)
        assert answer.status_code == 200 and "x-capgate-rule" not in answer.headers
        (entry,) = server.ledger(key=key_name)
        entries.append(entry)
    fields = ("upstream_model", "input_tokens", "output_tokens", "cost_usd", "rule")
    assert [tuple(e[f] for f in fields) for e in entries] == [
        ("claude-sonnet-4-5", *(entries[1][f] for f in fields[1:4]), None)
    ] * 2


def test_a_team_low_on_budget_moves_from_opus_to_sonnet(ruled: Capgate, key_name: str) -> None:
    team = f"rules-low-{key_name}"[:60]
    made = ruled.admin("POST", "/admin/teams", json={
        "name": team, "limits": [{"metric": "cost_usd", "window": "month", "max": "1"}]})  # fmt: skip
    assert made.status_code == 201, made.text
    key = ruled.create_key(key_name, team=team)
    first = post(ruled, key, ask("claude-opus-4-6", 2048))
    assert first.status_code == 200 and "x-capgate-rule" not in first.headers
    # 32,100 output tokens of Opus: $0.8025 of the team's $1, 19.75 % left
    spend = post(ruled, key, ask("claude-opus-4-6", 32_100, "mock:output_tokens=32100"))
    assert spend.status_code == 200, spend.text
    deadline = time.monotonic() + 10
    tries = 0
    while True:  # the rule reads the budget as of at most 2 s ago (docs/routing.md)
        tries += 1
        answer = post(ruled, key, ask("claude-opus-4-6", 2048))
        assert answer.status_code == 200, answer.text
        if answer.headers.get("x-capgate-rule") == "team-low":
            break
        assert time.monotonic() < deadline, "the rule never saw the spent budget"
        time.sleep(0.5)
    assert tries <= 8
    assert answer.json()["model"] == "claude-sonnet-4-5"
    entries = sorted(ruled.ledger(key=key_name), key=lambda e: e["id"])
    assert [e["upstream_model"] for e in entries[:2]] == ["claude-opus-4-6"] * 2
    last = entries[-1]
    assert (last["model"], last["upstream_model"], last["rule"]) == (
        "claude-opus-4-6", "claude-sonnet-4-5", "team-low",
    )  # fmt: skip
    assert all(e["rule"] is None for e in entries[:-1])


# -- a recorded Claude Code session -------------------------------------------------------


def recorded_session() -> list[dict[str, Any]]:
    """An interactive Claude Code 2.1 session (tmux, opus, two prompts, one Bash call)
    recorded in front of the mock: its model requests in order, as sent (the device id
    zeroed). Two are its background title calls: no tools, thinking disabled, ~4 KB."""
    with gzip.open(DATA / "claude_code_session.jsonl.gz", "rt") as lines:
        return [json.loads(line) for line in lines]


def replay(server: Capgate, key: str) -> None:
    for request in recorded_session():
        headers = {**request["headers"], "authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", server.url + request["path"], json=request["body"], headers=headers,
            timeout=60,
        ) as answer:  # fmt: skip
            assert answer.status_code == 200, answer.read()
            for _ in answer.iter_bytes():
                pass


def test_a_recorded_claude_code_session_costs_less_with_the_background_rule(
    upstream: Upstream, capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    session = recorded_session()
    titles = [not r["body"].get("tools") for r in session]
    assert titles.count(True) == 2 and len(session) == 5
    with_rule = start_capgate(tmp_path, gateway_config(upstream, rules=[BACKGROUND]))
    try:
        runs = []
        for server in (capgate, with_rule):
            key = server.create_key(key_name)
            replay(server, key)
            runs.append(sorted(server.ledger(key=key_name), key=lambda e: e["id"]))
    finally:
        with_rule.close()
    before, after = runs
    assert [e["rule"] for e in after] == ["background-to-haiku" if t else None for t in titles]
    total_before = sum(Decimal(e["cost_usd"]) for e in before)
    total_after = sum(Decimal(e["cost_usd"]) for e in after)
    saved = Decimal(0)
    for title, old, new in zip(titles, before, after, strict=True):
        tokens = (new["input_tokens"], new["output_tokens"])
        assert (old["input_tokens"], old["output_tokens"]) == tokens  # the same answers
        model = "claude-haiku-4-5" if title else "claude-opus-4-5"
        assert new["upstream_model"] == model
        assert Decimal(new["cost_usd"]) == cost(model, *tokens)
        assert Decimal(old["cost_usd"]) == cost("claude-opus-4-5", *tokens)
        saved += Decimal(old["cost_usd"]) - Decimal(new["cost_usd"])
    assert total_before - total_after == saved > 0
    titles_before = sum(Decimal(e["cost_usd"]) for t, e in zip(titles, before, strict=True) if t)
    titles_after = sum(Decimal(e["cost_usd"]) for t, e in zip(titles, after, strict=True) if t)
    assert titles_after * 5 == titles_before  # Haiku 4.5 costs a fifth of Opus 4.5
    # The figures docs/routing.md quotes (the mock's answers are deterministic).
    figures = tuple(
        str(x.normalize()) for x in (total_before, titles_before, total_after, titles_after)
    )
    assert figures == ("0.329675", "0.0094", "0.322155", "0.00188")
