"""Budget alerts end to end (docs/operations.md#alerts): real capgate servers (two
processes on one SQLite file), the real mock upstream, and a real webhook receiver (an
aiohttp server on an ephemeral loopback port, in a thread of the test)."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from capgate.alerts.payload import verify
from conftest import Capgate, Upstream, gateway_config, need, start_capgate
from test_dashboard_browser import CHROMIUM, log_in, sync_playwright

PRICE = {"input": "1000", "output": "1000"}  # $0.001 a token: whole numbers of dollars
MODEL = "claude-alerts-test"
TOKEN_NANO = 1_000_000  # what a token costs at PRICE
FAST = {
    "alerts_interval_s": 0.2,
    "alerts_retry_base_s": 0.3,
    "alerts_allow_private_targets": True,  # the receiver is on loopback
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver that answers `fail_first` requests with 500, then 200."""

    fail_first: int = 0
    got: list[Received] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.got.append(Received(dict(request.headers), await request.read()))
        if len(self.got) <= self.fail_first:
            return web.Response(status=500, text="not yet")
        return web.Response(text="ok")

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def bodies(self, type_: str | None = None) -> list[Any]:
        out = [r.json() for r in list(self.got)]
        return [b for b in out if type_ is None or b.get("type") == type_]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def eventually(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def alerts_config(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    config = gateway_config(upstream, pricing={MODEL: PRICE})
    config["server"] = {**FAST, **extra}
    return config


def attempts(server: Capgate) -> list[tuple[str, int]]:
    """The delivery log's (status, attempts), as written so far."""
    log = server.admin("GET", "/admin/alerts/deliveries").json()["items"]
    return [(d["status"], d["attempts"]) for d in log]


def add_webhook(server: Capgate, name: str, url: str, **fields: Any) -> dict[str, Any]:
    response = server.admin(
        "POST", "/admin/alerts/webhooks", json={"name": name, "url": url, **fields}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def nano(dollars: str) -> int:
    return int(Decimal(dollars) * 10**9)


def usd(amount: int) -> str:
    return str(Decimal(amount) / 10**9)


def cost_used(server: Capgate, key: str) -> int:
    [usage] = [u for u in server.key_usage(key) if u["metric"] == "cost_usd"]
    return nano(usage["used"])


async def _burst(urls: list[str], key: str, n: int, words: int = 100) -> list[int]:
    """n requests at once, spread over `urls`, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    text = f"hi mock:words={words}"
    messages = [{"role": "user", "content": text}]
    body = orjson.dumps({"model": MODEL, "max_tokens": words, "messages": messages})
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(60)) as s:

        async def one(url: str) -> int:
            headers = {"x-api-key": key, "content-type": "application/json"}
            async with s.post(url + "/v1/messages", data=body, headers=headers) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(n)))


def two_servers(
    engine: str, config: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Capgate, Capgate]:
    """Two processes on one SQLite file, or two nodes on one PostgreSQL database."""
    if engine == "sqlite":
        first = start_capgate(tmp_path, config)
        return first, start_capgate(tmp_path, config, db=first.db)
    url = request.getfixturevalue("postgres").new_database()
    nodes = []
    for n in range(2):
        env = {"CAPGATE_STATE_DIR": str(tmp_path / f"state-{n}")}
        nodes.append(start_capgate(tmp_path, config, args=("--database-url", url), env=env))
    return nodes[0], nodes[1]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_200_concurrent_requests_on_two_processes_deliver_each_threshold_once(
    engine: str,
    upstream: Upstream,
    receiver: Receiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    config = alerts_config(upstream)
    first, second = two_servers(engine, config, tmp_path, request)
    try:
        hook = add_webhook(first, "ops", receiver.url + "/hook")
        secret = hook["secret"]
        assert secret.startswith("whsec_")
        assert "secret" not in first.admin("GET", "/admin/alerts/webhooks").json()["items"][0]
        # The key's budget: 1000 of the burst's requests, in a total window (no reset if
        # the test spans midnight). Filled to 74 % first, then 200 requests at once cross
        # 80 % (each holds its worst case while it runs, so some are refused near the
        # end: what they add is about (100 - 74) / 2.3 %).
        key = first.create_key("burst", [{"metric": "requests", "window": "total", "max": 10**6}])
        assert asyncio.run(_burst([first.url], key, 1)) == [200]
        cost = nano(first.ledger(key="burst")[0]["cost_usd"])
        budget = cost * 1000
        patch = {"limits": [{"metric": "cost_usd", "window": "total", "max": usd(budget)}]}
        assert first.admin("PATCH", "/admin/keys/burst", json=patch).status_code == 200
        while (used := cost_used(first, "burst")) < budget * 74 // 100:
            words = max(1, (budget * 74 // 100 - used) // TOKEN_NANO - 30)
            assert asyncio.run(_burst([first.url], key, 1, words)) == [200]
        assert used < budget * 80 // 100

        statuses = asyncio.run(_burst([first.url, second.url], key, 200))
        assert statuses.count(200) >= 20, statuses
        used = cost_used(first, "burst")
        assert budget * 80 // 100 <= used < budget, (used, budget)

        def thresholds() -> list[int]:
            return sorted(b["data"]["threshold_percent"] for b in receiver.bodies("threshold"))

        assert eventually(lambda: thresholds() == [50, 80]), thresholds()
        time.sleep(2)  # ten more rounds of both processes' watchers: nothing more comes
        assert thresholds() == [50, 80]
        [at_80] = [r for r in receiver.got if r.json()["data"]["threshold_percent"] == 80]
        body = at_80.json()
        assert body["scope"] == {"kind": "key", "name": "burst"}
        assert body["data"]["metric"] == "cost_usd" and body["data"]["window"] == "total"
        assert "80%" in body["text"]
        # The signature verifies with the webhook's secret, not with another.
        signature = at_80.headers["X-Capgate-Signature"]
        assert verify(secret, signature, at_80.body, time.time())
        assert not verify("whsec_not-the-secret-0000", signature, at_80.body, time.time())
        assert not verify(secret, signature, at_80.body + b" ", time.time())  # body changed
        # The delivery log shows both, delivered at the first attempt (written by the sender
        # once the receiver answered: maybe not yet).
        assert eventually(lambda: attempts(first) == [("delivered", 1)] * 2), attempts(first)
        log = first.admin("GET", "/admin/alerts/deliveries").json()["items"]
        assert second.admin("GET", "/admin/alerts/deliveries").json()["items"] == log
    finally:
        second.close()
        first.close()


def test_a_failing_receiver_gets_the_alert_on_retry(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail_first = 2
    server = start_capgate(tmp_path, alerts_config(upstream))
    try:
        add_webhook(server, "flaky", receiver.url)
        key = server.create_key("small", [{"metric": "cost_usd", "window": "total", "max": "1.00"}])
        assert asyncio.run(_burst([server.url], key, 1, 850)) == [200]  # about 86 %

        def delivered() -> list[dict[str, Any]]:
            items = server.admin("GET", "/admin/alerts/deliveries?status=delivered").json()["items"]
            return list(items)

        done = eventually(lambda: len(delivered()) == 2 and delivered())
        assert done, server.admin("GET", "/admin/alerts/deliveries").json()
        # 50 and 80 % are a delivery each; the first attempts failed (500), the second
        # ones were delivered.
        assert [(d["attempts"], d["last_status"]) for d in done] == [(2, 200)] * 2
        ids = [r.headers["X-Capgate-Delivery"] for r in receiver.got]
        assert len(ids) == 4 and len(set(ids)) == 2  # the retries are the same deliveries
        assert len({r.body for r in receiver.got}) == 2
    finally:
        server.close()


def test_refusal_rate_provider_down_slack_and_report(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    config = alerts_config(upstream)
    config["providers"].append(
        {"name": "dead", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "x",
         "cooldown_after": 2, "cooldown_s": 60}
    )  # fmt: skip
    config["models"].insert(0, {"match": "claude-dead-*", "targets": [{"provider": "dead"}]})
    config["pricing"]["claude-dead-1"] = PRICE
    server = start_capgate(tmp_path, config)
    try:
        add_webhook(
            server, "slack", receiver.url + "/slack", format="slack", events=["provider_down"]
        )
        add_webhook(server, "json", receiver.url + "/json", report="daily")
        rule = {"type": "refusal_rate", "scope": "key:limited", "percent": 50, "minutes": 5}
        created = server.admin("POST", "/admin/alerts/rules", json={**rule, "min_requests": 4})
        assert created.status_code == 201, created.text
        rules = server.admin("GET", "/admin/alerts/rules").json()
        assert [r["id"] for r in rules["items"]] == [created.json()["id"]]  # before spend_rate
        assert rules["defaults"][0]["percents"] == [50, 80, 100]

        spend = {"type": "spend_rate", "scope": "key:limited", "factor": 3, "floor_usd": "0.05"}
        assert server.admin("POST", "/admin/alerts/rules", json=spend).status_code == 201
        key = server.create_key("limited", [{"metric": "requests", "window": "total", "max": 1}])
        statuses = asyncio.run(_burst([server.url], key, 6))
        assert sorted(statuses) == [200] + [402] * 5
        [refusal] = eventually(lambda: receiver.bodies("refusal_rate"))
        assert refusal["scope"] == {"kind": "key", "name": "limited"}
        assert (refusal["data"]["requests"], refusal["data"]["refused"]) == (6, 5)
        # Its one answered request ($0.1 and a bit) is all its spend of the week: far above
        # 3x its average hour, and above the $0.05 floor.
        [spent] = eventually(lambda: receiver.bodies("spend_rate"))
        assert spent["scope"] == {"kind": "key", "name": "limited"}
        assert nano(spent["data"]["last_hour_usd"]) > nano("0.1")

        dead = server.create_key("dead-user")
        for _ in range(2):
            answer = asyncio.run(_burst_model(server.url, dead, "claude-dead-1"))
            assert answer >= 500

        def slack() -> list[Any]:
            return [b for b in receiver.bodies() if list(b) == ["text"]]

        [to_slack] = eventually(slack)
        assert 'provider "dead" is down' in to_slack["text"]
        # The JSON webhook takes every event (and the report of yesterday); the Slack one
        # only provider_down, in Slack's shape.
        [report] = eventually(lambda: receiver.bodies("report"))
        to = calendar.timegm(time.strptime(report["data"]["to"], "%Y-%m-%dT%H:%M:%SZ"))
        assert report["data"]["period"] == "daily" and to % 86400 == 0  # the last UTC midnight
        assert 0 <= time.time() - to < 86400 + 60
        assert isinstance(report["data"]["teams"], list) and "total_usd" in report["data"]
        [down] = eventually(lambda: receiver.bodies("provider_down"))
        assert down["scope"] == {"kind": "provider", "name": "dead"}
        time.sleep(1)
        assert len(slack()) == 1 and len(receiver.got) == 5  # nothing twice
        audit = server.admin("GET", "/admin/audit").json()["items"]
        targets = {(a["action"], a["target"]) for a in audit}
        assert ("create", "alert-webhook:slack") in targets
        assert ("create", f"alert-rule:{created.json()['id']}") in targets
        assert not any("whsec_" in orjson.dumps(a).decode() for a in audit)  # no secrets
    finally:
        server.close()


async def _burst_model(url: str, key: str, model: str) -> int:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s:
        headers = {"x-api-key": key}
        async with s.post(url + "/v1/messages", json=body, headers=headers) as r:
            await r.read()
            return r.status


def test_private_targets_are_refused_without_the_setting(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    server = start_capgate(tmp_path, alerts_config(upstream, alerts_allow_private_targets=False))
    try:
        for url in (receiver.url, "http://10.1.2.3/hook", "http://localhost:9/x", "http://[::1]/x"):
            refused = server.admin("POST", "/admin/alerts/webhooks", json={"name": "p", "url": url})
            assert refused.status_code == 400, url
            assert "alerts_allow_private_targets" in refused.json()["error"]["message"]
        assert server.admin("GET", "/admin/alerts/webhooks").json()["items"] == []
        # Allowed by the admin at runtime: accepted, and delivered.
        allow = {"alerts_allow_private_targets": True}
        assert server.admin("PATCH", "/admin/settings", json=allow).status_code == 200
        add_webhook(server, "local", receiver.url)
        key = server.create_key("k", [{"metric": "cost_usd", "window": "total", "max": "1.00"}])
        assert asyncio.run(_burst([server.url], key, 1, 850)) == [200]
        assert eventually(lambda: len(receiver.got) == 2)
        # Forbidden again: a new alert's delivery to the loopback target fails, unsent.
        assert (
            server.admin(
                "PATCH", "/admin/settings", json={"alerts_allow_private_targets": None}
            ).status_code
            == 200
        )
        other = server.create_key("k2", [{"metric": "cost_usd", "window": "total", "max": "1.00"}])
        assert asyncio.run(_burst([server.url], other, 1, 850)) == [200]

        def failed() -> list[dict[str, Any]]:
            return list(
                server.admin("GET", "/admin/alerts/deliveries?status=failed").json()["items"]
            )

        found = eventually(lambda: len(failed()) == 2 and failed())
        assert found and all("private" in d["last_error"] for d in found)
        assert len(receiver.got) == 2
    finally:
        server.close()


def cli(server: Capgate, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGATE_URL": server.url, "CAPGATE_ADMIN_KEY": server.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "capgate", "alerts", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_manages_rules_and_webhooks(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    server = start_capgate(tmp_path, alerts_config(upstream))
    try:
        added = cli(server, "add-webhook", "team-eng", receiver.url, "--format", "slack",
                    "--scope", "team:eng", "--report", "weekly")  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "signing secret (shown once): whsec_" in added.stdout
        listed = json.loads(cli(server, "webhooks", "--json").stdout)
        assert [(w["name"], w["format"], w["scope"], w["report"]) for w in listed] == [
            ("team-eng", "slack", "team:eng", "weekly")
        ]
        rule = cli(server, "add-rule", "--scope", "team:eng", "--type", "threshold",
                   "--percents", "90,75", "--metric", "*")  # fmt: skip
        assert rule.returncode == 0, rule.stderr
        rule_id = rule.stdout.split()[1]
        shown = json.loads(cli(server, "rules", "--json").stdout)
        assert shown["items"] == [
            {"id": rule_id, "type": "threshold", "scope": "team:eng", "percents": [75, 90],
             "metric": None}
        ]  # fmt: skip
        bad = cli(server, "add-rule", "--scope", "team:eng", "--type", "threshold",
                  "--percents", "0")  # fmt: skip
        assert bad.returncode == 1 and "percents" in bad.stderr
        # A signed test delivery, in the webhook's format (Slack: text only).
        tested = cli(server, "test-webhook", "team-eng")
        assert tested.returncode == 0 and "queued" in tested.stdout, tested.stderr
        got = eventually(lambda: [r for r in receiver.got if b"a test of the webhook" in r.body])
        assert got and list(got[0].json()) == ["text"]
        assert verify(added.stdout.split()[-1], got[0].headers["X-Capgate-Signature"],
                      got[0].body, time.time())  # fmt: skip
        assert cli(server, "test-webhook", "nope").returncode == 1
        assert cli(server, "remove-rule", rule_id).returncode == 0
        assert json.loads(cli(server, "rules", "--json").stdout)["items"] == []
        missing = cli(server, "remove-webhook", "nope")
        assert missing.returncode == 1 and "404" in missing.stderr
        assert cli(server, "remove-webhook", "team-eng").returncode == 0
        assert json.loads(cli(server, "deliveries", "--json", "--status", "failed").stdout) == []
    finally:
        server.close()


def test_the_dashboard_shows_webhooks_and_deliveries(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    need(sync_playwright is not None, "playwright is not installed (pip install -e '.[dev]')")
    need(Path(CHROMIUM).exists() or shutil.which("chromium") is not None, "chromium")
    receiver.fail_first = 1
    server = start_capgate(tmp_path, alerts_config(upstream))
    try:
        add_webhook(server, "ops-room", receiver.url, format="slack")
        key = server.create_key("shown", [{"metric": "cost_usd", "window": "total", "max": "1.00"}])
        assert asyncio.run(_burst([server.url], key, 1, 850)) == [200]
        assert eventually(lambda: len(receiver.got) == 3)  # one failed, then both delivered
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                args=["--no-sandbox", "--disable-dev-shm-usage"],
            )
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                log_in(page, server)
                page.goto(f"{server.url}/dashboard#/alerts")
                page.get_by_role("cell", name="ops-room").first.wait_for()
                rows = page.locator("section", has_text="Deliveries").locator("tbody tr")
                assert rows.count() == 2
                text = rows.all_inner_texts()
                assert all("delivered" in row and "HTTP 200" in row for row in text), text
                assert any("reached 80% of its total cost_usd limit" in row for row in text)
                assert errors == []
            finally:
                browser.close()
    finally:
        server.close()


def test_a_pending_delivery_survives_its_process(
    upstream: Upstream, receiver: Receiver, tmp_path: Path
) -> None:
    """The process that claimed an alert dies after a failed attempt: another process on
    the database sends it when it is due, once."""
    receiver.fail_first = 2
    config = alerts_config(upstream, alerts_retry_base_s=3)
    first = start_capgate(tmp_path, config)
    second = None
    try:
        add_webhook(first, "ops", receiver.url)
        key = first.create_key("dies", [{"metric": "cost_usd", "window": "total", "max": "1.00"}])
        assert asyncio.run(_burst([first.url], key, 1, 850)) == [200]
        assert eventually(lambda: len(receiver.got) == 2)  # 50 and 80 %: both failed (500)
        # Killed once both failures are written (the receiver sees a request before its
        # sender writes the answer down; killed before that, the lease would hold for 60 s).
        assert eventually(lambda: attempts(first) == [("pending", 1)] * 2), attempts(first)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        first.close()
        second = start_capgate(tmp_path, config, db=first.db)
        assert eventually(lambda: attempts(second) == [("delivered", 2)] * 2), attempts(second)
        ids = [r.headers["X-Capgate-Delivery"] for r in receiver.got]
        assert len(ids) == 4 and sorted(ids[:2]) == sorted(ids[2:])  # the same two, once more
    finally:
        if second is not None:
            second.close()
        first.close()
