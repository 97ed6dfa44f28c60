"""The exact response cache end to end (capgate.cache, docs/cache.md): a real server, the
real mock upstream (its `served` count says how many requests reached it), raw HTTP and
the official SDKs. Opt-in per scope; a repeat answered from memory, streams replayed
event for event; never shared across owners (two teams' keys) unless both name one
shared cache; TTL; the size bound; the header; how hits are charged and recorded.

The pure parts (key, LRU and TTL store, setting) are tests/test_cache_unit.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_cli import run_cli
from test_dashboard_browser import Page, browser, console, go, log_in, page
from test_metrics import scrape, total

__all__ = ["browser", "console", "page"]

MAX_MB = 0.05  # ~52 KB: a few dozen small answers, so that the bound is easy to reach
HOUR = {"ttl": "1h"}


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    tmp = tmp_path_factory.mktemp("cache")
    started = start_capgate(tmp, gateway_config(upstream, server={"cache_max_mb": MAX_MB}))
    try:
        yield started
    finally:
        started.close()


def served(upstream: Upstream) -> int:
    answer = httpx.get(upstream.url + "/mock/faults", timeout=10)
    return int(answer.json()["served"])


def messages(
    server: Capgate, key: str, text: str, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 200, **extra}
    body["messages"] = [{"role": "user", "content": text}]
    return httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key, **(headers or {})},
        timeout=30,
    )  # fmt: skip


def streamed(server: Capgate, path: str, key: str, body: dict[str, Any]) -> tuple[str, bytes]:
    auth = {"x-api-key": key} if path == "/v1/messages" else {"authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", server.url + path, json={**body, "stream": True}, headers=auth, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return response.headers["x-capgate-cache"], b"".join(response.iter_bytes())


def entry(server: Capgate, response: httpx.Response) -> dict[str, Any]:
    (found,) = server.ledger(request_id=response.headers["x-capgate-request-id"])
    return found


def unique(name: str) -> str:
    return f"{name} {time.monotonic_ns()} mock:words=12"


def test_a_repeat_is_answered_from_the_cache_free_and_recorded(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    limits = [
        {"metric": "requests", "max": 100, "window": "day"},
        {"metric": "cost", "max": "5", "window": "day"},
    ]
    key = server.create_key(key_name, limits, cache=HOUR)
    text = unique("repeat")
    before = served(upstream)
    first = messages(server, key, text)
    second = messages(server, key, text)
    assert first.status_code == second.status_code == 200
    assert served(upstream) - before == 1  # the second never reached the upstream
    assert first.headers["x-capgate-cache"] == "miss"
    assert second.headers["x-capgate-cache"] == "hit"
    assert second.json() == first.json()
    assert second.headers["x-capgate-request-id"] != first.headers["x-capgate-request-id"]
    miss, hit = entry(server, first), entry(server, second)
    assert miss["cache"] == "miss" and miss["saved_usd"] == "0"
    assert hit["cache"] == "hit" and hit["outcome"] == "ok" and hit["attempts"] == 0
    assert hit["cost_usd"] == "0" and hit["input_tokens"] == hit["output_tokens"] == 0
    assert hit["saved_usd"] == miss["cost_usd"] != "0"
    usage = {u["metric"]: u for u in server.key_usage(key_name)}
    assert usage["requests"]["used"] == 2  # a hit counts as a request...
    assert usage["cost_usd"]["used"] == miss["cost_usd"]  # ...but costs nothing
    # An SDK sees an ordinary answer.
    client = anthropic.Anthropic(api_key=key, base_url=server.url)
    got = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, messages=[{"role": "user", "content": text}]
    )
    assert (
        got.id == first.json()["id"] and got.content[0].text == first.json()["content"][0]["text"]
    )
    assert served(upstream) - before == 1
    # ...and /metrics counts it.
    samples = scrape(server)
    assert total(samples, "capgate_cache_lookups_total", result="hit") >= 2
    assert total(samples, "capgate_cache_saved_dollars_total") > 0


def test_a_streamed_hit_replays_the_same_events(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=HOUR)
    for path, model in (
        ("/v1/messages", "claude-sonnet-4-6"),
        ("/v1/chat/completions", "gpt-4o-mini"),
    ):
        body = {"model": model, "max_tokens": 200}
        body["messages"] = [{"role": "user", "content": unique("stream")}]
        before = served(upstream)
        mark1, first = streamed(server, path, key, body)
        mark2, second = streamed(server, path, key, body)
        assert (mark1, mark2) == ("miss", "hit")
        assert second == first and first.count(b"\n\n") > 3
        assert served(upstream) - before == 1
        # The same body not streamed is another request: only same-mode answers are given.
        whole = httpx.post(
            server.url + path, json=body, timeout=30,
            headers={"x-api-key": key, "authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert whole.headers["x-capgate-cache"] == "miss"
        assert served(upstream) - before == 2


def test_two_teams_keys_never_share_but_a_named_shared_cache_does(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    for team in ("a", "b"):
        answer = server.admin("POST", "/admin/teams", json={"name": f"{key_name}-{team}"})
        assert answer.status_code == 201, answer.text
    team_cache = {"ttl": "1h", "owner": "team"}
    a1 = server.create_key(f"{key_name}-a1", team=f"{key_name}-a", cache=team_cache)
    a2 = server.create_key(f"{key_name}-a2", team=f"{key_name}-a", cache=team_cache)
    b1 = server.create_key(f"{key_name}-b1", team=f"{key_name}-b", cache=team_cache)
    text = unique("teams")
    before = served(upstream)
    assert messages(server, a1, text).headers["x-capgate-cache"] == "miss"
    assert messages(server, b1, text).headers["x-capgate-cache"] == "miss"  # the LiteLLM bug
    assert messages(server, a2, text).headers["x-capgate-cache"] == "hit"  # same team: shared
    assert served(upstream) - before == 2
    # Two keys of their own (owner: key, the default) do not share either...
    k1 = server.create_key(f"{key_name}-k1", cache=HOUR)
    k2 = server.create_key(f"{key_name}-k2", cache=HOUR)
    text = unique("keys")
    assert messages(server, k1, text).headers["x-capgate-cache"] == "miss"
    assert messages(server, k2, text).headers["x-capgate-cache"] == "miss"
    # ...unless both name the same shared cache.
    shared = {"ttl": "1h", "shared": f"{key_name}-docs"}
    s1 = server.create_key(f"{key_name}-s1", team=f"{key_name}-a", cache=shared)
    s2 = server.create_key(f"{key_name}-s2", team=f"{key_name}-b", cache=shared)
    text = unique("shared")
    assert messages(server, s1, text).headers["x-capgate-cache"] == "miss"
    assert messages(server, s2, text).headers["x-capgate-cache"] == "hit"
    assert messages(server, b1, text).headers["x-capgate-cache"] == "miss"  # not named


def test_a_team_setting_applies_to_its_keys_and_off_by_default(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    team = f"{key_name}-t"
    answer = server.admin("POST", "/admin/teams", json={"name": team, "cache": HOUR})
    assert answer.status_code == 201, answer.text
    assert answer.json()["cache"] == {
        "ttl_s": 3600.0,
        "owner": "key",
        "shared": None,
        "charge": "free",
        "semantic": False,
    }
    key = server.create_key(f"{key_name}-k", team=team)
    text = unique("team")
    messages(server, key, text)
    assert messages(server, key, text).headers["x-capgate-cache"] == "hit"
    # A key with no setting anywhere: nothing cached, and no header on its answers.
    plain = server.create_key(f"{key_name}-plain")
    before = served(upstream)
    first = messages(server, plain, text, {"x-capgate-cache": "on"})  # cannot turn it on
    second = messages(server, plain, text)
    assert "x-capgate-cache" not in first.headers and "x-capgate-cache" not in second.headers
    assert served(upstream) - before == 2
    assert entry(server, second)["cache"] is None
    # Turned off on the team: forwarded again.
    answer = server.admin("PATCH", f"/admin/teams/{team}", json={"cache": None})
    assert answer.status_code == 200, answer.text
    assert answer.json()["cache"] is None
    assert "x-capgate-cache" not in messages(server, key, text).headers


def test_ttl_expiry(server: Capgate, upstream: Upstream, key_name: str) -> None:
    key = server.create_key(key_name, cache={"ttl": 1})
    text = unique("ttl")
    messages(server, key, text)
    assert messages(server, key, text).headers["x-capgate-cache"] == "hit"
    time.sleep(1.2)
    assert messages(server, key, text).headers["x-capgate-cache"] == "miss"


def test_the_size_bound_evicts_the_least_recently_used(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=HOUR)
    first, kept = unique("evicted"), unique("kept")
    messages(server, key, first)
    messages(server, key, kept)
    for n in range(60):  # 60 x ~1.3 KB: past the 52 KB bound
        messages(server, key, unique(f"filler {n}").replace("words=12", "words=150"))
        assert messages(server, key, kept).headers["x-capgate-cache"] == "hit"  # used: stays
    assert messages(server, key, first).headers["x-capgate-cache"] == "miss"
    # An answer larger than a quarter of the bound is not kept at all.
    big = unique("big").replace("words=12", "words=4000")
    messages(server, key, big, max_tokens=5000)
    assert messages(server, key, big, max_tokens=5000).headers["x-capgate-cache"] == "miss"


def test_the_header_turns_it_off_or_refreshes(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=HOUR)
    text = unique("header")
    before = served(upstream)
    off = messages(server, key, text, {"x-capgate-cache": "off"})
    assert "x-capgate-cache" not in off.headers and entry(server, off)["cache"] is None
    assert messages(server, key, text).headers["x-capgate-cache"] == "miss"  # off kept nothing
    assert (
        messages(server, key, text, {"x-capgate-cache": "refresh"}).headers["x-capgate-cache"]
        == "miss"
    )
    assert (
        messages(server, key, text, {"x-capgate-cache": "ON"}).headers["x-capgate-cache"] == "hit"
    )
    assert served(upstream) - before == 3
    bad = messages(server, key, text, {"x-capgate-cache": "always"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "x-capgate-cache must be one of on, off, refresh" in bad.json()["error"]["message"]
    assert served(upstream) - before == 3
    assert server.ledger(request_id=bad.headers["x-capgate-request-id"]) == []


def test_hits_count_requests_not_dollars_unless_charged_full(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    requests = [{"metric": "requests", "max": 2, "window": "day"}]
    key = server.create_key(key_name, requests, cache=HOUR)
    text = unique("limit")
    assert messages(server, key, text).status_code == 200
    assert messages(server, key, text).headers["x-capgate-cache"] == "hit"
    refused = messages(server, key, text)
    assert refused.status_code == 402  # the third is refused though it would be a hit
    # charge: full: a hit costs what the answer cost, tokens included.
    cost = [{"metric": "cost", "max": "5", "window": "day"}]
    full = server.create_key(f"{key_name}-full", cost, cache={"ttl": "1h", "charge": "full"})
    first = messages(server, full, text)
    second = messages(server, full, text)
    assert second.headers["x-capgate-cache"] == "hit"
    miss, hit = entry(server, first), entry(server, second)
    assert hit["cost_usd"] == miss["cost_usd"] == hit["saved_usd"] != "0"
    assert hit["output_tokens"] == miss["output_tokens"] > 0
    (used,) = server.key_usage(f"{key_name}-full")
    assert float(used["used"]) == pytest.approx(2 * float(miss["cost_usd"]))


def test_errors_are_never_cached(server: Capgate, upstream: Upstream, key_name: str) -> None:
    key = server.create_key(key_name, cache=HOUR)
    text = unique("error mock:status=400")
    before = served(upstream)
    assert messages(server, key, text).status_code == 400
    second = messages(server, key, text)
    assert second.status_code == 400 and second.headers.get("x-capgate-cache") != "hit"
    assert served(upstream) - before == 2
    # A stream cut short is not kept either.
    body = {"model": "claude-sonnet-4-6", "max_tokens": 200, "stream": True}
    body["messages"] = [{"role": "user", "content": unique("cut mock:cut_stream")}]
    for _ in range(2):
        with httpx.stream(
            "POST", server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
        ) as response:
            assert response.headers["x-capgate-cache"] == "miss"
            try:
                for _chunk in response.iter_bytes():
                    pass
            except httpx.HTTPError:
                pass
    assert served(upstream) - before == 4


def test_a_scope_cache_setting_is_checked(server: Capgate, key_name: str) -> None:
    for bad in (
        {"ttl": "0s"},
        {"ttl": "40d"},
        {"ttl": "1h", "owner": "provider"},
        {"ttl": "soon"},
        {},
    ):
        answer = server.admin("POST", "/admin/keys", json={"name": key_name, "cache": bad})
        assert answer.status_code == 400, (bad, answer.text)
    assert server.admin("GET", f"/admin/keys/{key_name}").status_code == 404


@pytest.fixture
def dash(server: Capgate) -> Capgate:
    return server  # the browser fixtures' server


def test_the_dashboard_shows_a_hit_and_what_it_saved(
    page: Page, server: Capgate, key_name: str
) -> None:
    key = server.create_key(key_name, cache=HOUR)
    text = unique("dashboard")
    first = messages(server, key, text)
    second = messages(server, key, text)
    saved = entry(server, second)["saved_usd"]
    log_in(page, server)
    go(page, server, f"requests/{second.headers['x-capgate-request-id']}")
    shown = page.locator("[data-field=cache]").inner_text()
    assert shown.startswith("hit: answered from the cache") and saved in shown
    go(page, server, f"requests/{first.headers['x-capgate-request-id']}")
    assert page.locator("[data-field=cache]").inner_text().startswith("miss")


def test_the_cli_sets_a_key_cache(server: Capgate, upstream: Upstream, key_name: str) -> None:
    made = run_cli(server, "keys", "create", key_name, "--cache", "10m", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    text = unique("cli")
    messages(server, key, text)
    assert messages(server, key, text).headers["x-capgate-cache"] == "hit"
    shown = run_cli(server, "keys", "show", key_name)
    assert "cache: 10m per key" in shown.stdout, shown.stdout
    off = run_cli(server, "keys", "update", key_name, "--cache", "off")
    assert off.returncode == 0, off.stderr
    assert "x-capgate-cache" not in messages(server, key, text).headers
    assert "cache: off" in run_cli(server, "keys", "show", key_name).stdout
    bad = run_cli(server, "keys", "update", key_name, "--cache", "forever")
    assert bad.returncode == 1 and "not a duration" in bad.stderr + bad.stdout


def test_concurrent_identical_requests_both_forward(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    key = server.create_key(key_name, cache=HOUR)
    text = unique("together mock:delay_ms=300")
    before = served(upstream)
    with ThreadPoolExecutor(2) as pool:
        marks = list(
            pool.map(lambda _: messages(server, key, text).headers["x-capgate-cache"], range(2))
        )
    assert marks == ["miss", "miss"]  # not coalesced: docs/cache.md
    assert served(upstream) - before == 2
    assert messages(server, key, text).headers["x-capgate-cache"] == "hit"


def test_an_answer_cut_by_a_lowered_max_tokens_is_not_kept(
    server: Capgate, upstream: Upstream, key_name: str
) -> None:
    cost = [{"metric": "cost", "max": "0.05", "window": "day"}]
    key = server.create_key(key_name, cost, cache=HOUR)
    text = unique("clamped")
    first = messages(server, key, text, max_tokens=20_000)
    assert first.status_code == 200 and "x-capgate-max-tokens" in first.headers
    second = messages(server, key, text, max_tokens=20_000)
    assert second.headers["x-capgate-cache"] == "miss"  # the first was not kept
