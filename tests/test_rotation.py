"""Key rotation end to end (docs/security.md#key-rotation): real capgate servers on SQLite
and PostgreSQL (two processes or nodes on one store), the real mock upstream, the CLI,
and a real webhook receiver for the `rotation_due` alert."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, log_with, start_capgate
from test_alerts import Receiver, add_webhook, alerts_config, eventually, receiver, two_servers

__all__ = ["receiver"]  # the fixture, shared with test_alerts

ENGINES = ["sqlite", "postgres"]
ANTHROPIC = {"anthropic-version": "2023-06-01"}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _message(server: Capgate, key: str) -> httpx.Response:
    headers = {"x-api-key": key, **ANTHROPIC}
    return httpx.post(server.url + "/v1/messages", json=MESSAGES, headers=headers, timeout=30)


def _chat(server: Capgate, key: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=30)


def _rotate(server: Capgate, name: str, grace_s: float = 0) -> dict[str, Any]:
    response = server.admin("POST", f"/admin/keys/{name}/rotate", json={"grace_s": grace_s})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _refused_as_rotated(response: httpx.Response, dialect: str) -> str:
    """A 401 in the client's dialect that says the key was rotated (not "invalid")."""
    assert response.status_code == 401, response.text
    data = response.json()
    if dialect == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "authentication_error"
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}
        assert data["error"]["code"] == "invalid_api_key"  # OpenAI's shape of a 401
    message = str(data["error"]["message"])
    assert "rotated at" in message and "stopped working at" in message, message
    assert "Invalid" not in message
    return message


def _server(
    engine: str, upstream: Upstream, tmp_path: Path, request: pytest.FixtureRequest, **extra: Any
) -> Capgate:
    config = gateway_config(upstream, **extra)
    log = tmp_path / "server.log"  # its log lines, to look for secrets in
    if engine == "sqlite":
        return start_capgate(tmp_path, config, log=log)
    url = request.getfixturevalue("postgres").new_database()
    env = {"CAPGATE_STATE_DIR": str(tmp_path / "state")}
    return start_capgate(tmp_path, config, args=("--database-url", url), env=env, log=log)


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path) -> Iterator[Capgate]:
    started = _server(request.param, upstream, tmp_path, request)
    try:
        yield started
    finally:
        started.close()


def test_a_rotated_key_keeps_its_scope_and_the_old_secret_works_for_the_grace(
    server: Capgate, tmp_path: Path
) -> None:
    old = server.create_key("ci", [{"metric": "requests", "window": "day", "max": 10}])
    assert _message(server, old).status_code == 200
    rotated = _rotate(server, "ci", grace_s=2)
    new = rotated["key"]
    assert new != old and new.startswith("sk-cg-") and rotated["name"] == "ci"
    assert rotated["id"] == old[6:18] == new[6:18]  # the same key: same id
    assert rotated["rotated_at"] is not None and rotated["old_valid_until"] is not None
    # The new secret works at once, the old one during the grace, in both dialects.
    assert _message(server, new).status_code == 200
    assert _chat(server, new).status_code == 200
    assert _message(server, old).status_code == 200
    assert _chat(server, old).status_code == 200
    time.sleep(2.2)
    message = _refused_as_rotated(_message(server, old), "anthropic")
    assert rotated["old_valid_until"][:19] in message  # says when it stopped
    _refused_as_rotated(_chat(server, old), "openai")
    refused_me = httpx.get(server.url + "/v1/me", headers={"x-api-key": old}, timeout=30)
    _refused_as_rotated(refused_me, "openai")
    assert _message(server, new).status_code == 200
    # One key: its usage and ledger go on across the rotation.
    (usage,) = server.key_usage("ci")
    assert usage["used"] == 6
    ledger = [e for e in server.ledger(key="ci") if e["outcome"] == "ok"]
    assert len(ledger) == 6 and {e["key"] for e in ledger} == {"ci"}
    # GET shows the rotation, never a secret; the audit has `rotate`, no secret nor hash.
    shown = server.admin("GET", "/admin/keys/ci").json()
    assert shown["rotated_at"] == rotated["rotated_at"] and "key" not in shown
    text = json.dumps(shown) + server.admin("GET", "/admin/audit").text
    audit = server.admin("GET", "/admin/audit").json()["items"]
    assert [e["action"] for e in audit if e["target"] == "key:ci"] == ["rotate", "create"]
    for secret in (old, new, old[19:], new[19:]):
        assert secret not in text
    assert "hash" not in text and "retired" not in text
    logged = log_with(tmp_path / "server.log", "/admin/keys/{name}/rotate")
    assert "/admin/keys/{name}/rotate" in logged  # the admin action is logged, no secret
    for secret in (old, new, old[19:], new[19:]):
        assert secret not in logged


