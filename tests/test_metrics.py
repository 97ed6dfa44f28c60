"""GET /metrics: parsed with Prometheus's own parser and compared with the ledger, after
real SDK traffic (refusals included) through two server processes on one database."""

from __future__ import annotations

import socket
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Capgate, Upstream, gateway_config, need, start_capgate

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(server: Capgate, **headers: str) -> Samples:
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for got, value in samples.get(name, [])
        if all(got.get(k) == v for k, v in labels.items())
    )


def limit_series(samples: Samples, name: str, scope: str) -> dict[tuple[str, str], float]:
    return {
        (labels["metric"], labels["window"]): value
        for labels, value in samples.get(name, [])
        if labels["scope"] == scope
    }


def _ask(client: anthropic.Anthropic, text: str = "hello mock:words=20") -> int:
    try:
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=200, messages=[{"role": "user", "content": text}]
        )
    except anthropic.APIStatusError as exc:
        return exc.status_code
    return 200


def _chat(client: openai.OpenAI) -> int:
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_metrics_agree_with_the_ledger_on_two_processes(upstream: Upstream, tmp_path: Path) -> None:
    a = start_capgate(tmp_path, gateway_config(upstream))
    b = start_capgate(tmp_path, gateway_config(upstream), db=a.db)
    try:
        budget = a.create_key(
            "budgeted",
            [{"metric": "cost_usd", "window": "day", "max": "0.008"},
             {"metric": "requests", "window": "minute", "max": 1000}],
        )  # fmt: skip
        rated = a.create_key("rated", [{"metric": "requests", "window": "minute", "max": 2}])
        free = a.create_key("unlimited")
        haiku_only = a.create_key("haiku-only", models=["claude-haiku-*"])
        paused = a.create_key("paused")
        assert a.admin("POST", "/admin/keys/paused/pause").status_code == 200

        statuses: Counter[int] = Counter()
        for i in range(6):  # spends the budget, then refused (402)
            server = (a, b)[i % 2]
            with anthropic.Anthropic(base_url=server.url, api_key=budget, max_retries=0) as c:
                statuses[_ask(c, "spend mock:words=400")] += 1
        for server in (a, b, a):  # the third is over 2 a minute (429)
            with openai.OpenAI(base_url=server.url + "/v1", api_key=rated, max_retries=0) as o:
                statuses[_chat(o)] += 1
        for server in (a, b):
            with anthropic.Anthropic(base_url=server.url, api_key=free, max_retries=0) as c:
                statuses[_ask(c)] += 1
            with anthropic.Anthropic(base_url=server.url, api_key=haiku_only, max_retries=0) as c:
                statuses[_ask(c)] += 1  # model not allowed (403)
        with anthropic.Anthropic(base_url=a.url, api_key=paused, max_retries=0) as c:
            statuses[_ask(c)] += 1  # paused (403)
        assert statuses[402] >= 1 and statuses[429] == 1 and statuses[403] == 3, statuses

        entries = a.ledger()
        assert len(entries) == sum(statuses.values())
        got_a, got_b = scrape(a), scrape(b)

        # Scope gauges: read from the store, the same on both processes, equal to the books.
        for got in (got_a, got_b):
            for name in ("budgeted", "rated"):
                usage = {u["metric"]: u for u in a.key_usage(name)}
                used = limit_series(got, "capgate_limit_used", name)
                maximum = limit_series(got, "capgate_limit_max", name)
                remaining = limit_series(got, "capgate_limit_remaining", name)
                for metric, row in usage.items():
                    window = row["window"]
                    assert used[(metric, window)] == float(Decimal(str(row["used"])))
                    assert maximum[(metric, window)] == float(Decimal(str(row["max"])))
                    assert remaining[(metric, window)] == float(Decimal(str(row["remaining"])))
            spent = sum(Decimal(e["cost_usd"]) for e in entries if e["key"] == "budgeted")
            cost = limit_series(got, "capgate_limit_used", "budgeted")[("cost_usd", "day")]
            assert cost == float(spent) and spent > 0
            # No limit, no series: never +Inf.
            assert not limit_series(got, "capgate_limit_remaining", "unlimited")
            assert all(v != float("inf") for _, v in got["capgate_limit_remaining"])
            assert total(got, "capgate_reservations_held") == 0
        assert {k: v for k, v in got_a.items() if k.startswith(("capgate_limit", "capgate_ledger"))} == {
            k: v for k, v in got_b.items() if k.startswith(("capgate_limit", "capgate_ledger"))
        }  # fmt: skip

        # Ledger totals (store-read): requests by outcome, cost, refusals by reason.
        outcomes = Counter(e["outcome"] for e in entries)
        for outcome, count in outcomes.items():
            assert total(got_a, "capgate_ledger_requests_total", outcome=outcome) == count
        ledger_cost = sum(Decimal(e["cost_usd"]) for e in entries)
        assert total(got_a, "capgate_ledger_cost_dollars_total") == float(ledger_cost)
        assert total(got_a, "capgate_ledger_refusals_total", reason="budget") == statuses[402]
        assert total(got_a, "capgate_ledger_refusals_total", reason="rate") == 1
        assert total(got_a, "capgate_ledger_refusals_total", reason="model") == 2
        assert total(got_a, "capgate_ledger_refusals_total", reason="access") == 1

        # Per-process counters: each counts its own; together they are the ledger.
        both = (got_a, got_b)
        for outcome, count in outcomes.items():
            assert sum(total(g, "capgate_requests_total", outcome=outcome) for g in both) == count
        assert total(got_a, "capgate_requests_total") > 0 < total(got_b, "capgate_requests_total")
        for reason, count in (("budget", statuses[402]), ("rate", 1), ("model", 2), ("access", 1)):
            assert sum(total(g, "capgate_refusals_total", reason=reason) for g in both) == count
        cost_sum = sum(total(g, "capgate_cost_dollars_total") for g in both)
        assert abs(Decimal(str(cost_sum)) - ledger_cost) < Decimal("1e-9")
        out_tokens = sum(e["output_tokens"] or 0 for e in entries)
        assert sum(total(g, "capgate_tokens_total", kind="output") for g in both) == out_tokens
        ok = outcomes["ok"]
        assert sum(total(g, "capgate_request_duration_seconds_count") for g in both) == ok
        assert sum(total(g, "capgate_time_to_first_token_seconds_count") for g in both) == ok
        assert total(got_a, "capgate_breaker_open", provider="anthropic") == 0
        assert total(got_a, "capgate_upstream_errors_total", provider="anthropic") == 0
    finally:
        a.close()
        b.close()


