"""What the response cache saved, in the usage reads (issue #17 part 2): a real server and
the mock upstream; `/admin/usage` (by key, model, day) and `/admin/summary` carry
`cache_hits` and `saved_usd`, equal to the ledger's hits and the sum of their `saved_usd`,
and zero without a cache; `capgate usage` shows them; the dashboard's overview shows what
caching saved this month (headless Chromium). Folded days keep them: tests/test_store_cache.py."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_cli import run_cli
from test_dashboard_browser import Page, browser, console, go, log_in, page

__all__ = ["browser", "console", "page"]


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    started = start_capgate(tmp_path_factory.mktemp("saved"), gateway_config(upstream))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def traffic(server: Capgate) -> dict[str, str]:
    """Two keys: `cached` asks three questions twice each (3 misses, 3 hits) and one with
    another model; `plain` (no cache) asks the same twice. The key names."""
    cached = server.create_key("saved-cached", cache={"ttl": "1h"})
    plain = server.create_key("saved-plain")
    stamp = time.monotonic_ns()
    for key in (cached, plain):
        for i in range(3):
            for _ in range(2):
                ask(server, key, f"question {i} {stamp} mock:words={5 + 4 * i}")
    ask(server, cached, f"other {stamp}", model="claude-haiku-4-5")
    return {"cached": "saved-cached", "plain": "saved-plain"}


def ask(server: Capgate, key: str, text: str, model: str = "claude-sonnet-4-6") -> None:
    answer = httpx.post(
        server.url + "/v1/messages",
        json={"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}]},
        headers={"x-api-key": key}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


def ledger_saved(server: Capgate, key: str) -> tuple[int, Decimal]:
    entries = server.ledger(key=key)
    hits = [e for e in entries if e["cache"] == "hit"]
    return len(hits), sum((Decimal(e["saved_usd"]) for e in hits), Decimal(0))


def test_usage_rows_carry_the_hits_and_what_they_saved(
    server: Capgate, traffic: dict[str, str]
) -> None:
    hits, saved = ledger_saved(server, traffic["cached"])
    assert hits == 3 and saved > 0
    assert ledger_saved(server, traffic["plain"]) == (0, Decimal(0))
    by_key = {
        row["key"]: row
        for row in server.admin("GET", "/admin/usage", params={"group_by": "key"}).json()["items"]
    }
    mine = by_key[traffic["cached"]]
    assert mine["cache_hits"] == 3 and Decimal(mine["saved_usd"]) == saved
    assert (by_key[traffic["plain"]]["cache_hits"], by_key[traffic["plain"]]["saved_usd"]) == (
        0, "0",
    )  # fmt: skip
    for group in ("model", "day", "team"):
        rows = server.admin("GET", "/admin/usage", params={"group_by": group}).json()["items"]
        assert sum(r["cache_hits"] for r in rows) == 3, group
        assert sum(Decimal(r["saved_usd"]) for r in rows) == saved, group
    by_model = {
        r["model"]: r
        for r in server.admin("GET", "/admin/usage", params={"group_by": "model"}).json()["items"]
    }
    assert by_model["claude-haiku-4-5"]["cache_hits"] == 0
    summary = server.admin("GET", "/admin/summary", params={"period": "month"}).json()
    assert summary["cache_hits"] == 3 and Decimal(summary["saved_usd"]) == saved
    only_plain = server.admin("GET", "/admin/summary", params={"key": traffic["plain"]}).json()
    assert (only_plain["cache_hits"], only_plain["saved_usd"]) == (0, "0")


def test_capgate_usage_shows_them(server: Capgate, traffic: dict[str, str]) -> None:
    _, saved = ledger_saved(server, traffic["cached"])
    listed = run_cli(server, "usage", "--by", "key", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    mine = next(i for i in json.loads(listed.stdout) if i["key"] == traffic["cached"])
    assert mine["cache_hits"] == 3 and Decimal(mine["saved_usd"]) == saved
    rows = list(csv.DictReader(io.StringIO(run_cli(server, "usage", "--format", "csv").stdout)))
    row = next(r for r in rows if r["key"] == traffic["cached"])
    assert (row["cache_hits"], Decimal(row["saved_usd"])) == ("3", saved)
    table = run_cli(server, "usage", "--by", "key").stdout
    assert "hits" in table and "saved" in table
    line = next(line for line in table.splitlines() if traffic["cached"] in line)
    assert f"${saved}" in line.replace(",", ""), line


@pytest.fixture
def dash(server: Capgate) -> Capgate:
    return server  # the browser fixtures' server


def test_the_overview_shows_what_caching_saved_this_month(
    page: Page, server: Capgate, traffic: dict[str, str]
) -> None:
    month = server.admin("GET", "/admin/summary", params={"period": "month"}).json()
    log_in(page, server)
    go(page, server, "overview")
    shown = page.locator('[data-stat="saved"]')
    assert "Saved by caching" in shown.inner_text()
    value = shown.locator(".stat-value").inner_text()
    assert Decimal(value.removeprefix("$").replace(",", "")) == Decimal(month["saved_usd"]) > 0
    assert f"{month['cache_hits']} cache hits this month" in shown.inner_text()
