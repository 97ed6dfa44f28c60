"""Providers and routes defined at runtime (issue #18.3): two real capgate processes on one
database, a real mock upstream in this process (to see which API key reached it), the
admin API and the CLI. Their API keys are sealed with AES-GCM and never shown again."""

from __future__ import annotations

import asyncio
import base64
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

from capgate.mock.runner import MockUpstream
from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate

PROVIDERS = "/admin/routing/providers"
ROUTES = "/admin/routing/routes"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream() as server:
        yield server


@pytest.fixture
def secret_key() -> str:
    return new_key()


@pytest.fixture(params=["sqlite", "postgres"])
def pair(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path, secret_key: str
) -> Iterator[tuple[Capgate, Capgate, list[Path]]]:
    """Two processes on one SQLite file, or two nodes on one PostgreSQL database, with the
    same secret key; their logs. `first.db` is the SQLite file (unused on PostgreSQL)."""
    env = {"CAPGATE_SECRET_KEY": secret_key}
    args: list[tuple[str, ...]] = [(), ()]
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").new_database()
        request.node.pg_url = url
        args = [("--database-url", url)] * 2
        states = [{"CAPGATE_STATE_DIR": str(tmp_path / f"state{i}")} for i in (1, 2)]
    else:
        states = [{}, {}]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_capgate(tmp_path, gateway_config(upstream), env={**env, **states[0]},
                          log=logs[0], args=args[0])  # fmt: skip
    try:
        second = start_capgate(tmp_path, gateway_config(upstream), db=first.db,
                               env={**env, **states[1]}, log=logs[1], args=args[1])  # fmt: skip
        try:
            yield first, second, logs
        finally:
            second.close()
    finally:
        first.close()


def ask(server: Capgate, key: str, model: str = "house-model") -> httpx.Response:
    return httpx.post(
        server.url + "/v1/messages",
        json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key},
        timeout=30,
    )


