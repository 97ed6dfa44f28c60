"""The dashboard's server side over real HTTP: the page and its security headers, login
and its refusals, the session cookie, CSRF on changes, logout, sessions shared by two
processes, the live feed (`GET /admin/events`), the overview's numbers and the runtime
settings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate

HAIKU = "claude-haiku-4-5"


def ask(url: str, key: str, model: str = HAIKU, text: str = "hi mock:words=3") -> httpx.Response:
    return httpx.post(
        url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )


def login(url: str, password: str = ADMIN_KEY, **headers: str) -> tuple[httpx.Client, str]:
    """A client holding a dashboard session cookie, and the session's CSRF token."""
    client = httpx.Client(base_url=url, timeout=30, trust_env=False)
    response = client.post("/dashboard/login", json={"password": password}, headers=headers)
    assert response.status_code == 200, response.text
    return client, response.json()["csrf_token"]


@pytest.fixture
def own(upstream: Upstream, tmp_path: Path) -> Iterator[Capgate]:
    """A server of this test's own: for throttling, settings and shutdown, which would
    disturb the shared one."""
    server = start_capgate(tmp_path, gateway_config(upstream))
    try:
        yield server
    finally:
        server.close()


# -- the page ------------------------------------------------------------------------------


def check_security_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_dashboard_page_and_assets_ship_in_the_package(capgate: Capgate) -> None:
    with httpx.Client(base_url=capgate.url, trust_env=False) as http:
        page = http.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        check_security_headers(page)
        html = page.text
        assert 'type="password"' in html and 'for="login-password"' in html
        assert "<script>" not in html and " on" + "click=" not in html  # no inline code
        assert "http://" not in html and "https://" not in html  # nothing from a CDN
        for asset in ("/dashboard/static/js/app.js", "/dashboard/static/vendor/uPlot.iife.min.js",
                      "/dashboard/static/app.css", "/dashboard/static/vendor/uPlot.LICENSE.txt"):  # fmt: skip
            response = http.get(asset)
            assert response.status_code == 200, asset
            check_security_headers(response)
            again = http.get(asset, headers={"if-none-match": response.headers["etag"]})
            assert again.status_code == 304
        assert "MIT" in http.get("/dashboard/static/vendor/uPlot.LICENSE.txt").text
        for bad in ("/dashboard/static/../../config.py", "/dashboard/static/js/nope.js",
                    "/dashboard/static/%2e%2e/app.py", "/dashboard/static/js/app.py"):  # fmt: skip
            assert http.get(bad).status_code == 404, bad


# -- login, cookie, CSRF -------------------------------------------------------------------

DATA_ROUTES = [
    "/admin/keys", "/admin/requests", "/admin/usage", "/admin/summary", "/admin/timeseries",
    "/admin/settings", "/admin/audit", "/admin/events",
]  # fmt: skip


def test_unauthenticated_requests_get_nothing(capgate: Capgate) -> None:
    with httpx.Client(base_url=capgate.url, trust_env=False) as http:
        for path in DATA_ROUTES:
            response = http.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "authentication_error"
        http.cookies.set("capgate_session", "forged-token-value")
        for path in DATA_ROUTES:
            assert http.get(path).status_code == 401, path
        assert http.get("/dashboard/session").json() == {"authenticated": False}


def test_login_refuses_wrong_keys(capgate: Capgate, key_name: str) -> None:
    virtual = capgate.create_key(key_name)
    with httpx.Client(base_url=capgate.url, trust_env=False) as http:
        for password in (ADMIN_KEY + "x", ADMIN_KEY[:-1], virtual, "admin"):
            response = http.post("/dashboard/login", json={"password": password})
            assert response.status_code == 401 and "set-cookie" not in response.headers
            assert response.json()["error"]["message"] == "Wrong admin key."
        assert http.post("/dashboard/login", json={}).status_code == 400
        form = http.post("/dashboard/login", data={"password": ADMIN_KEY})
        assert form.status_code == 400  # only JSON: a plain cross-site form cannot log in
        evil = http.post(
            "/dashboard/login",
            json={"password": ADMIN_KEY},
            headers={"origin": "https://evil.example"},
        )
        assert evil.status_code == 403 and "set-cookie" not in evil.headers


