"""The race: hundreds of concurrent requests against budgets that pay for a few.

A check-then-record gateway admits most of them and overspends. capgate reserves the
worst case atomically before forwarding, so the settled spend never passes the budget and
every admitted request is exactly one ledger entry — also with two server processes on
one SQLite file.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

CONCURRENCY = 200


def _race_body(i: int, stream: bool, over_every: int | None = None) -> dict[str, Any]:
    text = f"request {i} mock:words=300 mock:delay_ms=30"
    if over_every is not None and i % over_every == 0:  # reports far more than was held
        text += " mock:input_tokens=200000"
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 400,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


async def _fire(
    urls: list[str], key: str, n: int, stream_every: int = 2, over_every: int | None = None
) -> list[tuple[int, str]]:
    """n requests at once, spread over `urls`; returns (status, request id) for each."""
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int) -> tuple[int, str]:
            body = _race_body(i, i % stream_every == 0, over_every)
            url = urls[i % len(urls)] + "/v1/messages"
            headers = {"x-api-key": key, "content-type": "application/json"}
            async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                await response.read()
                return response.status, response.headers.get("x-capgate-request-id", "")

        return await asyncio.gather(*(one(i) for i in range(n)))


def _check_books(
    capgate: Capgate,
    key_name: str,
    results: list[tuple[int, str]],
    budget: Decimal | None,
    others: tuple[Capgate, ...] = (),
) -> dict[str, Any]:
    for other in others:  # a read through a process waits for its queued settlements
        other.key_usage(key_name)
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 402}, statuses
    entries = capgate.ledger(key=key_name)
    outcomes = Counter(e["outcome"] for e in entries)
    # Exactly one ledger entry per request: admitted as "ok", refused as "refused".
    assert outcomes["ok"] == statuses[200]
    assert outcomes["refused"] == statuses[402]
    assert len(entries) == len(results)
    ids = [e["request_id"] for e in entries]
    assert len(set(ids)) == len(ids)
    assert {rid for _, rid in results} == set(ids)
    usage = {u["metric"]: u for u in capgate.key_usage(key_name)}
    spent = sum(Decimal(e["cost_usd"]) for e in entries)
    if budget is not None:
        cost = usage["cost_usd"]
        assert Decimal(cost["used"]) == spent  # the counter and the ledger agree exactly
        assert spent <= budget
        assert Decimal(cost["reserved"]) == 0
    return {"statuses": statuses, "spent": spent, "usage": usage}


def test_request_budget_admits_exactly_its_size(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 10}])
    results = asyncio.run(_fire([capgate.url], key, CONCURRENCY))
    books = _check_books(capgate, key_name, results, None)
    assert books["statuses"][200] == 10
    assert books["usage"]["requests"]["used"] == 10
    assert books["usage"]["requests"]["reserved"] == 0


def test_dollar_budget_never_overspent(capgate: Capgate, key_name: str) -> None:
    # Each request may cost up to ~$0.013 (400 output tokens at $15/M plus its input bound
    # at the dearest input rate) and really costs ~$0.0045: the budget pays for 3 worst
    # cases at once, while 200 arrive together.
    budget = Decimal("0.04")
    key = capgate.create_key(
        key_name, [{"metric": "cost_usd", "window": "day", "max": str(budget)}]
    )
    results = asyncio.run(_fire([capgate.url], key, CONCURRENCY))
    books = _check_books(capgate, key_name, results, budget)
    admitted = books["statuses"][200]
    assert 3 <= admitted < CONCURRENCY


def test_over_usage_in_the_race(capgate: Capgate, key_name: str) -> None:
    """Every fourth request reports 200,000 input tokens (~$0.60) against a worst case of
    ~$0.013 held: the ledger and the counter record the truth, above the budget, flagged;
    each admission still fitted its worst case into what was left, so the spend capped at
    each request's worst case stays within the budget; and once the truth is in, every
    later request is refused."""
    budget = Decimal("0.04")
    key = capgate.create_key(
        key_name, [{"metric": "cost_usd", "window": "day", "max": str(budget)}]
    )
    results = asyncio.run(_fire([capgate.url], key, CONCURRENCY, over_every=4))
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 402}, statuses
    entries = capgate.ledger(key=key_name)
    assert len(entries) == CONCURRENCY  # one entry per request, whatever it reported
    ok = {e["request_id"]: e for e in entries if e["outcome"] == "ok"}
    assert len(ok) == statuses[200] >= 3
    spent = sum(Decimal(e["cost_usd"]) for e in entries)
    usage = {u["metric"]: u for u in capgate.key_usage(key_name)}["cost_usd"]
    assert Decimal(usage["used"]) == spent and Decimal(usage["reserved"]) == 0
    # What each request could have cost (its worst case, the byte bound at Sonnet 4.6's
    # dearest input rate plus 400 output tokens), and which of them went over it.
    worst = {}
    for i, (_, rid) in enumerate(results):
        body = _race_body(i, i % 2 == 0, 4)
        bound = len(orjson.dumps(body)) + 1000 + 8
        worst[rid] = Decimal(-(-(bound * 6_000_000 + 400 * 15_000_000) // 1000)) / 10**9
    over = [e for e in ok.values() if e["flags"] == ["over_reservation"]]
    assert over and all(Decimal(e["cost_usd"]) > worst[e["request_id"]] for e in over)
    assert all(e["flags"] == [] for e in ok.values() if e not in over)
    assert sum(min(Decimal(e["cost_usd"]), worst[rid]) for rid, e in ok.items()) <= budget
    assert spent > budget  # the truth, recorded
    late = httpx.post(
        capgate.url + "/v1/messages",
        json=_race_body(1, False),
        headers={"x-api-key": key},
    )
    assert late.status_code == 402, late.text


def test_two_processes_share_one_budget(upstream: Upstream, tmp_path: Path) -> None:
    config = gateway_config(upstream)
    first = start_capgate(tmp_path, config)
    second = start_capgate(tmp_path, config, db=first.db)
    try:
        # Requests: the limit binds exactly, whichever process admits them.
        key = first.create_key(
            "shared-requests", [{"metric": "requests", "window": "day", "max": 40}]
        )
        for server in (first, second):  # both processes learn the new key (costs nothing)
            assert (
                httpx.get(server.url + "/v1/models", headers={"x-api-key": key}).status_code == 200
            )
        results = asyncio.run(_fire([first.url, second.url], key, CONCURRENCY))
        books = _check_books(first, "shared-requests", results, None, (second,))
        assert books["statuses"][200] == 40
        # Both processes decided (admitted or refused) half of the requests each.
        assert len({rid[:16] for _, rid in results}) == 2
        # Dollars: never overspent across the two processes.
        budget = Decimal("0.04")
        key = first.create_key(
            "shared-dollars", [{"metric": "cost_usd", "window": "day", "max": str(budget)}]
        )
        results = asyncio.run(_fire([first.url, second.url], key, CONCURRENCY))
        books = _check_books(first, "shared-dollars", results, budget, (second,))
        assert books["statuses"][200] >= 3
        # The other process's view of the books is the same.
        assert second.key_usage("shared-dollars") == list(books["usage"].values())
        # One counter, two doors: what one process admits, the other counts.
        key = second.create_key("shared-two", [{"metric": "requests", "window": "day", "max": 2}])
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
        }
        statuses = [
            httpx.post(s.url + "/v1/messages", json=body, headers={"x-api-key": key}).status_code
            for s in (first, second, first, second)
        ]
        assert statuses == [200, 200, 402, 402]
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize("window", ["minute", "total"])
def test_token_budget_under_concurrency(capgate: Capgate, key_name: str, window: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "output_tokens", "window": window, "max": 2000}])
    results = asyncio.run(_fire([capgate.url], key, 60))
    statuses = Counter(s for s, _ in results)
    usage = {u["metric"]: u for u in capgate.key_usage(key_name)}["output_tokens"]
    assert usage["used"] <= 2000 and usage["reserved"] == 0
    assert usage["used"] == 300 * statuses[200]  # each answer is exactly 300 tokens
    assert statuses[402 if window == "total" else 429] == 60 - statuses[200]


def test_concurrent_limit_holds_under_a_burst(capgate: Capgate, key_name: str) -> None:
    """30 slow requests at once against `concurrent=3/total`: exactly 3 run, the rest are
    refused at once with 429 + retry-after, and nothing stays held afterwards."""
    key = capgate.create_key(key_name, [{"metric": "concurrent", "window": "total", "max": 3}])

    async def burst() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(i: int) -> tuple[int, str | None]:
                body = {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": f"{i} mock:delay_ms=1500"}],
                }
                async with session.post(
                    capgate.url + "/v1/messages", json=body, headers={"x-api-key": key}
                ) as r:
                    await r.read()
                    return r.status, r.headers.get("retry-after")

            return await asyncio.gather(*(one(i) for i in range(30)))

    results = asyncio.run(burst())
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 3, 429: 27}
    assert all(retry == "1" for status, retry in results if status == 429)
    held = {u["metric"]: u for u in capgate.key_usage(key_name)}["concurrent"]
    assert held["reserved"] == 0 and held["used"] == 0
    # Slots free again: the next request runs.
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "again"}],
    }
    assert (
        httpx.post(capgate.url + "/v1/messages", json=body, headers={"x-api-key": key}).status_code
        == 200
    )