def until(check: Any, seconds: float = 3.0) -> float:
    """Seconds until `check()` is truthy (fails after `seconds`)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - start


def stored_rows(db: Path, pg_url: str | None) -> list[tuple[Any, ...]]:
    """(secret, key_id, settings, fingerprint) of every runtime provider, as stored."""
    query = "SELECT secret, key_id, settings, fingerprint FROM runtime_providers"
    if pg_url is None:
        with sqlite3.connect(db) as conn:
            return [tuple(r) for r in conn.execute(query)]

    async def read() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(pg_url)
        try:
            return [
                (bytes(r[0]), r[1], r[2].encode(), r[3].encode()) for r in await conn.fetch(query)
            ]
        finally:
            await conn.close()

    return asyncio.run(read())


def test_a_runtime_provider_serves_in_the_other_process_and_its_key_never_shows(
    request: pytest.FixtureRequest, pair: tuple[Capgate, Capgate, list[Path]], mock: MockUpstream
) -> None:
    first, second, logs = pair
    key = first.create_key("rt-user")
    created = first.admin(
        "POST", PROVIDERS,
        json={"name": "rt-a", "type": "anthropic", "base_url": mock.url, "api_key": "rt-key-1"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["source"] == "runtime" and shown["api_key_fingerprint"].startswith("sha256:")
    route = first.admin(
        "POST", ROUTES, json={"match": "house-model", "targets": [{"provider": "rt-a"}]}
    )
    assert route.status_code == 201, route.text
    made, seen = time.monotonic(), len(mock.requests())

    # The OTHER process serves it within a second (its poll), with the stored key (until
    # then, the model goes to the default provider, not this mock).
    until(lambda: ask(second, key).status_code == 200 and len(mock.requests()) > seen)
    assert time.monotonic() - made < 3  # a poll a second; slack for a loaded machine
    assert mock.last_request().headers["x-api-key"] == "rt-key-1"
    # The entry is written just after the answer (settlements are grouped): wait for it.
    until(lambda: first.ledger(key="rt-user")[0]["provider"] == "rt-a")

    # A new key, set through the second process: the first sends it from then on.
    changed = second.admin("PATCH", PROVIDERS + "/rt-a", json={"api_key": "rt-key-2"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["api_key_fingerprint"] != shown["api_key_fingerprint"]
    until(lambda: ask(first, key).status_code == 200
          and mock.last_request().headers["x-api-key"] == "rt-key-2")  # fmt: skip
    # A PATCH without api_key keeps it.
    assert second.admin("PATCH", PROVIDERS + "/rt-a", json={"timeout_s": 60}).status_code == 200
    until(lambda: ask(first, key).status_code == 200)
    assert mock.last_request().headers["x-api-key"] == "rt-key-2"

    # Both keys were written to the database, neither in clear.
    pg_url = getattr(request.node, "pg_url", None)
    if pg_url is None:  # the SQLite file and its WAL, byte for byte
        files = [p for p in first.db.parent.glob(first.db.name + "*") if p.is_file()]
        stored = b"".join(p.read_bytes() for p in files)
        assert b"rt-key-1" not in stored and b"rt-key-2" not in stored
    rows = stored_rows(first.db, pg_url)
    ((secret, key_id, settings, shown),) = rows
    assert b"rt-key" not in bytes(secret) and b"rt-key" not in f"{settings}{shown}".encode()
    assert len(secret) == len("rt-key-2") + 16 and key_id  # ciphertext + GCM tag, key id

    # Removing a provider a route uses is refused, naming the route; then both go.
    refused = first.admin("DELETE", PROVIDERS + "/rt-a")
    assert refused.status_code == 409 and "house-model" in refused.json()["error"]["message"]
    assert first.admin("DELETE", ROUTES + "/house-model").status_code == 204
    assert first.admin("DELETE", PROVIDERS + "/rt-a").status_code == 204

    def served_elsewhere() -> bool:
        before = len(mock.requests())
        return ask(second, key).status_code == 200 and len(mock.requests()) == before

    until(served_elsewhere)
    until(lambda: first.ledger(key="rt-user")[0]["provider"] == "anthropic")  # the default

    # The key is in no answer, log line, or the database file in clear.
    answers = [
        first.admin("GET", PROVIDERS).text, second.admin("GET", PROVIDERS).text,
        first.admin("GET", "/admin/audit").text, first.admin("GET", "/admin/routing").text,
    ]  # fmt: skip
    for secret in ("rt-key-1", "rt-key-2"):
        assert all(secret not in text for text in answers)
        assert all(secret not in log.read_text() for log in logs)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return str(response.json()["error"]["message"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"base_url": "ftp://files.example.com/v1"}, "base_url"),
        ({"base_url": "https://user:pw@api.example.com"}, "base_url"),
        ({"base_url": "https://api.example.com/#x"}, "base_url"),
        ({"base_url": "api.example.com"}, "base_url"),
        ({"type": "gopher"}, "type"),
        ({"type": "claude-cli", "command": "/bin/sh"}, "command"),
        ({"type": "claude-cli"}, "type"),
        ({"headers": {"x-team": "a\r\nx-evil: 1"}}, "headers"),
        ({"headers": {"host": "evil.example.com"}}, "headers"),
        ({"api_key": "two\nlines"}, "api_key"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"name": "bad name"}, "name"),
    ],
)
def test_bad_providers_are_400_admin_json_and_change_nothing(
    capgate_with_key: Capgate, body: dict[str, Any], field: str
) -> None:
    server = capgate_with_key
    audit = server.admin("GET", "/admin/audit").json()["items"]
    full = {"name": "bad-one", "type": "openai", "base_url": "https://api.example.com/v1", **body}
    message = error_of(server.admin("POST", PROVIDERS, json=full), 400)
    assert message.startswith(field), message
    assert [p["name"] for p in server.admin("GET", PROVIDERS).json()["items"]] == [
        "anthropic", "openai"
    ]  # fmt: skip
    assert server.admin("GET", "/admin/audit").json()["items"] == audit


def test_bad_routes_and_config_entries_are_refused(capgate_with_key: Capgate) -> None:
    server = capgate_with_key
    missing = {"match": "x-*", "targets": [{"provider": "nowhere"}]}
    message = error_of(server.admin("POST", ROUTES, json=missing), 400)
    assert message == "targets[0].provider: no provider named 'nowhere'"
    empty = error_of(server.admin("POST", ROUTES, json={"match": "x-*", "targets": []}), 400)
    assert empty.startswith("targets")
    # The config file's entries are read-only, and their names cannot be reused.
    taken = {"name": "openai", "type": "openai", "base_url": "https://api.example.com/v1"}
    assert "config file" in error_of(server.admin("POST", PROVIDERS, json=taken), 409)
    patch = server.admin("PATCH", PROVIDERS + "/openai", json={"timeout_s": 5})
    assert "config file" in error_of(patch, 409)
    assert "config file" in error_of(server.admin("DELETE", PROVIDERS + "/anthropic"), 409)
    assert "config file" in error_of(server.admin("DELETE", ROUTES + "/claude-*"), 409)
    route = {"match": "gpt-*", "targets": [{"provider": "anthropic"}]}
    assert "config file" in error_of(server.admin("POST", ROUTES, json=route), 409)
    routes = server.admin("GET", ROUTES).json()["items"]
    assert [(r["match"], r["source"]) for r in routes] == [
        ("claude-*", "config"), ("gpt-*", "config"), ("o*", "config")
    ]  # fmt: skip


@pytest.fixture(scope="module")
def capgate_with_key(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Capgate]:
    server = start_capgate(
        tmp_path_factory.mktemp("rt"), gateway_config(upstream),
        env={"CAPGATE_SECRET_KEY": new_key()},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.close()


def test_without_a_secret_key_an_api_key_is_refused_never_stored(
    capgate: Capgate, mock: MockUpstream
) -> None:
    body = {"name": "nokey-a", "type": "mock", "base_url": mock.url, "api_key": "nk-secret"}
    message = error_of(capgate.admin("POST", PROVIDERS, json=body), 400)
    assert message.startswith("api_key:") and "CAPGATE_SECRET_KEY" in message
    assert b"nk-secret" not in capgate.db.read_bytes()
    del body["api_key"]
    made = capgate.admin("POST", PROVIDERS, json=body)
    assert made.status_code == 201 and made.json()["api_key_fingerprint"] is None
    assert capgate.admin("DELETE", PROVIDERS + "/nokey-a").status_code == 204


def add_two(server: Capgate, mock: MockUpstream) -> None:
    for name, secret in (("rt-one", "one-secret"), ("rt-two", "two-secret")):
        body = {"name": name, "type": "anthropic", "base_url": mock.url, "api_key": secret}
        assert server.admin("POST", PROVIDERS, json=body).status_code == 201
        route = {"match": f"{name}-model", "targets": [{"provider": name, "model": "house-model"}]}
        assert server.admin("POST", ROUTES, json=route).status_code == 201


def test_a_ciphertext_moved_to_another_provider_is_refused_not_sent(
    upstream: Upstream, mock: MockUpstream, tmp_path: Path, secret_key: str
) -> None:
    env = {"CAPGATE_SECRET_KEY": secret_key}
    server = start_capgate(tmp_path, gateway_config(upstream), env=env)
    add_two(server, mock)
    server.close()
    with sqlite3.connect(server.db) as conn:  # swap the two sealed keys
        rows = dict(
            (name, (secret, nonce))
            for name, secret, nonce in conn.execute(
                "SELECT name, secret, nonce FROM runtime_providers"
            )
        )
        for name, other in (("rt-one", "rt-two"), ("rt-two", "rt-one")):
            conn.execute(
                "UPDATE runtime_providers SET secret = ?, nonce = ? WHERE name = ?",
                (*rows[other], name),
            )
    server = start_capgate(tmp_path, gateway_config(upstream), db=server.db, env=env)
    try:
        listed = {p["name"]: p for p in server.admin("GET", PROVIDERS).json()["items"]}
        assert "does not decrypt" in listed["rt-one"]["problem"]
        assert "does not decrypt" in listed["rt-two"]["problem"]
        key = server.create_key("swap-user")
        seen = len(mock.requests())
        answer = ask(server, key, "rt-one-model")
        assert answer.status_code == 502 and "does not decrypt" in answer.text
        assert len(mock.requests()) == seen  # nothing sent, neither key
    finally:
        server.close()


def capgate_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capgate", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CAPGATE_ADMIN_KEY": ADMIN_KEY, **env},
    )  # fmt: skip


def test_rotate_key_reseals_every_secret_and_the_old_key_is_unused(
    upstream: Upstream, mock: MockUpstream, tmp_path: Path, secret_key: str
) -> None:
    server = start_capgate(
        tmp_path, gateway_config(upstream), env={"CAPGATE_SECRET_KEY": secret_key}
    )
    add_two(server, mock)
    server.close()
    new_file = tmp_path / "new.key"
    new_file.write_text(capgate_cli("secrets", "new-key", env={}).stdout)
    url = f"sqlite:///{server.db}"
    done = capgate_cli("secrets", "rotate-key", "--new-key-file", str(new_file),
                       "--database-url", url, env={"CAPGATE_SECRET_KEY": secret_key})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 provider API key(s)" in done.stdout
    with sqlite3.connect(server.db) as conn:
        key_ids = {r[0] for r in conn.execute("SELECT key_id FROM runtime_providers")}
    assert len(key_ids) == 1 and key_ids.pop() in done.stdout
    # With the old key the provider is unusable; with the new one it sends its own key.
    old = start_capgate(tmp_path, gateway_config(upstream), db=server.db,
                        env={"CAPGATE_SECRET_KEY": secret_key})  # fmt: skip
    try:
        listed = {p["name"]: p for p in old.admin("GET", PROVIDERS).json()["items"]}
        assert "sealed with key" in listed["rt-two"]["problem"]
    finally:
        old.close()
    new = start_capgate(tmp_path, gateway_config(upstream), db=server.db,
                        env={"CAPGATE_SECRET_KEY_FILE": str(new_file)})  # fmt: skip
    try:
        key = new.create_key("rot-user")
        assert ask(new, key, "rt-two-model").status_code == 200
        assert mock.last_request().headers["x-api-key"] == "two-secret"
        audit = new.admin("GET", "/admin/audit").json()["items"]
        assert any(a["action"] == "secret-key-rotate" for a in audit)
    finally:
        new.close()
    # Rotating again with the old key as "current" fails and changes nothing.
    again = capgate_cli("secrets", "rotate-key", "--new-key-file", str(new_file),
                        "--database-url", url, env={"CAPGATE_SECRET_KEY": new_key()})  # fmt: skip
    assert again.returncode == 1 and "nothing was changed" in again.stderr


def test_the_cli_adds_changes_and_removes_providers_and_routes(
    capgate_with_key: Capgate, mock: MockUpstream
) -> None:
    env = {"CAPGATE_URL": capgate_with_key.url, "CLI_UP_KEY": "cli-secret"}
    steps = [
        ("routing", "providers", "add", "cli-p", "--type", "mock", "--base-url", mock.url,
         "--api-key-env", "CLI_UP_KEY", "--set", "timeout_s=90"),
        ("routing", "routes", "add", "org/cli-*", "--target", "cli-p:house-model@2"),
        ("routing", "routes", "set", "org/cli-*", "--retries", "0"),
        ("routing", "providers", "set", "cli-p", "--remove-api-key"),
    ]  # fmt: skip
    for step in steps:
        done = capgate_cli(*step, env=env)
        assert done.returncode == 0, (step, done.stderr)
    listed = capgate_cli("routing", "providers", "list", "--json", env=env)
    item = next(p for p in __import__("json").loads(listed.stdout) if p["name"] == "cli-p")
    assert item["timeout_s"] == 90 and item["api_key_fingerprint"] is None
    route = capgate_with_key.admin("GET", ROUTES + "/org/cli-*").json()
    assert route["targets"] == [{"provider": "cli-p", "model": "house-model", "weight": 2}]
    assert route["retries"] == 0
    refused = capgate_cli("routing", "providers", "remove", "cli-p", env=env)
    assert refused.returncode != 0 and "org/cli-*" in refused.stderr
    for step in (("routes", "remove", "org/cli-*"), ("providers", "remove", "cli-p")):
        assert capgate_cli("routing", *step, env=env).returncode == 0


def test_a_stream_in_flight_finishes_on_the_provider_it_started_with(
    capgate_with_key: Capgate, mock: MockUpstream
) -> None:
    server = capgate_with_key
    body = {"name": "rt-live", "type": "mock", "base_url": mock.url, "api_key": "live-key-1"}
    assert server.admin("POST", PROVIDERS, json=body).status_code == 201
    route = {"match": "live-model", "targets": [{"provider": "rt-live", "model": "house-model"}]}
    assert server.admin("POST", ROUTES, json=route).status_code == 201
    key = server.create_key("live-user")
    request = {
        "model": "live-model", "max_tokens": 200, "stream": True,
        "messages": [{"role": "user", "content": "mock:words=30 mock:stream_delay_ms=60"}],
    }  # fmt: skip
    lines: list[str] = []
    with httpx.stream("POST", server.url + "/v1/messages", json=request,
                      headers={"x-api-key": key}, timeout=30) as answer:  # fmt: skip
        assert answer.status_code == 200
        for line in answer.iter_lines():
            lines.append(line)
            if line == "event: content_block_delta" and "edited" not in lines:
                # Mid-stream: the provider is replaced, the old one closed.
                edit = server.admin("PATCH", PROVIDERS + "/rt-live", json={"api_key": "live-key-2"})
                assert edit.status_code == 200
                lines.append("edited")
    assert "edited" in lines and "event: message_stop" in lines  # the stream ran to its end
    (entry,) = server.ledger(key="live-user")
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 30
    assert ask(server, key, "live-model").status_code == 200
    assert mock.last_request().headers["x-api-key"] == "live-key-2"