def test_grace_0_refuses_the_old_secret_at_once_and_a_new_rotation_ends_earlier_graces(
    server: Capgate,
) -> None:
    first = server.create_key("svc")
    second = _rotate(server, "svc", grace_s=3600)["key"]
    assert _message(server, first).status_code == 200  # in its hour of grace
    third = _rotate(server, "svc")["key"]  # grace 0 (a leak): ends every old secret
    _refused_as_rotated(_message(server, first), "anthropic")
    _refused_as_rotated(_chat(server, second), "openai")
    assert _message(server, third).status_code == 200
    # Without a body the grace is 0 too.
    response = server.admin("POST", "/admin/keys/svc/rotate")
    assert response.status_code == 200, response.text
    _refused_as_rotated(_message(server, third), "anthropic")
    assert _message(server, response.json()["key"]).status_code == 200
    # A secret of another key (or made up) is still just invalid.
    forged = third[:19] + "x" * 43
    refused = _message(server, forged)
    assert refused.status_code == 401 and "Invalid API key" in refused.text


def test_bad_rotations_are_refused_and_change_nothing(server: Capgate) -> None:
    key = server.create_key("steady")
    before = server.admin("GET", "/admin/audit").json()["items"]
    for body in ({"grace_s": -1}, {"grace_s": "1h"}, {"grace_s": 91 * 86400}, {"x": 1}):
        response = server.admin("POST", "/admin/keys/steady/rotate", json=body)
        assert response.status_code == 400, (body, response.text)
        assert "grace_s" in response.json()["error"]["message"] or "x" in response.text
    missing = server.admin("POST", "/admin/keys/nope/rotate", json={})
    assert missing.status_code == 404
    assert server.admin("POST", "/admin/keys/steady/revoke").status_code == 200
    revoked = server.admin("POST", "/admin/keys/steady/rotate", json={})
    assert revoked.status_code == 400 and "revoked" in revoked.json()["error"]["message"]
    after = server.admin("GET", "/admin/audit").json()["items"]
    assert [e["action"] for e in after][: len(after) - len(before)] == ["revoke"]
    refused = _message(server, key)  # revoked, as before: the secret did not change
    assert refused.status_code == 403 and "revoked" in refused.text, refused.text
    team = server.admin("POST", "/admin/teams", json={"name": "t", "rotate_every": "90d"})
    assert team.status_code == 400 and "only keys rotate" in team.text


