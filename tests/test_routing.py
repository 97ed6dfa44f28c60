"""Routing through failures: weighted targets, retries with backoff, fallbacks in order,
the circuit breaker, timeouts, streaming failover — and budgets exact through all of it.

Two mock upstreams stand for two deployments; faults are injected into one of them over
its `/mock/faults` control endpoint, so the same prompt fails on the primary and is
answered by the fallback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx
import pytest

from conftest import Capgate, _spawn, _stop, start_capgate

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"


class Mock:
    def __init__(self, url: str) -> None:
        self.url = url

    def fault(self, **fields: Any) -> None:
        response = httpx.post(self.url + "/mock/faults", json=fields, timeout=10)
        assert response.status_code == 200, response.text

    def served(self) -> int:
        return int(httpx.get(self.url + "/mock/faults", timeout=10).json()["served"])


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[Mock, Mock]]:
    procs = [
        _spawn([sys.executable, "-m", "capgate.mock", "--port", "0"], r"listening on (\S+)")
        for _ in range(2)
    ]
    try:
        yield Mock(f"http://{procs[0][1].group(1)}"), Mock(f"http://{procs[1][1].group(1)}")
    finally:
        for proc, _ in procs:
            _stop(proc)


@pytest.fixture
def pair(mocks: tuple[Mock, Mock]) -> Iterator[tuple[Mock, Mock]]:
    for mock in mocks:
        mock.fault()  # no faults
    yield mocks
    for mock in mocks:
        mock.fault()


def _config(primary: Mock, backup: Mock, **route: Any) -> dict[str, Any]:
    return {
        "server": {"retry_backoff_s": 0.01},
        "providers": [
            {"name": "primary", "type": "anthropic", "base_url": primary.url, "api_key": "a",
             "first_byte_timeout_s": 0.5, "cooldown_after": 3, "cooldown_s": 60},
            {"name": "backup", "type": "anthropic", "base_url": backup.url, "api_key": "b"},
            {"name": "dead", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "c"},
        ],
        "models": [
            {"match": "smart", "targets": [{"provider": "primary", "model": HAIKU}],
             "fallbacks": [{"provider": "backup", "model": SONNET}], "retries": 1, **route},
            {"match": "split", "targets": [{"provider": "primary", "model": HAIKU, "weight": 3},
                                           {"provider": "backup", "model": HAIKU, "weight": 1}]},
            {"match": "from-dead", "targets": [{"provider": "dead", "model": HAIKU}],
             "fallbacks": [{"provider": "backup", "model": HAIKU}]},
            {"match": "alone", "targets": [{"provider": "primary", "model": HAIKU}], "retries": 0},
        ],
    }  # fmt: skip


@pytest.fixture
def gw(tmp_path: Path, pair: tuple[Mock, Mock]) -> Iterator[Capgate]:
    server = start_capgate(tmp_path, _config(*pair))
    yield server
    server.close()


def _ask(
    gw: Capgate, key: str, model: str = "smart", text: str = "hello", **extra: Any
) -> httpx.Response:
    body = {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        gw.url + "/v1/messages", json={**body, **extra}, headers={"x-api-key": key}, timeout=30
    )


def _entry(gw: Capgate, key_name: str) -> dict[str, Any]:
    entries = gw.ledger(key=key_name)
    assert len(entries) == 1, entries
    return entries[0]


def _books_balance(gw: Capgate, key_name: str) -> Decimal:
    """The key's dollar counter equals the ledger's sum and nothing stays reserved."""
    (row,) = [r for r in gw.key_usage(key_name) if r["metric"] == "cost_usd"]
    spent = sum(Decimal(e["cost_usd"]) for e in gw.ledger(key=key_name))
    assert Decimal(row["used"]) == spent
    assert Decimal(row["reserved"]) == 0
    return spent


def test_server_errors_fall_over_to_the_fallback_at_its_price(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(status=500)
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    before = primary.served()
    with anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as client:
        message = client.messages.create(
            model="smart", max_tokens=200, messages=[{"role": "user", "content": "hi mock:words=7"}]
        )
    assert message.usage.output_tokens == 7
    assert primary.served() - before == 2  # the first try and one retry
    entry = _entry(gw, key_name)
    assert (entry["provider"], entry["upstream_model"]) == ("backup", SONNET)
    assert entry["attempts"] == 3 and entry["outcome"] == "ok"
    # Sonnet's price ($3 in, $15 out per million), not Haiku's.
    expected = (Decimal(3) * entry["input_tokens"] + Decimal(15) * 7) / 1_000_000
    assert Decimal(entry["cost_usd"]) == expected
    _books_balance(gw, key_name)


def test_client_errors_are_not_retried(gw: Capgate, pair: tuple[Mock, Mock], key_name: str) -> None:
    primary, backup = pair
    primary.fault(status=400)
    key = gw.create_key(key_name)
    before_p, before_b = primary.served(), backup.served()
    response = _ask(gw, key)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Injected fault 400."
    assert (primary.served() - before_p, backup.served() - before_b) == (1, 0)
    assert _entry(gw, key_name)["attempts"] == 1


def test_rate_limit_retried_after_its_retry_after(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(status=429, retry_after="0", count=1)  # fails once, then answers
    key = gw.create_key(key_name)
    response = _ask(gw, key)
    assert response.status_code == 200, response.text
    entry = _entry(gw, key_name)
    assert (entry["provider"], entry["attempts"]) == ("primary", 2)


def test_a_long_retry_after_moves_on_at_once(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(status=429, retry_after="120")
    key = gw.create_key(key_name)
    before = primary.served()
    assert _ask(gw, key).status_code == 200
    assert primary.served() - before == 1  # no waiting 120 s for a retry
    entry = _entry(gw, key_name)
    assert (entry["provider"], entry["attempts"]) == ("backup", 2)


def test_connection_errors_fall_over_and_cost_nothing_extra(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    response = _ask(gw, key, "from-dead", "hi mock:words=3")
    assert response.status_code == 200, response.text
    entry = _entry(gw, key_name)
    assert entry["provider"] == "backup" and entry["attempts"] == 3  # dead twice, then backup
    expected = (Decimal(1) * entry["input_tokens"] + Decimal(5) * 3) / 1_000_000  # Haiku
    assert Decimal(entry["cost_usd"]) == expected
    _books_balance(gw, key_name)


def test_everything_failing_ends_with_the_last_error(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    for mock in pair:
        mock.fault(status=503)
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    response = _ask(gw, key)
    assert response.status_code == 503
    assert response.json()["type"] == "error"
    entry = _entry(gw, key_name)
    assert entry["outcome"] == "error" and entry["attempts"] == 4  # 2 per target
    assert Decimal(entry["cost_usd"]) == 0  # error answers are not billed
    _books_balance(gw, key_name)


def test_cooldown_skips_a_failing_provider_and_shows_in_admin(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(status=500)
    key = gw.create_key(key_name)
    assert _ask(gw, key).status_code == 200  # 2 failures on primary, backup answers
    assert _ask(gw, key).status_code == 200  # the 3rd failure in a row cools it down
    state = gw.admin("GET", "/admin/routing").json()
    health = {p["provider"]: p for p in state["providers"]}
    assert health["primary"]["state"] == "cooling"
    assert 0 < health["primary"]["cooling_seconds_left"] <= 60
    assert "Injected fault 500" in health["primary"]["last_error"]
    assert health["backup"]["state"] == "ok"
    before = primary.served()
    assert _ask(gw, key).status_code == 200
    assert primary.served() == before  # skipped while cooling
    entries = gw.ledger(key=key_name)
    assert entries[0]["attempts"] == 1 and entries[0]["provider"] == "backup"
    # Unauthenticated callers see nothing.
    assert httpx.get(gw.url + "/admin/routing").status_code == 401


def test_first_byte_timeout_falls_over_and_keeps_the_books(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(delay_ms=3000)  # the primary's first-byte timeout is 0.5 s
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    response = _ask(gw, key, text="hi mock:words=4", stream=True)
    assert response.status_code == 200
    assert "message_stop" in response.text
    entry = _entry(gw, key_name)
    assert entry["provider"] == "backup" and entry["attempts"] == 3
    # The two timed-out attempts may have been billed upstream: their worst case (Haiku,
    # 200 output tokens each) is charged with what the backup's Sonnet really used.
    assert entry["output_tokens"] == 4 + 2 * 200
    assert Decimal(entry["cost_usd"]) > (Decimal(15) * 4 + Decimal(5) * 400) / 1_000_000
    _books_balance(gw, key_name)


def test_stream_falls_over_before_its_first_byte(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    primary, _ = pair
    primary.fault(empty_stream=True)
    key = gw.create_key(key_name)
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as client,
        client.messages.stream(
            model="smart", max_tokens=100, messages=[{"role": "user", "content": "mock:words=5"}]
        ) as stream,
    ):
        final = stream.get_final_message()
    assert final.usage.output_tokens == 5
    assert _entry(gw, key_name)["provider"] == "backup"


def test_stream_broken_after_its_first_byte_is_passed_on(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    _, backup = pair
    key = gw.create_key(key_name)
    before = backup.served()
    response = _ask(gw, key, text="mock:words=50 mock:cut_stream", stream=True)
    assert "message_start" in response.text and "message_stop" not in response.text
    assert backup.served() == before  # no failover once bytes reached the client
    entry = _entry(gw, key_name)
    assert entry["outcome"] == "error" and entry["provider"] == "primary"
    assert 0 < entry["output_tokens"] <= 200  # what was generated, capped at max_tokens


def test_fallback_that_the_budget_cannot_pay_is_not_called(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    """The budget pays Haiku's worst case but not Sonnet's: when the primary fails, the
    fallback is re-reserved at its own price first, refused, and never called."""
    primary, backup = pair
    primary.fault(status=500)
    # Worst cases with the byte bound of the input: Haiku about $0.0032, Sonnet $0.0095.
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.005"}])
    before = backup.served()
    response = _ask(gw, key)
    assert response.status_code == 500
    assert backup.served() == before
    entry = _entry(gw, key_name)
    assert entry["outcome"] == "error" and "refused" in entry["error"]
    assert _books_balance(gw, key_name) == 0


def test_weights_split_traffic(gw: Capgate, pair: tuple[Mock, Mock], key_name: str) -> None:
    primary, backup = pair
    key = gw.create_key(key_name)
    before = primary.served(), backup.served()

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = {
                    "model": "split",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": str(i)}],
                }
                async with session.post(
                    gw.url + "/v1/messages", json=body, headers={"x-api-key": key}
                ) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(200)))

    assert set(asyncio.run(burst())) == {200}
    to_primary = primary.served() - before[0]
    assert to_primary + backup.served() - before[1] == 200
    assert 110 <= to_primary <= 185  # 3:1 is 150 expected; 3 sigma is about 18


def test_a_flaky_primary_never_makes_a_budget_leak(
    gw: Capgate, pair: tuple[Mock, Mock], key_name: str
) -> None:
    """Concurrent requests while the primary times out on every other request: each
    attempt is re-reserved before it is made, so the dollar budget is never passed."""
    primary, _ = pair
    primary.fault(delay_ms=1500)  # every request times out on the primary
    budget = Decimal("0.15")  # a few requests' worst cases at both prices
    key = gw.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": str(budget)}])

    async def burst() -> list[int]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(i: int) -> int:
                body = {"model": "smart", "max_tokens": 200, "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"{i} mock:words=150"}]}  # fmt: skip
                async with session.post(
                    gw.url + "/v1/messages", json=body, headers={"x-api-key": key}
                ) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(40)))

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 402, 504}, statuses
    assert 200 in statuses and len(set(statuses)) > 1  # some served, some the budget stopped
    assert _books_balance(gw, key_name) <= budget