def test_session_cookie_flags(capgate: Capgate) -> None:
    with httpx.Client(base_url=capgate.url, trust_env=False) as http:
        response = http.post(
            "/dashboard/login", json={"password": ADMIN_KEY}, headers={"origin": capgate.url}
        )
        assert response.status_code == 200
        check_security_headers(response)
        cookie = response.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        token = rest.split(";")[0]
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert name == "capgate_session" and len(token) >= 43  # 32 random bytes
        assert {"httponly", "path", "max-age"} <= flags
        assert "samesite=strict" in cookie.lower() and "secure" not in flags  # plain http
        assert response.json()["csrf_token"] not in cookie
        # Behind a TLS proxy the cookie is Secure too.
        https = http.post(
            "/dashboard/login", json={"password": ADMIN_KEY}, headers={"x-forwarded-proto": "https"}
        )
        assert "secure" in {p.strip().lower() for p in https.headers["set-cookie"].split(";")}
    # Only a hash of the token is stored.
    for path in capgate.db.parent.rglob("*"):  # the journal folders beside it too
        if path.is_file() and path.relative_to(capgate.db.parent).parts[0].startswith(
            capgate.db.name
        ):
            assert token.encode() not in path.read_bytes(), path


def test_cookie_changes_need_the_csrf_token(capgate: Capgate, key_name: str) -> None:
    capgate.create_key(key_name)
    client, csrf = login(capgate.url)
    with closing(client):
        session = client.get("/dashboard/session").json()
        assert session["authenticated"] and session["csrf_token"] == csrf
        assert client.get("/admin/keys").status_code == 200  # reads need no token
        pause = f"/admin/keys/{key_name}/pause"
        for headers in ({}, {"x-csrf-token": "0" * 64}, {"x-csrf-token": csrf[:-1]}):
            refused = client.post(pause, headers=headers)
            assert refused.status_code == 403 and "x-csrf-token" in refused.text
            patched = client.patch(
                f"/admin/keys/{key_name}", json={"team": "evil"}, headers=headers
            )
            assert patched.status_code == 403
            assert client.delete(f"/admin/keys/{key_name}", headers=headers).status_code == 403
        shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
        assert shown["status"] == "active" and shown["team"] is None
        assert client.post(pause, headers={"x-csrf-token": csrf}).json()["status"] == "paused"
    # The audit log says the dashboard did it; Bearer callers need no CSRF token.
    audit = capgate.admin("GET", "/admin/audit", params={"limit": 1000}).json()["items"]
    mine = [a for a in audit if a["target"] == f"key:{key_name}"]
    assert [(a["action"], a["actor"]) for a in mine] == [
        ("pause", "admin@dashboard"),
        ("create", "admin"),
    ]
    assert capgate.admin("POST", f"/admin/keys/{key_name}/resume").status_code == 200


def test_logout_ends_the_session_everywhere(capgate: Capgate) -> None:
    client, csrf = login(capgate.url)
    token = client.cookies["capgate_session"]
    with closing(client):
        assert client.post("/dashboard/logout").status_code == 403  # CSRF needed here too
        response = client.post("/dashboard/logout", headers={"x-csrf-token": csrf})
        assert response.status_code == 204
        assert "max-age=0" in response.headers["set-cookie"].lower()
    with httpx.Client(base_url=capgate.url, trust_env=False) as replay:
        replay.cookies.set("capgate_session", token)
        assert (
            replay.get("/admin/keys").status_code == 401
        )  # gone on the server, not only in the browser


def test_sessions_are_shared_and_die_with_the_admin_key(upstream: Upstream, tmp_path: Path) -> None:
    first = start_capgate(tmp_path, gateway_config(upstream))
    second = start_capgate(tmp_path, gateway_config(upstream), db=first.db)
    try:
        client, csrf = login(first.url)
        token = client.cookies["capgate_session"]
        client.close()
        with httpx.Client(base_url=second.url, trust_env=False) as other:
            other.cookies.set("capgate_session", token)
            assert other.get("/admin/keys").status_code == 200
            created = other.post(
                "/admin/keys", json={"name": "via-second"}, headers={"x-csrf-token": csrf}
            )
            assert created.status_code == 201
        second.close()
        # The same database with another admin key: the old session opens nothing.
        third = start_capgate(
            tmp_path, gateway_config(upstream), db=first.db,
            env={"CAPGATE_ADMIN_KEY": "sk-cg-admin-rotated-0123456789abcdef"},
        )  # fmt: skip
        try:
            with httpx.Client(base_url=third.url, trust_env=False) as rotated:
                rotated.cookies.set("capgate_session", token)
                assert rotated.get("/admin/keys").status_code == 401
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_failed_logins_are_throttled(own: Capgate) -> None:
    with httpx.Client(base_url=own.url, trust_env=False) as http:
        for _ in range(10):
            assert http.post("/dashboard/login", json={"password": "guess"}).status_code == 401
        blocked = http.post("/dashboard/login", json={"password": ADMIN_KEY})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert "set-cookie" not in blocked.headers
        # The API with the key itself is not affected.
        assert own.admin("GET", "/admin/keys").status_code == 200