@pytest.mark.parametrize("engine", ENGINES)
def test_another_process_sees_a_rotation_within_a_second(
    engine: str, upstream: Upstream, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # No background write (heartbeat, alerts) that would reload a cache by the way.
    quiet = gateway_config(upstream, server={"lease_seconds": 600, "alerts_enabled": False})
    first, second = two_servers(engine, quiet, tmp_path, request)
    try:
        old_a, old_b = first.create_key("a"), first.create_key("b")
        for key in (old_a, old_b):  # both in the second's cache now
            assert _message(second, key).status_code == 200
        # The new secret works at once: the second process reloads for a secret it does
        # not know, even right after a reload of its own (here for a made-up secret).
        assert _message(second, old_a[:19] + "x" * 43).status_code == 401
        new_a = _rotate(first, "a")["key"]
        assert _message(second, new_a).status_code == 200
        # The old one is refused within a second, with nothing else to wake the cache.
        new_b = _rotate(first, "b")["key"]
        time.sleep(1.1)
        _refused_as_rotated(_message(second, old_b), "anthropic")
        assert _message(second, new_b).status_code == 200
        ledger = second.ledger()
        assert sorted(e["key"] for e in ledger) == ["a", "a", "b", "b"]
        assert {e["outcome"] for e in ledger} == {"ok"}
    finally:
        first.close()
        second.close()


def test_the_cli_rotates_a_key(capgate: Capgate, key_name: str) -> None:
    old = capgate.create_key(key_name)
    env = {**os.environ, "CAPGATE_URL": capgate.url, "CAPGATE_ADMIN_KEY": ADMIN_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "keys", "rotate", key_name, "--grace", "1h"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    new = next(line for line in done.stdout.splitlines() if line.startswith("sk-cg-"))
    assert "The old secret works until" in done.stdout
    assert _message(capgate, new).status_code == 200
    assert _message(capgate, old).status_code == 200  # an hour of grace
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    valid_until = calendar.timegm(time.strptime(shown["old_valid_until"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 3500 < valid_until - time.time() < 3700
    bad = subprocess.run(
        [sys.executable, "-m", "capgate", "keys", "rotate", key_name, "--grace", "soon"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "--grace" in bad.stderr


def _backdate(engine: str, server: Capgate, url: str | None, name: str, days: int) -> None:
    """Make the key `name` look created `days` ago (as if the test had waited)."""
    sql = "UPDATE scopes SET created_at = created_at - {s} WHERE kind = 'key' AND name = '{n}'"
    statement = sql.format(s=days * 86400, n=name)
    if engine == "sqlite":
        with sqlite3.connect(server.db) as conn:
            conn.execute(statement)
        return
    assert url is not None

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_key_due_for_rotation_is_announced_once_across_processes_with_nothing_secret(
    engine: str,
    upstream: Upstream,
    receiver: Receiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres").new_database() if engine == "postgres" else None
    config = alerts_config(upstream)
    if url is None:
        first, second = two_servers(engine, config, tmp_path, request)
    else:
        nodes = [
            start_capgate(tmp_path, config, args=("--database-url", url),
                          env={"CAPGATE_STATE_DIR": str(tmp_path / f"state-{n}")})
            for n in range(2)
        ]  # fmt: skip
        first, second = nodes
    try:
        raw = first.create_key("due", rotate_every="90d")
        later = first.create_key("later", rotate_every="90d")
        shown = first.admin("GET", "/admin/keys/due").json()
        assert shown["rotate_every"] == "90d" and shown["rotation_due_at"] is not None
        add_webhook(first, "ops", receiver.url + "/hook")
        _backdate(engine, first, url, "due", 85)  # due in 5 days: inside the week's notice
        got = eventually(lambda: receiver.bodies("rotation_due"))
        assert len(got) == 1, got
        time.sleep(1.5)  # both processes ticked several times more (every 0.2 s)
        (alert,) = receiver.bodies("rotation_due")
        assert alert["scope"] == {"kind": "key", "name": "due"}
        assert alert["data"]["key"] == "due" and alert["data"]["prefix"] == raw[:18] + "-…"
        assert "is due for rotation at" in alert["text"]
        sent = b"".join(r.body for r in receiver.got).decode()
        for secret in (raw, raw[19:], later, later[19:]):
            assert secret not in sent
        # Rotating starts a new period: nothing more is announced for it.
        _rotate(second, "due", grace_s=60)
        time.sleep(1.0)
        assert len(receiver.bodies("rotation_due")) == 1
    finally:
        first.close()
        second.close()


def test_an_env_admin_key_rotates_with_the_previous_one_kept_until_a_time(
    upstream: Upstream, tmp_path: Path
) -> None:
    new = "sk-cg-admin-rotated-0123456789abcdefghijk"
    until = time.time() + 3
    env = {"CAPGATE_ADMIN_KEY": new, "CAPGATE_ADMIN_KEY_PREVIOUS": ADMIN_KEY,
           "CAPGATE_ADMIN_KEY_PREVIOUS_UNTIL": str(until)}  # fmt: skip
    server = start_capgate(tmp_path, gateway_config(upstream), env=env)

    def keys(admin_key: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {admin_key}"}
        return httpx.get(server.url + "/admin/keys", headers=headers, timeout=30)

    try:
        assert keys(new).status_code == 200
        assert keys(ADMIN_KEY).status_code == 200  # the previous key, in its grace
        wrong = keys("sk-cg-admin-wrong-0123456789abcdefghijklm")
        assert wrong.status_code == 401 and "invalid admin key" in wrong.text
        time.sleep(max(0.0, until - time.time()) + 0.2)
        refused = keys(ADMIN_KEY)
        assert refused.status_code == 401, refused.text
        message = refused.json()["error"]["message"]
        assert "was rotated" in message and "stopped working at" in message
        assert keys(new).status_code == 200
    finally:
        server.close()
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "CAPGATE_ADMIN_KEY": new, "CAPGATE_ADMIN_KEY_PREVIOUS": ADMIN_KEY},
    )  # fmt: skip
    assert done.returncode != 0
    assert "admin_key_previous needs admin_key and admin_key_previous_until" in done.stderr


def test_a_hook_machines_key_is_not_rotated_here(capgate: Capgate) -> None:
    user = f"rot-dev-{time.monotonic_ns()}"
    assert capgate.admin("POST", "/admin/users", json={"name": user}).status_code == 201
    code = capgate.admin("POST", "/admin/hook/codes", json={"user": user}).json()["code"]
    body = {"code": code, "hostname": "laptop", "os": "linux", "os_user": "dev",
            "agents": ["claude"], "hook_version": "1.0"}  # fmt: skip
    enrolled = httpx.post(capgate.url + "/hook/v1/enrol", json=body, timeout=30)
    assert enrolled.status_code == 200, enrolled.text
    machine = enrolled.json()["machine"]
    refused = capgate.admin("POST", f"/admin/keys/{machine}/rotate", json={})
    assert refused.status_code == 400 and "enrolling it again" in refused.text
    shown = capgate.admin("GET", f"/admin/keys/{machine}").json()
    assert shown["rotated_at"] is None