def test_unpriced_model_refusal_counts_as_price(upstream: Upstream, tmp_path: Path) -> None:
    server = start_capgate(tmp_path, gateway_config(upstream))
    try:
        key = server.create_key("k")
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with client as o, pytest.raises(openai.BadRequestError):
            o.chat.completions.create(
                model="gpt-unpriced-xyz", messages=[{"role": "user", "content": "hi"}]
            )
        got = scrape(server)
        assert total(got, "capgate_refusals_total", reason="price") == 1
        assert total(got, "capgate_requests_total", outcome="refused", status="400") == 1
    finally:
        server.close()


def test_flagged_entries_are_counted_from_the_ledger(upstream: Upstream, tmp_path: Path) -> None:
    """An answer that reports more usage than was held is charged the truth and flagged;
    the ledger-derived counter shows it (every flag has a series, zero included)."""
    server = start_capgate(tmp_path, gateway_config(upstream))
    try:
        key = server.create_key("over")
        with anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0) as client:
            assert _ask(client, "mock:input_tokens=5000000") == 200
            assert _ask(client) == 200
        got = scrape(server)  # the first scrape reads the ledger (later ones cache it 5 s)
        assert total(got, "capgate_ledger_flagged_total", flag="over_reservation") == 1
        flags = {labels["flag"] for labels, _ in got["capgate_ledger_flagged_total"]}
        assert flags == {
            "over_reservation", "usage_unreadable", "late_settlement", "fail_open", "hook_report",
            "otel", "offline", "unpriced_model",
        }  # fmt: skip
        assert total(got, "capgate_ledger_flagged_total", flag="usage_unreadable") == 0
    finally:
        server.close()