def test_failed_logins_count_across_processes(
    own: Capgate, upstream: Upstream, tmp_path: Path
) -> None:
    """Failures are counted in the database: guessing on one process then another of the
    same database does not double the tries."""
    other = start_capgate(tmp_path, gateway_config(upstream), db=own.db)
    try:
        with (
            httpx.Client(base_url=own.url, trust_env=False) as first,
            httpx.Client(base_url=other.url, trust_env=False) as second,
        ):
            for n in range(10):
                http = first if n % 2 else second
                assert http.post("/dashboard/login", json={"password": "guess"}).status_code == 401
            for http in (first, second):
                blocked = http.post("/dashboard/login", json={"password": ADMIN_KEY})
                assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    finally:
        other.close()


# -- the live feed -------------------------------------------------------------------------


class Feed:
    """Reads `GET /admin/events` in a thread, collecting (event, data, id) triples."""

    def __init__(self, url: str, headers: dict[str, str], cookies: dict[str, str] | None = None):
        self.events: list[tuple[str, dict[str, Any], str]] = []
        self.status: int | None = None
        self.comments: list[str] = []
        self._client = httpx.Client(base_url=url, cookies=cookies, trust_env=False, timeout=30)
        self._headers = headers
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/admin/events", headers=self._headers) as response:
                self.status = response.status_code
                event, ident = "message", ""
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                        self._ready.set()
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("id: "):
                        ident = line[4:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:]), ident))
                self._ready.set()
        except httpx.HTTPError:
            self._ready.set()

    def wait_for(self, predicate: Any, timeout: float = 3.0) -> tuple[str, dict[str, Any], str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in list(self.events):
                if predicate(item):
                    return item
            time.sleep(0.02)
        raise AssertionError(f"no such event within {timeout}s: {self.events}")

    def close(self) -> None:
        self._client.close()


def test_live_feed_streams_requests_refusals_and_admin_actions(
    capgate: Capgate, key_name: str
) -> None:
    feed = Feed(capgate.url, {"authorization": f"Bearer {ADMIN_KEY}"})
    try:
        assert feed.status == 200
        key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 1}])
        started = time.monotonic()
        assert ask(capgate.url, key).status_code == 200
        _, ok, _ = feed.wait_for(lambda e: e[0] == "request" and e[1]["key"] == key_name)
        assert time.monotonic() - started < 1.5  # "within a second" plus the request itself
        entry = capgate.ledger(key=key_name)[0]
        for field in ("id", "created_at", "key", "user", "team", "model", "provider", "status",
                      "outcome", "cost_usd", "latency_ms", "refusal"):  # fmt: skip
            assert ok[field] == entry[field], field
        assert ok["tokens"] == entry["input_tokens"] + entry["output_tokens"] > 0
        assert ask(capgate.url, key).status_code == 402
        _, refused, _ = feed.wait_for(
            lambda e: e[0] == "request" and e[1]["key"] == key_name and e[1]["outcome"] == "refused"
        )
        assert refused["status"] == 402 and refused["refusal"]["code"] == "limit_exceeded"
        _, audit, _ = feed.wait_for(
            lambda e: e[0] == "audit" and e[1]["target"] == f"key:{key_name}"
        )
        assert audit["action"] == "create" and audit["actor"] == "admin"
        ids = [int(i.split("-")[0]) for kind, _, i in feed.events if kind == "request"]
        assert ids == sorted(ids)
    finally:
        feed.close()


