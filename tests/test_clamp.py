"""Clamp end to end: a budget that cannot pay the full max_tokens lowers it; a key that
rejects instead refuses; thinking budgets follow."""

from __future__ import annotations

from decimal import Decimal

import httpx

from conftest import Capgate

# claude-sonnet-4-6: $3/M input (dearest input rate $6/M: 1-hour cache writes), $15/M output.


def post(capgate: Capgate, key: str, body: dict) -> httpx.Response:
    return httpx.post(
        capgate.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    )


def ask(max_tokens: int, words: int, **extra: object) -> dict:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"write mock:words={words}"}],
        **extra,
    }


def test_short_budget_clamps_max_tokens(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.10"}])
    response = post(capgate, key, ask(64_000, 20_000))  # worst case ~$0.97 > $0.10
    assert response.status_code == 200, response.text
    clamped = int(response.headers["x-capgate-max-tokens"])
    assert 1024 <= clamped < 64_000
    answer = response.json()
    # The upstream really got the lower max_tokens: the answer stops there.
    assert answer["stop_reason"] == "max_tokens" and answer["usage"]["output_tokens"] == clamped
    cost = {u["metric"]: u for u in capgate.key_usage(key_name)}["cost_usd"]
    assert Decimal(cost["used"]) <= Decimal("0.10") and Decimal(cost["reserved"]) == 0


def test_reject_keys_refuse_instead(capgate: Capgate, key_name: str) -> None:
    limits = [{"metric": "cost_usd", "window": "day", "max": "0.10"}]
    response = capgate.admin(
        "POST",
        "/admin/keys",
        json={"name": key_name, "limits": limits, "on_short_budget": "reject"},
    )
    assert response.status_code == 201 and response.json()["on_short_budget"] == "reject"
    refused = post(capgate, response.json()["key"], ask(64_000, 10))
    assert refused.status_code == 402
    assert "Daily cost limit" in refused.json()["error"]["message"]


def test_below_the_minimum_is_refused(capgate: Capgate, key_name: str) -> None:
    # $0.01 left pays ~60 output tokens after the input bound: below 1024, refused.
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.01"}])
    refused = post(capgate, key, ask(64_000, 10))
    assert refused.status_code == 402
    assert capgate.ledger(key=key_name)[0]["outcome"] == "refused"


def test_a_small_request_is_not_clamped(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.10"}])
    response = post(capgate, key, ask(500, 5))
    assert response.status_code == 200 and "x-capgate-max-tokens" not in response.headers


def test_thinking_budget_is_lowered_with_max_tokens(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "output_tokens", "window": "day", "max": 5000}])
    body = ask(32_000, 10, thinking={"type": "enabled", "budget_tokens": 31_999})
    response = post(capgate, key, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-capgate-max-tokens"] == "5000"
    # A thinking request cannot be clamped below 1025 (budget_tokens >= 1024 < max_tokens).
    key2 = capgate.create_key(
        key_name + "-tiny", [{"metric": "output_tokens", "window": "day", "max": 1024}]
    )
    assert post(capgate, key2, body).status_code == 402


def test_cli_sets_on_short_budget(capgate: Capgate, key_name: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "CAPGATE_URL": capgate.url, "CAPGATE_ADMIN_KEY": capgate.admin_key}
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "keys", "create", key_name, "--limit", "cost=1/day", "--on-short-budget", "reject"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert capgate.admin("GET", f"/admin/keys/{key_name}").json()["on_short_budget"] == "reject"


def test_answers_carry_the_tightest_limit(capgate: Capgate, key_name: str) -> None:
    limits = [
        {"metric": "requests", "window": "day", "max": 100},
        {"metric": "cost_usd", "window": "month", "max": "2"},
        {"metric": "output_tokens", "window": "hour", "max": 1000},
    ]
    key = capgate.create_key(key_name, limits)
    first = post(capgate, key, ask(100, 300))  # truncated at 100 output tokens
    assert (
        first.headers["x-capgate-limit"] == f"key={key_name} requests/day"
    )  # all untouched: first
    assert first.headers["x-capgate-remaining"] == "100"
    second = post(capgate, key, ask(100, 10))
    # 100 of 1000 output tokens used (10%) is now the smallest share left.
    assert second.headers["x-capgate-limit"] == f"key={key_name} output_tokens/hour"
    assert second.headers["x-capgate-remaining"] == "900"
    assert second.headers["x-capgate-reset"].endswith(":00:00Z")


def test_exact_count_near_the_limit_admits_what_fits(capgate: Capgate, key_name: str) -> None:
    """A 200 KB prompt: its byte bound (~200K tokens, ~$1.2 at the dearest input rate) does
    not fit a $0.50 budget, but its real size (~50K tokens by the provider's count) does.
    capgate asks the free count endpoint before refusing, and records one entry."""
    key = capgate.create_key(
        key_name, [{"metric": "cost_usd", "window": "day", "max": "0.50"}], on_short_budget="reject"
    )
    prompt = "word " * 40_000  # 200,000 bytes
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": prompt}],
    }
    response = post(capgate, key, body)
    assert response.status_code == 200, response.text
    (entry,) = capgate.ledger(key=key_name)
    assert entry["outcome"] == "ok"
    # A prompt that really is too big is still refused, with one refusal recorded.
    big = {**body, "messages": [{"role": "user", "content": "word " * 400_000}]}
    refused = post(capgate, key, big)
    assert refused.status_code == 402
    assert [e["outcome"] for e in capgate.ledger(key=key_name)] == ["refused", "ok"]
