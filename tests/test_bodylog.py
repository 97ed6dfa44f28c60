"""Prompt and answer logging end to end (capgate.bodylog): a real server, the real mock
upstream, raw HTTP. Off by default; opted in per key and per team; request bodies and
answers (whole and streamed) redacted before they are written; the size cap; old bodies
deleted by the retention job; only callers allowed to read prompts get them; a failed
write counted and the request answered anyway; no body in any log line.

The store's part on both engines is tests/test_store_bodies.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capgate.http.admin_bodies import may_read_bodies
from capgate.http.sessions import ADMIN_ACTOR, SESSION_ACTOR, Caller
from conftest import Capgate, Upstream, gateway_config, log_with, start_capgate
from test_cli import run_cli
from test_dashboard_api import login
from test_dashboard_browser import Page, browser, console, go, log_in, page, shot

__all__ = ["browser", "console", "page"]

CAP = 16_384
EMAIL = "bob.secret@example.com"
ANT_KEY = "sk-ant-api03-" + "Q" * 40
CARD = "4111111111111111"
PROMPT = f"please mail {EMAIL} my {ANT_KEY} and {CARD}"


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    tmp = tmp_path_factory.mktemp("bodylog")
    config = gateway_config(upstream, server={"body_log_max_bytes": CAP})
    started = start_capgate(tmp, config, log=tmp / "server.log")
    try:
        yield started
    finally:
        started.close()


def wait_for(check: Callable[[], Any], within: float = 10) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def messages(server: Capgate, key: str, text: str = PROMPT, **extra: Any) -> httpx.Response:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 200, **extra}
    body["messages"] = [{"role": "user", "content": text}]
    return httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    )


def chat_stream(server: Capgate, key: str, text: str = PROMPT) -> tuple[str, str]:
    body = {
        "model": "gpt-4o-mini", "max_tokens": 200, "stream": True,
        "messages": [{"role": "user", "content": text}],
    }  # fmt: skip
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body,
        headers={"authorization": f"Bearer {key}"}, timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        sent = b"".join(response.iter_bytes()).decode()
        return response.headers["x-capgate-request-id"], sent


def logged(server: Capgate, request_id: str, within: float = 10) -> dict[str, Any] | None:
    def read() -> dict[str, Any] | None:
        answer = server.admin("GET", f"/admin/requests/{request_id}/body")
        found = answer.json() if answer.status_code == 200 else None
        return found if found and found["logged"] else None

    return wait_for(read, within)  # type: ignore[no-any-return]


def rows(server: Capgate) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.db) as conn:
        return conn.execute("SELECT request_id, request, answer FROM request_bodies").fetchall()


def test_nothing_is_logged_by_default(server: Capgate) -> None:
    plain = server.create_key("plain")
    assert server.admin("GET", "/admin/keys/plain").json()["log_bodies"] is False
    first = messages(server, plain)
    assert first.status_code == 200, first.text
    request_id = first.headers["x-capgate-request-id"]
    # A logged request after it: once that one is written, the first would have been.
    logging_key = server.create_key("after-plain", log_bodies=True)
    second = messages(server, logging_key, "hello")
    assert logged(server, second.headers["x-capgate-request-id"]) is not None
    not_logged = server.admin("GET", f"/admin/requests/{request_id}/body")
    assert not_logged.status_code == 200
    assert not_logged.json() == {"request_id": request_id, "logged": False}
    unknown = server.admin("GET", "/admin/requests/req_nope/body")
    assert unknown.status_code == 404 and "no request" in unknown.json()["error"]["message"]
    assert request_id not in [row[0] for row in rows(server)]


def test_a_key_that_opts_in_logs_its_requests_and_answers_redacted(server: Capgate) -> None:
    key = server.create_key("logs-whole", log_bodies=True)
    answer = messages(server, key)
    assert answer.status_code == 200 and EMAIL in answer.text  # the mock echoes it back
    request_id = answer.headers["x-capgate-request-id"]
    body = logged(server, request_id)
    assert body is not None
    assert "[REDACTED:email]" in body["request"] and "[REDACTED:anthropic_key]" in body["request"]
    assert "[REDACTED:card]" in body["request"] and '"claude-sonnet-4-6"' in body["request"]
    assert "[REDACTED:email]" in body["answer"] and '"type":"message"' in body["answer"]
    assert body["answer_bytes"] == len(answer.content) and body["truncated"] is False
    for secret in (EMAIL, ANT_KEY, CARD):
        assert all(secret not in str(row) for row in rows(server))
    # The ledger entry is the same request.
    entry = server.admin("GET", f"/admin/requests/{request_id}").json()
    assert entry["key"] == "logs-whole"


def test_a_team_that_opts_in_logs_the_streams_of_its_keys(server: Capgate) -> None:
    assert server.admin("POST", "/admin/teams", json={"name": "logged-team"}).status_code == 201
    changed = server.admin("PATCH", "/admin/teams/logged-team", json={"log_bodies": True})
    assert changed.status_code == 200 and changed.json()["log_bodies"] is True
    audit = server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"][0]
    assert audit["target"] == "team:logged-team"
    assert (audit["before"]["log_bodies"], audit["after"]["log_bodies"]) == (False, True)
    member = server.create_key("team-member", team="logged-team")
    outsider = server.create_key("team-outsider")
    request_id, sent = chat_stream(server, member)
    body = logged(server, request_id)
    assert body is not None
    # The text the client assembled from the events, redacted.
    assert body["answer"].endswith(
        "You said: please mail [REDACTED:email] my [REDACTED:anthropic_key] and [REDACTED:card]"
    ), body["answer"]
    assert "data:" not in body["answer"] and body["answer_bytes"] == len(sent.encode())
    assert '"stream":true' in body["request"] and EMAIL not in body["request"]
    other_id, _ = chat_stream(server, outsider)
    # Written in order: once a later logged request is in, the outsider's would be too.
    later_id, _ = chat_stream(server, member, "later")
    assert logged(server, later_id) is not None
    assert server.admin("GET", f"/admin/requests/{other_id}/body").json()["logged"] is False
    off = server.admin("PATCH", "/admin/teams/logged-team", json={"log_bodies": False})
    assert off.status_code == 200
    audit = server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"][0]
    assert (audit["before"]["log_bodies"], audit["after"]["log_bodies"]) == (True, False)


def test_bodies_are_cut_at_the_cap_with_a_marker(server: Capgate) -> None:
    key = server.create_key("logs-big", log_bodies=True)
    text = "word " * 4000 + EMAIL
    answer = messages(server, key, text)
    assert answer.status_code == 200
    body = logged(server, answer.headers["x-capgate-request-id"])
    assert body is not None and body["truncated"] is True
    sent = len(answer.request.content)
    assert body["request_bytes"] == sent > CAP
    assert body["request"].endswith(f"\n[TRUNCATED: {sent} bytes in all, the first {CAP} kept]")
    assert len(body["request"].encode()) < CAP + 100
    assert body["answer"] is not None and body["answer_bytes"] == len(answer.content)


def test_only_callers_allowed_to_read_prompts_get_them(server: Capgate) -> None:
    key = server.create_key("logs-private", log_bodies=True)
    answer = messages(server, key, "private words")
    request_id = answer.headers["x-capgate-request-id"]
    assert logged(server, request_id) is not None
    path = f"/admin/requests/{request_id}/body"
    for headers in ({}, {"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        refused = httpx.get(server.url + path, headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
        assert "private words" not in refused.text
    client, _ = login(server.url)  # the dashboard's session may
    try:
        shown = client.get(path)
        assert shown.status_code == 200 and "private words" in shown.json()["request"]
    finally:
        client.close()
    # Named admins: owners and admins read prompts; viewers and team admins, who read the
    # ledger, do not (403).
    for name, role, allowed in (("ann", "admin", True), ("vic", "viewer", False),
                                ("tia", "team-admin", False)):  # fmt: skip
        spec = {"name": name, "role": role, "password": "a long enough password"}
        if role == "team-admin":
            spec["teams"] = ["logs-team"]
            server.admin("POST", "/admin/teams", json={"name": "logs-team"})
        assert server.admin("POST", "/admin/admins", json=spec).status_code == 201
        made = server.admin("POST", f"/admin/admins/{name}/tokens", json={})
        token = made.json()["token"]
        seen = httpx.get(
            server.url + path, headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert seen.status_code == (200 if allowed else 403), (role, seen.text)
        assert ("private words" in seen.text) is allowed
    assert may_read_bodies(Caller(ADMIN_ACTOR)) and may_read_bodies(Caller(SESSION_ACTOR))
    assert may_read_bodies(Caller("ann", role="admin"))
    assert not may_read_bodies(Caller("vic", role="viewer")) and not may_read_bodies(None)
    assert not may_read_bodies(Caller("tia", role="team-admin", team_list=("logs-team",)))


def test_no_body_or_prompt_reaches_the_server_log(server: Capgate) -> None:
    key = server.create_key("logs-quiet", log_bodies=True)
    answer = messages(server, key, "quiet canary-words-7731 " + EMAIL)
    assert logged(server, answer.headers["x-capgate-request-id"]) is not None
    text = log_with(server.db.parent / "server.log", answer.headers["x-capgate-request-id"])
    assert answer.headers["x-capgate-request-id"] in text  # the request is logged ...
    assert "canary-words-7731" not in text and EMAIL not in text  # ... never its body


def test_a_failed_write_is_counted_and_the_request_still_answered(
    upstream: Upstream, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_capgate(tmp_path, gateway_config(upstream), log=log)
    try:
        key = server.create_key("logs-broken", log_bodies=True)
        with sqlite3.connect(server.db) as conn:
            conn.execute("ALTER TABLE request_bodies RENAME TO request_bodies_away")
        answer = messages(server, key, "broken canary-words-9913")
        assert answer.status_code == 200 and "canary-words-9913" in answer.text
        request_id = answer.headers["x-capgate-request-id"]

        def counted() -> bool:
            scraped = httpx.get(server.url + "/metrics", timeout=10).text
            return 'capgate_body_log_writes_total{result="failed"} 1.0' in scraped

        assert wait_for(counted)
        text = log_with(log, f"body of request {request_id} not logged")
        assert f"body of request {request_id} not logged" in text
        assert "canary-words-9913" not in text
    finally:
        server.close()


def test_the_retention_job_deletes_old_bodies(upstream: Upstream, tmp_path: Path) -> None:
    config = gateway_config(upstream, server={"body_retention_days": 2})
    server = start_capgate(tmp_path, config)
    try:
        key = server.create_key("logs-old", log_bodies=True)
        ids = [messages(server, key, f"n{i}").headers["x-capgate-request-id"] for i in range(3)]
        assert all(logged(server, i) for i in ids)
        with sqlite3.connect(server.db) as conn:  # two of them written 3 days ago
            conn.execute(
                "UPDATE request_bodies SET created_at = created_at - 3 * 86400 "
                "WHERE request_id IN (?, ?)",
                ids[:2],
            )
    finally:
        server.close()
    # The job runs when a process starts, then hourly.
    again = start_capgate(tmp_path, config, db=server.db)
    try:
        gone = wait_for(lambda: len(rows(again)) == 1)
        assert gone and [row[0] for row in rows(again)] == [ids[2]]
        assert again.admin("GET", f"/admin/requests/{ids[0]}/body").json()["logged"] is False
        # The ledger keeps the requests: only the bodies go.
        assert {e["request_id"] for e in again.ledger(key="logs-old")} == set(ids)
    finally:
        again.close()


def test_a_streamed_tool_call_is_logged_as_its_call(server: Capgate) -> None:
    key = server.create_key("logs-tools", log_bodies=True)
    body = {
        "model": "claude-sonnet-4-6", "max_tokens": 300, "stream": True,
        "messages": [{"role": "user", "content": "mock:tool look it up"}],
        "tools": [{
            "name": "lookup", "description": "find",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        }],
    }  # fmt: skip
    with httpx.stream(
        "POST", server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    ) as response:
        assert response.status_code == 200
        sent = b"".join(response.iter_bytes())
        request_id = response.headers["x-capgate-request-id"]
    logged_body = logged(server, request_id)
    assert logged_body is not None and "event: content_block_delta" in sent.decode()
    assert logged_body["answer"].startswith("[tool_use lookup] {"), logged_body["answer"]
    assert logged_body["answer_bytes"] == len(sent) and '"tools"' in logged_body["request"]


@pytest.fixture
def dash(server: Capgate) -> Capgate:
    return server  # the browser fixtures' server


def test_the_dashboard_request_detail_shows_the_body_or_not_logged(
    page: Page, server: Capgate
) -> None:
    key = server.create_key("logs-dash", log_bodies=True)
    shown_id = messages(server, key, "dashboard canary " + EMAIL).headers["x-capgate-request-id"]
    plain = server.create_key("plain-dash")
    plain_id = messages(server, plain, "not kept").headers["x-capgate-request-id"]
    assert logged(server, shown_id) is not None
    log_in(page, server)
    go(page, server, f"requests/{shown_id}")
    request_body = page.locator("[data-field=request-body]")
    request_body.wait_for()
    assert "dashboard canary [REDACTED:email]" in request_body.inner_text()
    assert "[REDACTED:email]" in page.locator("[data-field=answer-body]").inner_text()
    assert EMAIL not in page.content()
    shot(page, "request-detail-body")
    go(page, server, f"requests/{plain_id}")
    page.locator("[data-state=not-logged]", has_text="Not logged").wait_for()
    go(page, server, "keys/logs-dash")
    page.locator("[data-field=log-bodies]").wait_for()


def test_the_cli_turns_a_keys_logging_on_and_off(server: Capgate) -> None:
    import json

    created = run_cli(server, "keys", "create", "logs-cli", "--log-bodies", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["log_bodies"] is True
    assert "logs bodies: yes" in run_cli(server, "keys", "show", "logs-cli").stdout
    off = run_cli(server, "keys", "update", "logs-cli", "--no-log-bodies")
    assert off.returncode == 0, off.stderr
    assert server.admin("GET", "/admin/keys/logs-cli").json()["log_bodies"] is False
    assert "logs bodies: no" in run_cli(server, "keys", "show", "logs-cli").stdout