def test_live_feed_needs_admin_rights(capgate: Capgate, key_name: str) -> None:
    virtual = capgate.create_key(key_name)
    for headers in ({}, {"authorization": f"Bearer {virtual}"}, {"authorization": "Bearer nope"}):
        response = httpx.get(capgate.url + "/admin/events", headers=headers, timeout=10)
        assert response.status_code == 401
    # A dashboard session may watch (the browser's EventSource sends the cookie).
    client, _ = login(capgate.url)
    feed = Feed(capgate.url, {}, cookies={"capgate_session": client.cookies["capgate_session"]})
    client.close()
    try:
        assert feed.status == 200
        capgate.create_key(f"{key_name}-seen")
        feed.wait_for(lambda e: e[0] == "audit" and e[1]["target"] == f"key:{key_name}-seen")
    finally:
        feed.close()


def test_live_feed_resumes_from_last_event_id(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    feed = Feed(capgate.url, {"authorization": f"Bearer {ADMIN_KEY}"})
    assert ask(capgate.url, key, text="one").status_code == 200
    _, _, cursor = feed.wait_for(lambda e: e[0] == "request" and e[1]["key"] == key_name)
    feed.close()
    for text in ("two", "three"):
        assert ask(capgate.url, key, text=text).status_code == 200
    resumed = Feed(capgate.url, {"authorization": f"Bearer {ADMIN_KEY}", "last-event-id": cursor})
    try:
        resumed.wait_for(
            lambda e: len([x for x in resumed.events if x[1].get("key") == key_name]) >= 2
        )
        mine = [data for kind, data, _ in resumed.events if data.get("key") == key_name]
        assert len(mine) == 2  # what was missed, once; not the one already seen
    finally:
        resumed.close()


def test_shutdown_does_not_wait_for_open_feeds(own: Capgate) -> None:
    feeds = [Feed(own.url, {"authorization": f"Bearer {ADMIN_KEY}"}) for _ in range(3)]
    started = time.monotonic()
    own.close()
    assert time.monotonic() - started < 5
    assert own.proc.returncode == 0
    for feed in feeds:
        feed.close()


# -- overview numbers ----------------------------------------------------------------------


def test_summary_and_timeseries_add_up(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 3}])
    for words in (3, 5, 7, 9):
        ask(capgate.url, key, text=f"x mock:words={words}")
    entries = capgate.ledger(key=key_name)
    assert [e["outcome"] for e in entries].count("refused") == 1
    summary = capgate.admin(
        "GET", "/admin/summary", params={"key": key_name, "period": "24h"}
    ).json()
    assert summary["requests"] == 4 and summary["refused"] == 1 and summary["errors"] == 0
    assert Decimal(summary["cost_usd"]) == sum(Decimal(e["cost_usd"]) for e in entries)
    assert summary["output_tokens"] == 3 + 5 + 7
    ok = sorted(e["latency_ms"] for e in entries if e["outcome"] == "ok")
    assert summary["latency_ms"]["p50"] == ok[1] and summary["latency_ms"]["p95"] == ok[2]
    series = capgate.admin(
        "GET", "/admin/timeseries", params={"key": key_name, "period": "1h", "group_by": "model"}
    ).json()
    assert series["step"] == "minute" and len(series["buckets"]) in (60, 61)
    (only,) = series["series"]
    assert only["name"] == HAIKU and only["total_requests"] == 4 == sum(only["requests"])
    assert sum(Decimal(c) for c in only["cost_usd"]) == Decimal(summary["cost_usd"])
    assert only["total_cost_usd"] == summary["cost_usd"] and sum(only["refused"]) == 1
    for params in ({"period": "fortnight"}, {"step": "second"}, {"group_by": "colour"},
                   {"from": "2026-01-02", "to": "2026-01-01"}, {"tz": "Mars/Base"},
                   {"from": "2020-01-01", "step": "minute"}):  # fmt: skip
        path = "/admin/timeseries" if "step" in params or "group_by" in params else "/admin/summary"
        response = capgate.admin("GET", path, params=params)
        assert response.status_code == 400, params