def test_per_key_series_are_bounded(upstream: Upstream, tmp_path: Path) -> None:
    config: dict[str, Any] = gateway_config(upstream, server={"metrics_key_series": 1})
    server = start_capgate(tmp_path, config)
    try:
        limits = [{"metric": "cost_usd", "window": "day", "max": "5"}]
        keys = {name: server.create_key(name, limits) for name in ("big", "small", "idle")}
        for name, n in (("big", 3), ("small", 1)):
            with anthropic.Anthropic(base_url=server.url, api_key=keys[name], max_retries=0) as c:
                for _ in range(n):
                    assert _ask(c, "x mock:words=300") == 200
        got = scrape(server)
        assert not any(name.endswith("_created") for name in got)
        names = {labels["scope"] for labels, _ in got["capgate_limit_used"]}
        assert names == {"big", "_other"}
        used = {u["metric"]: Decimal(str(u["used"])) for u in server.key_usage("small")}
        other = limit_series(got, "capgate_limit_used", "_other")[("cost_usd", "day")]
        assert other == float(used["cost_usd"]) > 0
        assert limit_series(got, "capgate_limit_max", "_other")[("cost_usd", "day")] == 10
    finally:
        server.close()


def test_token_protects_metrics_and_admin_key_is_not_it(upstream: Upstream, tmp_path: Path) -> None:
    server = start_capgate(
        tmp_path, gateway_config(upstream), env={"CAPGATE_METRICS_TOKEN": "scrape-secret"}
    )
    try:
        url = server.url + "/metrics"
        assert httpx.get(url).status_code == 401
        wrong = httpx.get(url, headers={"authorization": f"Bearer {server.admin_key}"})
        assert wrong.status_code == 401
        assert "scrape-secret" not in wrong.text
        assert scrape(server, authorization="Bearer scrape-secret")["capgate_reservations_held"]
    finally:
        server.close()


def test_metrics_off_has_no_route(upstream: Upstream, tmp_path: Path) -> None:
    server = start_capgate(
        tmp_path, gateway_config(upstream), env={"CAPGATE_METRICS_ENABLED": "false"}
    )
    try:
        assert httpx.get(server.url + "/metrics").status_code == 404
    finally:
        server.close()


def _lan_address() -> str | None:
    """This machine's address on a non-loopback interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("token", [None, "scrape-secret"])
def test_without_token_only_loopback_may_scrape(
    upstream: Upstream, tmp_path: Path, token: str | None
) -> None:
    lan = _lan_address()
    need(lan is not None, "a non-loopback network interface")
    env = {"CAPGATE_METRICS_TOKEN": token} if token else {}
    server = start_capgate(tmp_path, gateway_config(upstream), args=("--host", "0.0.0.0"), env=env)
    try:
        port = server.url.rsplit(":", 1)[1]
        from_lan = httpx.get(
            f"http://{lan}:{port}/metrics",
            headers={"authorization": f"Bearer {token}"} if token else {},
        )
        assert from_lan.status_code == (200 if token else 403), from_lan.text
        if token is None:
            assert "loopback" in from_lan.json()["error"]["message"]
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        server.close()


def test_upstream_failures_open_the_breaker_in_metrics(upstream: Upstream, tmp_path: Path) -> None:
    config = gateway_config(upstream)
    config["providers"][0].update(cooldown_after=2, cooldown_s=60)
    config["server"] = {"retries": 0}
    server = start_capgate(tmp_path, config)
    try:
        key = server.create_key("k")
        with anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0) as c:
            assert _ask(c) == 200
            assert [_ask(c, "fail mock:status=503") for _ in range(2)] == [503, 503]
        got = scrape(server)
        assert total(got, "capgate_upstream_errors_total", provider="anthropic") == 2
        assert total(got, "capgate_breaker_open", provider="anthropic") == 1
        assert total(got, "capgate_breaker_open", provider="openai") == 0
        name = "capgate_upstream_attempt_duration_seconds_count"
        assert total(got, name, provider="anthropic", result="ok") == 1
        assert total(got, name, provider="anthropic", result="error") == 2
        inf = total(got, "capgate_upstream_attempt_duration_seconds_bucket", le="+Inf", result="ok")
        assert inf == 1
        assert total(got, "capgate_requests_total", outcome="error", status="503") == 2
    finally:
        server.close()