def test_csv_export_of_everything_filtered(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    for _ in range(3):
        ask(capgate.url, key)
    response = capgate.admin(
        "GET", "/admin/requests", params={"key": key_name, "format": "csv", "limit": "all"}
    )
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("id,created_at")
    assert [line.split(",")[0] for line in lines[1:]] == [
        str(e["id"]) for e in capgate.ledger(key=key_name)
    ]
    empty = capgate.admin(
        "GET",
        "/admin/requests",
        params={"key": f"{key_name}-none", "format": "csv", "limit": "all"},
    )
    assert empty.text.splitlines() == [lines[0]]
    assert capgate.admin("GET", "/admin/requests", params={"limit": "all"}).status_code == 400


# -- runtime settings ----------------------------------------------------------------------


def test_settings_change_prices_weights_and_timezone_at_runtime(
    own: Capgate, upstream: Upstream, tmp_path: Path
) -> None:
    other = start_capgate(tmp_path, gateway_config(upstream), db=own.db)  # a second process
    try:
        shown = own.admin("GET", "/admin/settings").json()
        assert shown["timezone"] == "UTC" and shown["credit_weights"]["*haiku*"] == 1
        assert shown["pricing"] == {"house-model": {"input": "2", "output": "10"}}
        assert set(shown["sources"].values()) == {"config"}
        key = own.create_key("weighted", [{"metric": "credits", "window": "day", "max": 5}])
        unpriced = "claude-dash-test-model"
        assert ask(own.url, key, unpriced).status_code == 400  # no price: refused

        response = own.admin(
            "PATCH", "/admin/settings",
            json={"credit_weights": {"*haiku*": 4}, "timezone": "Europe/Berlin",
                  "pricing": {unpriced: {"input": "1", "output": "2.5"}}},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json()["sources"] == dict.fromkeys(
            ("pricing", "credit_weights", "timezone"), "dashboard"
        ) | dict.fromkeys(("alert_rules", "alerts_allow_private_targets"), "config")
        assert ask(own.url, key).status_code == 200  # haiku: 4 credits of 5
        assert ask(own.url, key).status_code == 402  # another 4 do not fit
        answer = ask(own.url, key, unpriced, "hi mock:words=4")  # priced now; 1 credit fits
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        entry = own.ledger(key="weighted", model=unpriced)[0]
        expected = (Decimal(usage["input_tokens"]) * 1 + Decimal(4) * Decimal("2.5")) / 10**6
        assert Decimal(entry["cost_usd"]) == expected
        created = own.admin("POST", "/admin/teams", json={"name": "berlin"}).json()
        assert created["timezone"] == "Europe/Berlin"  # the new default
        # The other process follows within about a second.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if other.admin("GET", "/admin/settings").json()["timezone"] == "Europe/Berlin":
                break
            time.sleep(0.1)
        other_key = other.create_key("other", [{"metric": "credits", "window": "day", "max": 6}])
        assert ask(other.url, other_key, unpriced).status_code == 200  # priced there too: 1
        assert ask(other.url, other_key).status_code == 200  # 1 + 4
        assert ask(other.url, other_key).status_code == 402  # 1 + 4 + 4 > 6 (weight 1 would fit)

        # null goes back to the config file's value; the audit log has before and after.
        back = own.admin("PATCH", "/admin/settings", json={"pricing": None}).json()
        assert back["pricing"] == shown["pricing"] and back["sources"]["pricing"] == "config"
        assert ask(own.url, key, unpriced).status_code == 400
        audit = [
            a for a in own.admin("GET", "/admin/audit").json()["items"] if a["action"] == "settings"
        ]
        assert len(audit) == 2 and audit[1]["before"]["timezone"] == "UTC"
        assert audit[1]["after"]["credit_weights"] == {"*haiku*": 4}
        assert audit[0]["after"]["pricing"] == shown["pricing"]
    finally:
        other.close()


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"credit_weights": {"*": -1}}, "credit_weights"),
        ({"credit_weights": {"*": 1.5}}, "credit_weights"),
        ({"pricing": {"m": {"input": "1"}}}, "pricing.m.output"),
        ({"pricing": {"m": {"input": "0.0000001", "output": "1"}}}, "pricing.m"),
        ({"pricing": {"m": {"input": "-1", "output": "1"}}}, "pricing.m"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_are_400_and_change_nothing(
    capgate: Capgate, body: dict[str, Any], word: str
) -> None:
    before = capgate.admin("GET", "/admin/settings").json()
    response = capgate.admin("PATCH", "/admin/settings", json=body)
    assert response.status_code == 400, response.text
    assert word in response.json()["error"]["message"]
    assert capgate.admin("GET", "/admin/settings").json() == before
