"""The admin API over real HTTP: keys and their lifecycle, limits as clients see them,
admin authentication, the audit log, the ledger with its filters, paging and exports, and
usage sums, all against the shared capgate in front of the mock upstream."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import (
    ADMIN_KEY,
    Capgate,
    Upstream,
    gateway_config,
    kill_during_stream,
    start_capgate,
)

HAIKU, SONNET, GPT = "claude-haiku-4-5", "claude-sonnet-4-6", "gpt-5-mini"
# USD per million tokens, from the bundled table (src/capgate/data/pricing.yaml)
PRICES = {
    HAIKU: (Decimal("1"), Decimal("5")),
    SONNET: (Decimal("3"), Decimal("15")),
    GPT: (Decimal("0.25"), Decimal("2")),
}
NEVER = 2**62


def cost_of(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    price_in, price_out = PRICES[model]
    return (input_tokens * price_in + output_tokens * price_out) / 10**6


def admin_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}, data
    return str(data["error"]["message"])


def ensure(capgate: Capgate, plural: str, *names: str) -> None:
    """Teams, users or orgs that keys and teams may name (created once per server)."""
    for name in names:
        response = capgate.admin("POST", f"/admin/{plural}", json={"name": name})
        assert response.status_code in (201, 409), response.text


@pytest.fixture
def http(capgate: Capgate) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=capgate.url, timeout=30, trust_env=False) as client:
        yield client


def ask(
    http: httpx.Client,
    key: str,
    model: str = HAIKU,
    text: str = "hi mock:words=3",
    *,
    dialect: str = "anthropic",
    max_tokens: int = 50,
) -> httpx.Response:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
    path = "/v1/messages" if dialect == "anthropic" else "/v1/chat/completions"
    return http.post(path, json=body, headers={"authorization": f"Bearer {key}"})


def dialect_message(response: httpx.Response, dialect: str, status: int) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    if dialect == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    else:
        assert {"message", "type", "code"} <= set(data["error"])
    return str(data["error"]["message"])


def usage_by_metric(capgate: Capgate, name: str) -> dict[str, dict[str, Any]]:
    return {u["metric"]: u for u in capgate.key_usage(name)}


# -- create, read, list --------------------------------------------------------------------


def test_create_returns_raw_key_once_and_never_stores_it(capgate: Capgate, key_name: str) -> None:
    ensure(capgate, "teams", "t1")
    ensure(capgate, "users", "u1")
    response = capgate.admin(
        "POST",
        "/admin/keys",
        json={"name": key_name, "team": "t1", "user": "u1", "metadata": {"purpose": "test"}},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    raw = created["key"]
    assert raw.startswith("sk-cg-") and len(raw) > 40
    assert created["name"] == key_name and created["status"] == "active"
    assert created["team"] == "t1" and created["user"] == "u1"
    assert created["metadata"] == {"purpose": "test"}
    secret = raw[len("sk-cg-") + 13 :]
    assert len(secret) >= 32
    assert created["prefix"] and secret not in created["prefix"]

    shown = capgate.admin("GET", f"/admin/keys/{key_name}")
    listed = capgate.admin("GET", "/admin/keys")
    for response in (shown, listed):
        assert response.status_code == 200
        assert secret not in response.text and raw not in response.text
    assert "key" not in shown.json()
    item = next(k for k in listed.json()["items"] if k["name"] == key_name)
    assert "key" not in item and item["prefix"] == created["prefix"]

    # Neither the raw key nor its secret is anywhere in the database files (WAL included,
    # and the settlement journals and liveness locks in the folders beside it).
    parent = capgate.db.parent
    files = [
        p for p in parent.rglob("*")
        if p.is_file() and p.relative_to(parent).parts[0].startswith(capgate.db.name)
    ]  # fmt: skip
    assert capgate.db in files
    for path in files:
        data = path.read_bytes()
        assert raw.encode() not in data, path
        assert secret.encode() not in data, path


def test_duplicate_name_is_409(capgate: Capgate, key_name: str) -> None:
    capgate.create_key(key_name)
    response = capgate.admin("POST", "/admin/keys", json={"name": key_name})
    assert key_name in admin_error(response, 409)


def test_unknown_key_is_404_everywhere(capgate: Capgate, key_name: str) -> None:
    missing = f"{key_name}-missing"
    for method, path, body in [
        ("GET", f"/admin/keys/{missing}", None),
        ("PATCH", f"/admin/keys/{missing}", {"team": "x"}),
        ("DELETE", f"/admin/keys/{missing}", None),
        ("POST", f"/admin/keys/{missing}/pause", None),
        ("POST", f"/admin/keys/{missing}/resume", None),
        ("POST", f"/admin/keys/{missing}/revoke", None),
        ("POST", f"/admin/keys/{missing}/reset-usage", None),
    ]:
        response = capgate.admin(method, path, json=body)
        assert missing in admin_error(response, 404), (method, path)


def test_list_shows_every_key_with_usage(capgate: Capgate, key_name: str) -> None:
    names = [f"{key_name}-a", f"{key_name}-b"]
    for name in names:
        capgate.create_key(name, [{"metric": "requests", "window": "day", "max": 3}])
    response = capgate.admin("GET", "/admin/keys")
    assert response.status_code == 200
    items = {k["name"]: k for k in response.json()["items"]}
    for name in names:
        assert items[name]["status"] == "active"
        assert items[name]["limits"] == [{"metric": "requests", "window": "day", "max": 3}]
        assert [u["used"] for u in items[name]["usage"]] == [0]


def test_show_reports_usage_per_limit(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    limits = [
        {"metric": "requests", "window": "day", "max": 10},
        {"metric": "cost_usd", "window": "day", "max": "5"},
        {"metric": "tokens", "window": "hour", "max": 100_000},
        {"metric": "output_tokens", "window": "total", "max": 1000, "model": "claude-haiku-*"},
    ]
    key = capgate.create_key(key_name, limits)
    first = ask(http, key, HAIKU, "count mock:words=5")
    second = ask(http, key, SONNET, "count mock:words=7")
    assert first.status_code == second.status_code == 200
    u1, u2 = first.json()["usage"], second.json()["usage"]
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["limits"] == limits
    usage = shown["usage"]
    assert [u["metric"] for u in usage] == ["requests", "cost_usd", "tokens", "output_tokens"]
    requests, cost, tokens, haiku_out = usage
    assert (requests["used"], requests["reserved"], requests["remaining"]) == (2, 0, 8)
    expected = cost_of(HAIKU, u1["input_tokens"], 5) + cost_of(SONNET, u2["input_tokens"], 7)
    assert Decimal(cost["used"]) == expected and cost["reserved"] == "0"
    assert Decimal(cost["remaining"]) == Decimal(5) - expected
    assert cost["max"] == "5"
    assert tokens["used"] == u1["input_tokens"] + 5 + u2["input_tokens"] + 7
    # The haiku-only limit counts the haiku request only, and never resets.
    assert (haiku_out["used"], haiku_out["remaining"], haiku_out["model"]) == (
        5,
        995,
        "claude-haiku-*",
    )
    assert haiku_out["resets_at"] >= NEVER
    now = time.time()
    assert now < requests["resets_at"] <= now + 86_400
    assert now < tokens["resets_at"] <= now + 3_600


# -- update --------------------------------------------------------------------------------


def test_patch_fields_and_clear_with_null(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    ensure(capgate, "teams", "t1", "t2")
    ensure(capgate, "users", "u1", "u2")
    key = capgate.create_key(key_name, team="t1", user="u1")
    patch = {
        "limits": [{"metric": "requests", "window": "day", "max": 7}],
        "models": ["claude-haiku-*"],
        "team": "t2",
        "user": "u2",
        "expires_at": "2099-01-02T03:04:05Z",
    }
    response = capgate.admin("PATCH", f"/admin/keys/{key_name}", json=patch)
    assert response.status_code == 200, response.text
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    for data in (response.json(), shown):
        assert data["limits"] == patch["limits"]
        assert data["models"] == ["claude-haiku-*"]
        assert (data["team"], data["user"]) == ("t2", "u2")
        assert data["expires_at"].startswith("2099-01-02T03:04:05")
    # The new settings apply to the next request at once.
    assert ask(http, key, SONNET).status_code == 403
    assert ask(http, key, HAIKU).status_code == 200
    assert capgate.ledger(key=key_name, outcome="ok")[0]["team"] == "t2"

    # A partial patch leaves other fields alone; null clears team and expiry.
    response = capgate.admin(
        "PATCH", f"/admin/keys/{key_name}", json={"team": None, "expires_at": None}
    )
    assert response.status_code == 200, response.text
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["team"] is None and shown["expires_at"] is None
    assert shown["user"] == "u2" and shown["models"] == ["claude-haiku-*"]
    assert shown["limits"] == patch["limits"]
    # An empty model list means every model again.
    capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"models": []})
    assert ask(http, key, SONNET).status_code == 200


BAD_BODIES = [
    pytest.param(
        {"limits": [{"metric": "bogus", "window": "day", "max": 1}]},
        ("limits.0", "metric"),
        id="metric",
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "fortnight", "max": 1}]},
        ("limits.0", "window"),
        id="window",
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "day", "max": -1}]},
        ("limits.0", "negative"),
        id="negative",
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "day", "max": 1.5}]},
        ("limits.0", "whole number"),
        id="fraction",
    ),
    pytest.param(
        {"limits": [{"metric": "cost_usd", "window": "day", "max": "0.0000000001"}]},
        ("limits.0", "nano"),
        id="sub-nano",
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "day"}]}, ("limits.0.max",), id="missing-max"
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "day", "max": 1, "windw": 2}]},
        ("limits.0.windw",),
        id="extra-limit-field",
    ),
    pytest.param(
        {"limits": [{"metric": "requests", "window": "day", "max": 1, "model": ""}]},
        ("limits.0", "model"),
        id="empty-model-glob",
    ),
    pytest.param({"limitz": []}, ("limitz",), id="unknown-field"),
    pytest.param({"timezone": "Mars/Olympus"}, ("timezone",), id="timezone"),
    pytest.param({"expires_at": "not a date"}, ("expires_at",), id="expires"),
    pytest.param({"models": "claude-*"}, ("models",), id="models-not-list"),
]
BUG_BAD_MAX = (
    "bug: src/capgate/core/limits.py:109 Limit.from_json calls Decimal(str(max)) for count "
    "metrics without catching decimal.InvalidOperation/OverflowError (not ValueError), so "
    "pydantic does not turn them into a ValidationError and the admin API answers 500 "
    "instead of 400 naming limits.0"
)


@pytest.mark.parametrize(("patch", "words"), BAD_BODIES)
def test_bad_fields_are_400_naming_the_field(
    capgate: Capgate, key_name: str, patch: dict[str, Any], words: tuple[str, ...]
) -> None:
    capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 5}])
    created = capgate.admin("POST", "/admin/keys", json={"name": f"{key_name}-new", **patch})
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json=patch)
    for response in (created, patched):
        message = admin_error(response, 400)
        for word in words:
            assert word in message, message
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["limits"] == [{"metric": "requests", "window": "day", "max": 5}]
    assert capgate.admin("GET", f"/admin/keys/{key_name}-new").status_code == 404


@pytest.mark.parametrize("max_", ["abc", "inf", "1.2.3"])
def test_non_numeric_count_max_is_400(capgate: Capgate, key_name: str, max_: str) -> None:
    response = capgate.admin(
        "POST",
        "/admin/keys",
        json={"name": key_name, "limits": [{"metric": "requests", "window": "day", "max": max_}]},
    )
    assert "limits.0" in admin_error(response, 400)


def test_boolean_max_is_400(capgate: Capgate, key_name: str) -> None:
    response = capgate.admin(
        "POST",
        "/admin/keys",
        json={"name": key_name, "limits": [{"metric": "requests", "window": "day", "max": True}]},
    )
    assert "limits.0" in admin_error(response, 400)


def test_bad_key_names_and_bodies(capgate: Capgate, key_name: str) -> None:
    for name in ("", "a/b", " lead", "x" * 201):
        response = capgate.admin("POST", "/admin/keys", json={"name": name})
        assert "name" in admin_error(response, 400)
    assert "name" in admin_error(capgate.admin("POST", "/admin/keys", json={}), 400)
    response = capgate.admin(
        "POST", "/admin/keys", content=b"{oops", headers={"content-type": "application/json"}
    )
    admin_error(response, 400)
    response = capgate.admin(
        "POST", "/admin/keys", content=b"name=x", headers={"content-type": "text/plain"}
    )
    admin_error(response, 400)


# -- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_pause_resume(capgate: Capgate, key_name: str, http: httpx.Client, dialect: str) -> None:
    model = HAIKU if dialect == "anthropic" else GPT
    key = capgate.create_key(key_name)
    assert ask(http, key, model, dialect=dialect).status_code == 200
    response = capgate.admin("POST", f"/admin/keys/{key_name}/pause")
    assert response.status_code == 200 and response.json()["status"] == "paused"
    refused = ask(http, key, model, dialect=dialect)
    message = dialect_message(refused, dialect, 403)
    assert "paused" in message and key_name in message
    assert refused.headers["x-capgate-refusal"] == "paused"
    if dialect == "anthropic":
        assert refused.json()["error"]["type"] == "permission_error"
    response = capgate.admin("POST", f"/admin/keys/{key_name}/resume")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert ask(http, key, model, dialect=dialect).status_code == 200
    outcomes = [(e["outcome"], e["status"]) for e in reversed(capgate.ledger(key=key_name))]
    assert outcomes == [("ok", 200), ("refused", 403), ("ok", 200)]
    refusal = capgate.ledger(key=key_name, outcome="refused")[0]
    assert refusal["cost_usd"] == "0" and refusal["refusal"]["code"] == "paused"
    assert refusal["refusal"]["name"] == key_name


def test_sdks_raise_permission_denied_when_paused(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    capgate.admin("POST", f"/admin/keys/{key_name}/pause")
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=0) as claude,
        pytest.raises(anthropic.PermissionDeniedError, match="paused"),
    ):
        claude.messages.create(
            model=HAIKU, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with (
        openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=0) as gpt,
        pytest.raises(openai.PermissionDeniedError, match="paused"),
    ):
        gpt.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])


def test_revoke_is_final(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    key = capgate.create_key(key_name)
    response = capgate.admin("POST", f"/admin/keys/{key_name}/revoke")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    for dialect, model in (("anthropic", HAIKU), ("openai", GPT)):
        message = dialect_message(ask(http, key, model, dialect=dialect), dialect, 403)
        assert "revoked" in message
    for action in ("resume", "pause"):
        response = capgate.admin("POST", f"/admin/keys/{key_name}/{action}")
        assert "revoked" in admin_error(response, 400)
    assert capgate.admin("GET", f"/admin/keys/{key_name}").json()["status"] == "revoked"
    assert dialect_message(ask(http, key), "anthropic", 403)


def test_delete_removes_authentication(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    key = capgate.create_key(key_name)
    assert ask(http, key).status_code == 200
    response = capgate.admin("DELETE", f"/admin/keys/{key_name}")
    assert response.status_code == 204 and response.content == b""
    for dialect, model in (("anthropic", HAIKU), ("openai", GPT)):
        dialect_message(ask(http, key, model, dialect=dialect), dialect, 401)
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    assert len(capgate.ledger(key=key_name)) == 1  # the ledger keeps its entries
    # The name is free again, and the new key is a different secret.
    new = capgate.create_key(key_name)
    assert new != key
    assert ask(http, new).status_code == 200
    assert ask(http, key).status_code == 401


def test_reset_usage_clears_settled_usage(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    limits = [
        {"metric": "requests", "window": "day", "max": 1},
        {"metric": "cost_usd", "window": "month", "max": "1"},
    ]
    key = capgate.create_key(key_name, limits)
    assert ask(http, key).status_code == 200
    assert ask(http, key).status_code == 402
    usage = usage_by_metric(capgate, key_name)
    assert usage["requests"]["used"] == 1 and Decimal(usage["cost_usd"]["used"]) > 0
    response = capgate.admin("POST", f"/admin/keys/{key_name}/reset-usage")
    assert response.status_code == 200, response.text
    for shown in (response.json()["usage"], capgate.key_usage(key_name)):
        by = {u["metric"]: u for u in shown}
        assert by["requests"]["used"] == 0 and by["cost_usd"]["used"] == "0"
        assert by["requests"]["remaining"] == 1 and by["cost_usd"]["remaining"] == "1"
    assert ask(http, key).status_code == 200
    # The ledger is history: reset does not erase it.
    assert len(capgate.ledger(key=key_name)) == 3


@pytest.mark.parametrize("how", ["create", "patch"])
def test_expired_key_refused(capgate: Capgate, key_name: str, http: httpx.Client, how: str) -> None:
    if how == "create":
        key = capgate.create_key(key_name, expires_at=time.time() + 1)
    else:
        key = capgate.create_key(key_name, expires_at=time.time() + 3600)
        assert ask(http, key).status_code == 200
        patched = capgate.admin(
            "PATCH", f"/admin/keys/{key_name}", json={"expires_at": time.time() + 1}
        )
        assert patched.status_code == 200
    time.sleep(1.2)
    for dialect, model in (("anthropic", HAIKU), ("openai", GPT)):
        message = dialect_message(ask(http, key, model, dialect=dialect), dialect, 403)
        assert "expired" in message and key_name in message
    refused = capgate.ledger(key=key_name, outcome="refused")
    assert len(refused) == 2 and {e["refusal"]["code"] for e in refused} == {"expired"}


def test_model_restriction(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    key = capgate.create_key(key_name, models=["claude-haiku-*"])
    assert ask(http, key, HAIKU).status_code == 200
    message = dialect_message(ask(http, key, SONNET), "anthropic", 403)
    assert SONNET in message and "not allowed" in message and "claude-haiku-*" in message
    message = dialect_message(ask(http, key, GPT, dialect="openai"), "openai", 403)
    assert GPT in message
    refused = capgate.ledger(key=key_name, outcome="refused")
    assert {e["refusal"]["code"] for e in refused} == {"model_not_allowed"}
    assert all(e["status"] == 403 and e["cost_usd"] == "0" for e in refused)


# -- admin authentication ------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/{name}"),
    ("PATCH", "/admin/keys/{name}"),
    ("DELETE", "/admin/keys/{name}"),
    ("POST", "/admin/keys/{name}/pause"),
    ("POST", "/admin/keys/{name}/resume"),
    ("POST", "/admin/keys/{name}/revoke"),
    ("POST", "/admin/keys/{name}/reset-usage"),
    ("GET", "/admin/requests"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/audit"),
]


def test_admin_routes_need_the_admin_key(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    virtual = capgate.create_key(key_name)
    wrong_headers: list[dict[str, str]] = [
        {},
        {"authorization": "Bearer sk-cg-admin-wrong"},
        {"authorization": f"Bearer {ADMIN_KEY}x"},
        {"authorization": f"Bearer {ADMIN_KEY[:-1]}"},
        {"authorization": f"Basic {ADMIN_KEY}"},
        {"authorization": f"Bearer {virtual}"},  # a virtual key is not an admin key
        {"x-api-key": virtual},
    ]
    # From addresses of their own: wrong admin keys are throttled per address
    # (test_security.py), and the shared server's other tests come from 127.0.0.1.
    for n, (method, template) in enumerate(ADMIN_ROUTES):
        path = template.format(name=key_name)
        source = httpx.HTTPTransport(local_address=f"127.0.1.{n + 1}")
        with httpx.Client(base_url=capgate.url, transport=source, timeout=30) as guesser:
            for headers in wrong_headers:
                body = (
                    {"name": f"{key_name}-sneaky", "team": "evil"}
                    if method in ("POST", "PATCH")
                    else None
                )
                response = guesser.request(method, path, headers=headers, json=body)
                message = admin_error(response, 401)
                assert "admin" in message.lower(), (method, path, headers)
    # Nothing changed.
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["status"] == "active" and shown["team"] is None
    assert capgate.admin("GET", f"/admin/keys/{key_name}-sneaky").status_code == 404
    # x-api-key with the real admin key works too (any presented key is checked).
    ok = http.get("/admin/keys", headers={"x-api-key": ADMIN_KEY})
    assert ok.status_code == 200


def test_audit_log_records_changes(capgate: Capgate, key_name: str) -> None:
    ensure(capgate, "teams", "t1", "t2")
    raw = capgate.create_key(key_name, team="t1")
    capgate.admin(
        "PATCH",
        f"/admin/keys/{key_name}",
        json={"team": "t2", "limits": [{"metric": "requests", "window": "day", "max": 3}]},
    )
    capgate.admin("POST", f"/admin/keys/{key_name}/pause")
    capgate.admin("POST", f"/admin/keys/{key_name}/resume")
    capgate.admin("POST", f"/admin/keys/{key_name}/reset-usage")
    capgate.admin("DELETE", f"/admin/keys/{key_name}")
    response = capgate.admin("GET", "/admin/audit", params={"limit": 1000})
    assert response.status_code == 200
    entries = [e for e in response.json()["items"] if e["target"] == f"key:{key_name}"]
    entries.reverse()  # newest first on the wire
    assert [e["action"] for e in entries] == [
        "create",
        "update",
        "pause",
        "resume",
        "reset-usage",
        "delete",
    ]
    assert all(e["actor"] == "admin" and e["created_at"] for e in entries)
    create, update, pause, resume, _, delete = entries
    assert create["before"] is None and create["after"]["team"] == "t1"
    assert update["before"]["team"] == "t1" and update["after"]["team"] == "t2"
    assert update["before"]["limits"] == [] and update["after"]["limits"][0]["max"] == 3
    assert pause["before"]["status"] == "active" and pause["after"]["status"] == "paused"
    assert resume["before"]["status"] == "paused" and resume["after"]["status"] == "active"
    assert delete["before"]["name"] == key_name and delete["after"] is None
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids)
    # No secret in the audit log either.
    dumped = json.dumps(response.json())
    assert raw not in dumped and raw[len("sk-cg-") + 13 :] not in dumped


def test_openapi_document(capgate: Capgate) -> None:
    response = capgate.admin("GET", "/admin/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/admin/keys"])
    assert {"get", "patch", "delete"} <= set(paths["/admin/keys/{name}"])
    for path in ("/admin/requests", "/admin/usage", "/admin/audit", "/admin/keys/{name}/pause"):
        assert path in paths
    schemas = doc["components"]["schemas"]
    ref = paths["/admin/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"
    ]
    assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    assert "name" in schemas[ref.rsplit("/", 1)[1]]["properties"]
    assert doc["components"]["securitySchemes"]
    for item in paths.values():
        for op in item.values():
            assert "responses" in op


# -- limits as clients see them ------------------------------------------------------------


def test_daily_request_limit_is_402(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 2}])
    assert ask(http, key).status_code == 200
    assert ask(http, key, GPT, dialect="openai").status_code == 200
    for dialect, model in (("anthropic", HAIKU), ("openai", GPT)):
        refused = ask(http, key, model, dialect=dialect)
        message = dialect_message(refused, dialect, 402)
        assert f'Daily request limit of key "{key_name}"' in message
        assert "2 of 2" in message and "resets" in message
        assert refused.headers["x-should-retry"] == "false"
        assert "retry-after" not in refused.headers
        if dialect == "anthropic":
            assert refused.json()["error"]["type"] == "billing_error"
        else:
            assert refused.json()["error"]["code"] == "budget_exceeded"
    refusals = capgate.ledger(key=key_name, outcome="refused")
    assert len(refusals) == 2
    for entry in refusals:
        assert entry["status"] == 402 and entry["cost_usd"] == "0"
        assert entry["input_tokens"] == entry["output_tokens"] == 0
        refusal = entry["refusal"]
        assert refusal["code"] == "limit_exceeded" and refusal["name"] == key_name
        assert refusal["limit"] == {"metric": "requests", "window": "day", "max": 2}
        assert refusal["used"] == 2 and refusal["resets_at"] > time.time()
    usage = usage_by_metric(capgate, key_name)["requests"]
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (2, 0, 0)


def test_sdks_on_budget_refusal(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=3) as claude,
        pytest.raises(anthropic.APIStatusError) as a_err,
    ):
        claude.messages.create(
            model=HAIKU, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert a_err.value.status_code == 402
    assert "Daily request limit" in str(a_err.value)
    with (
        openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=3) as gpt,
        pytest.raises(openai.APIStatusError) as o_err,
    ):
        gpt.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}])
    assert o_err.value.status_code == 402
    # x-should-retry: false, so neither SDK retried despite max_retries=3.
    assert len(capgate.ledger(key=key_name)) == 2


def _not_near_minute_end() -> None:
    """A per-minute limit resets on the minute: keep both requests inside one minute."""
    left = 60 - time.time() % 60
    if left < 3:
        time.sleep(left + 0.1)


def test_per_minute_limit_is_429_with_retry_after(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "minute", "max": 1}])
    _not_near_minute_end()
    assert ask(http, key).status_code == 200
    for dialect, model in (("anthropic", HAIKU), ("openai", GPT)):
        refused = ask(http, key, model, dialect=dialect)
        message = dialect_message(refused, dialect, 429)
        assert "Per-minute request limit" in message and key_name in message
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert refused.headers.get("x-should-retry") != "false"
    entry = capgate.ledger(key=key_name, outcome="refused")[0]
    assert entry["status"] == 429 and entry["refusal"]["limit"]["window"] == "minute"


def test_cost_limit_refuses_worst_case(capgate: Capgate, key_name: str, http: httpx.Client) -> None:
    """A budget too small for the request's worst case refuses it before forwarding."""
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.01"}])
    refused = ask(http, key, SONNET, max_tokens=100_000)  # 100k x $15/M = $1.50 worst case
    message = dialect_message(refused, "anthropic", 402)
    assert "Daily cost limit" in message and "would be exceeded" in message
    assert "max_tokens" in message
    assert ask(http, key, HAIKU, max_tokens=20).status_code == 200
    usage = usage_by_metric(capgate, key_name)["cost_usd"]
    assert Decimal(usage["used"]) > 0 and usage["reserved"] == "0"


# -- the ledger: filters, paging, exports, usage -------------------------------------------


@dataclass
class LedgerSetup:
    name: str
    t0: float
    mid: float
    t1: float
    entries: list[dict[str, Any]]  # newest first


@pytest.fixture(scope="module")
def ledger_setup(capgate: Capgate) -> LedgerSetup:
    """Seven entries on one key: ok on three models, an upstream error and a refusal."""
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    key = capgate.create_key(name, [{"metric": "requests", "window": "day", "max": 6}])
    with httpx.Client(base_url=capgate.url, timeout=30, trust_env=False) as http:
        t0 = time.time()
        time.sleep(0.01)
        statuses = [
            ask(http, key, HAIKU, "a mock:words=4").status_code,
            ask(http, key, HAIKU, "b mock:words=6").status_code,
            ask(http, key, SONNET, "c mock:words=9").status_code,
        ]
        time.sleep(0.02)
        mid = time.time()
        time.sleep(0.02)
        statuses += [
            ask(http, key, HAIKU, "d mock:status=500").status_code,
            ask(http, key, GPT, "e mock:words=11", dialect="openai").status_code,
            ask(http, key, SONNET, "f mock:words=2").status_code,
            ask(http, key, SONNET, "g").status_code,
        ]
        time.sleep(0.01)
        t1 = time.time()
    assert statuses == [200, 200, 200, 500, 200, 200, 402]
    entries = capgate.ledger(key=name)
    assert len(entries) == 7
    return LedgerSetup(name, t0, mid, t1, entries)


def test_ledger_entries_are_exact(ledger_setup: LedgerSetup) -> None:
    entries = list(reversed(ledger_setup.entries))
    assert [e["model"] for e in entries] == [HAIKU, HAIKU, SONNET, HAIKU, GPT, SONNET, SONNET]
    assert [e["output_tokens"] for e in entries] == [4, 6, 9, 0, 11, 2, 0]
    assert [e["outcome"] for e in entries] == ["ok"] * 3 + ["error", "ok", "ok", "refused"]
    for entry in entries:
        if entry["outcome"] == "ok":
            expected = cost_of(entry["model"], entry["input_tokens"], entry["output_tokens"])
            assert Decimal(entry["cost_usd"]) == expected
        else:
            assert entry["cost_usd"] == "0"
    assert [e["provider"] for e in entries][4] == "openai"
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == 7
    assert len({e["request_id"] for e in entries}) == 7


def test_ledger_filters(capgate: Capgate, ledger_setup: LedgerSetup) -> None:
    name, everything = ledger_setup.name, ledger_setup.entries

    def ids(**params: Any) -> list[int]:
        return [e["id"] for e in capgate.ledger(key=name, **params)]

    def expect(pred: Any) -> list[int]:
        return [e["id"] for e in everything if pred(e)]

    assert ids(model=HAIKU) == expect(lambda e: e["model"] == HAIKU) and len(ids(model=HAIKU)) == 3
    assert ids(model=GPT) == expect(lambda e: e["model"] == GPT)
    assert ids(outcome="error") == expect(lambda e: e["outcome"] == "error") != []
    assert ids(outcome="refused") == expect(lambda e: e["outcome"] == "refused") != []
    assert ids(status=500) == ids(outcome="error")
    assert ids(status=402) == ids(outcome="refused")
    assert len(ids(status=200)) == 5
    assert ids(model=SONNET, outcome="ok") == expect(
        lambda e: e["model"] == SONNET and e["outcome"] == "ok"
    )
    assert ids(provider="openai") == expect(lambda e: e["provider"] == "openai")
    # Time windows: Unix seconds and ISO 8601 both work; `to` is exclusive.
    assert len(ids(**{"from": ledger_setup.mid})) == 4
    assert len(ids(to=ledger_setup.mid)) == 3
    iso_mid = datetime.fromtimestamp(ledger_setup.mid, UTC).isoformat()
    assert ids(**{"from": iso_mid}) == ids(**{"from": ledger_setup.mid})
    assert ids(**{"from": ledger_setup.t0, "to": ledger_setup.t1}) == [e["id"] for e in everything]
    assert ids(**{"from": ledger_setup.t1}) == []
    # Filters on other keys do not leak entries in.
    assert capgate.ledger(key=f"{name}-nobody") == []
    response = capgate.admin("GET", "/admin/requests", params={"key": name, "status": "abc"})
    assert "status" in admin_error(response, 400)
    response = capgate.admin("GET", "/admin/requests", params={"key": name, "from": "yesterday"})
    assert "from" in admin_error(response, 400)
    response = capgate.admin("GET", "/admin/requests", params={"format": "xml"})
    assert "format" in admin_error(response, 400)


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 8])
def test_ledger_paging_returns_every_entry_once(
    capgate: Capgate, ledger_setup: LedgerSetup, page_size: int
) -> None:
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"key": ledger_setup.name, "limit": page_size}
        if cursor is not None:
            params["cursor"] = cursor
        response = capgate.admin("GET", "/admin/requests", params=params)
        assert response.status_code == 200
        page = response.json()
        assert 0 < len(page["items"]) <= page_size
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    assert seen == [e["id"] for e in ledger_setup.entries]  # all, once, newest first
    assert pages == -(-7 // page_size)


def test_ledger_csv_export(capgate: Capgate, ledger_setup: LedgerSetup) -> None:
    response = capgate.admin(
        "GET", "/admin/requests", params={"key": ledger_setup.name, "format": "csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers.get("content-disposition", "")
    lines = response.text.splitlines()
    assert len(lines) == 1 + 7
    rows = list(csv.DictReader(io.StringIO(response.text)))
    header = next(csv.reader(io.StringIO(response.text)))
    for column in (
        "request_id",
        "key",
        "model",
        "status",
        "outcome",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "refusal",
        "error",
    ):
        assert column in header
    by_id = {e["request_id"]: e for e in ledger_setup.entries}
    assert [r["request_id"] for r in rows] == [e["request_id"] for e in ledger_setup.entries]
    for row in rows:
        entry = by_id[row["request_id"]]
        assert row["cost_usd"] == entry["cost_usd"]  # the same exact decimal string
        assert "e" not in row["cost_usd"].lower()
        assert int(row["status"]) == entry["status"] and row["outcome"] == entry["outcome"]
        assert (
            int(row["output_tokens"]) == entry["output_tokens"] and row["key"] == ledger_setup.name
        )
        if entry["refusal"]:
            assert row["refusal"] == entry["refusal"]["message"]
    total = sum(Decimal(r["cost_usd"]) for r in rows)
    assert total == sum(Decimal(e["cost_usd"]) for e in ledger_setup.entries) > 0
    # Paged exports say where to continue.
    paged = capgate.admin(
        "GET", "/admin/requests", params={"key": ledger_setup.name, "format": "csv", "limit": 5}
    )
    assert len(paged.text.splitlines()) == 6
    assert paged.headers["x-next-cursor"] == str(ledger_setup.entries[4]["id"])


def test_ledger_ndjson_export(capgate: Capgate, ledger_setup: LedgerSetup) -> None:
    response = capgate.admin(
        "GET", "/admin/requests", params={"key": ledger_setup.name, "format": "ndjson"}
    )
    assert response.status_code == 200
    assert "ndjson" in response.headers["content-type"]
    lines = response.text.splitlines()
    assert len(lines) == 7
    assert [json.loads(line) for line in lines] == ledger_setup.entries


def _sums(entries: list[dict[str, Any]], group: Any) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {
            "requests": 0,
            "refused": 0,
            "errors": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": Decimal(0),
        }
    )
    for e in entries:
        row = out[group(e)]
        row["requests"] += 1
        row["refused"] += e["outcome"] == "refused"
        row["errors"] += e["outcome"] == "error"
        row["input_tokens"] += e["input_tokens"]
        row["output_tokens"] += e["output_tokens"]
        row["cost"] += Decimal(e["cost_usd"])
    return dict(out)


def _check_usage(
    items: list[dict[str, Any]], field: str, expected: dict[Any, dict[str, Any]]
) -> None:
    got = {item[field]: item for item in items}
    assert set(expected) <= set(got), (expected, got)
    for group, sums in expected.items():
        item = got[group]
        assert Decimal(item["cost_usd"]) == sums["cost"], group
        assert isinstance(item["cost_usd"], str) and "e" not in item["cost_usd"].lower()
        for name in ("requests", "refused", "errors", "input_tokens", "output_tokens"):
            assert item[name] == sums[name], (group, name)


def test_usage_sums_exactly(capgate: Capgate, ledger_setup: LedgerSetup) -> None:
    entries = ledger_setup.entries
    expected_cost = sum(
        (
            cost_of(e["model"], e["input_tokens"], e["output_tokens"])
            for e in entries
            if e["outcome"] == "ok"
        ),
        Decimal(0),
    )
    window = {"from": ledger_setup.t0, "to": ledger_setup.t1}

    by_key = capgate.admin("GET", "/admin/usage", params={"group_by": "key"}).json()["items"]
    _check_usage(by_key, "key", _sums(entries, lambda e: e["key"]))
    mine = next(i for i in by_key if i["key"] == ledger_setup.name)
    assert Decimal(mine["cost_usd"]) == expected_cost
    assert (mine["requests"], mine["refused"], mine["errors"]) == (7, 1, 1)

    # Nothing else ran between t0 and t1, so the window holds exactly this key's entries.
    by_model = capgate.admin("GET", "/admin/usage", params={"group_by": "model", **window}).json()[
        "items"
    ]
    assert {i["model"] for i in by_model} == {HAIKU, SONNET, GPT}
    _check_usage(by_model, "model", _sums(entries, lambda e: e["model"]))

    by_day = capgate.admin("GET", "/admin/usage", params={"group_by": "day", **window}).json()[
        "items"
    ]
    expected_days = _sums(entries, lambda e: e["created_at"][:10])
    assert len(by_day) == len(expected_days)
    _check_usage(by_day, "day", expected_days)
    assert sum(Decimal(i["cost_usd"]) for i in by_day) == expected_cost

    response = capgate.admin("GET", "/admin/usage", params={"group_by": "colour"})
    assert "group_by" in admin_error(response, 400)


# -- finding things: unknown parameters, a request by its id, clamps, refusal reasons -----


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/admin/requests", {"stauts": "402"}, "stauts"),
        ("/admin/requests", {"key": "x", "colour": "red", "size": "1"}, "colour, size"),
        ("/admin/requests", {"status": "abc"}, "status"),
        ("/admin/requests", {"outcome": "fine"}, "outcome"),
        ("/admin/requests", {"limit": "0"}, "limit"),
        ("/admin/requests", {"limit": "-5"}, "limit"),
        ("/admin/requests/some-id", {"format": "csv"}, "format"),
        ("/admin/usage", {"groupby": "team"}, "groupby"),
        ("/admin/audit", {"limt": "5"}, "limt"),
        ("/admin/audit", {"limit": "-1"}, "limit"),
        ("/admin/summary", {"perod": "today"}, "perod"),
        ("/admin/timeseries", {"setp": "hour"}, "setp"),
        ("/admin/keys", {"q": "alice"}, "q"),
        ("/admin/teams", {"sort": "name"}, "sort"),
    ],
)
def test_admin_lists_refuse_unknown_parameters_and_bad_values(
    capgate: Capgate, path: str, params: dict[str, str], named: str
) -> None:
    """A typo in a filter is a 400 naming it, not an unfiltered answer."""
    message = admin_error(capgate.admin("GET", path, params=params), 400)
    assert named in message, message


def test_find_a_request_by_its_request_id(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 2}])
    answers = [ask(http, key, text=f"find mock:words={n}") for n in (3, 5, 7)]
    assert [a.status_code for a in answers] == [200, 200, 402]
    ids = [a.headers["x-capgate-request-id"] for a in answers]
    assert len(set(ids)) == 3
    for request_id in ids:
        listed = capgate.ledger(request_id=request_id)
        assert [e["request_id"] for e in listed] == [request_id]
        shown = capgate.admin("GET", f"/admin/requests/{request_id}")
        assert shown.status_code == 200 and shown.json() == listed[0]
        assert shown.json()["key"] == key_name
    assert capgate.ledger(request_id=ids[1])[0]["output_tokens"] == 5
    assert capgate.ledger(request_id=ids[2])[0]["outcome"] == "refused"
    assert capgate.ledger(request_id="no-such-request") == []
    missing = capgate.admin("GET", "/admin/requests/no-such-request")
    assert "no-such-request" in admin_error(missing, 404)


def test_a_clamped_max_tokens_is_in_the_ledger_and_its_exports(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "0.10"}])
    small = ask(http, key, SONNET, "small mock:words=3", max_tokens=100)
    assert small.status_code == 200 and "x-capgate-max-tokens" not in small.headers
    big = ask(http, key, SONNET, "big mock:words=20000", max_tokens=64_000)
    assert big.status_code == 200, big.text
    clamped = int(big.headers["x-capgate-max-tokens"])
    assert 1024 <= clamped < 64_000
    newest, oldest = capgate.ledger(key=key_name)
    assert newest["request_id"] == big.headers["x-capgate-request-id"]
    assert newest["max_tokens_clamped"] == clamped and newest["output_tokens"] == clamped
    assert oldest["max_tokens_clamped"] is None and newest["flags"] == oldest["flags"] == []

    csv_text = capgate.admin(
        "GET", "/admin/requests", params={"key": key_name, "format": "csv"}
    ).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["max_tokens_clamped"] for r in rows] == [str(clamped), ""]
    assert [r["flags"] for r in rows] == ["", ""]
    ndjson = capgate.admin(
        "GET", "/admin/requests", params={"key": key_name, "format": "ndjson", "limit": "all"}
    ).text
    lines = [json.loads(line) for line in ndjson.splitlines()]
    assert [line["max_tokens_clamped"] for line in lines] == [clamped, None]


def test_summary_splits_refusals_by_reason(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    team = f"reasons-{uuid.uuid4().hex[:8]}"
    assert capgate.admin("POST", "/admin/teams", json={"name": team}).status_code == 201
    per_minute = capgate.create_key(
        key_name + "-rate", [{"metric": "requests", "window": "minute", "max": 1}], team=team
    )
    per_day = capgate.create_key(
        key_name + "-budget", [{"metric": "requests", "window": "day", "max": 1}], team=team
    )
    only_gpt = capgate.create_key(key_name + "-models", models=["gpt-*"], team=team)
    paused = capgate.create_key(key_name + "-paused", team=team)
    capgate.admin("POST", f"/admin/keys/{key_name}-paused/pause")
    statuses = [
        ask(http, per_minute).status_code,
        ask(http, per_minute).status_code,
        ask(http, per_day).status_code,
        ask(http, per_day).status_code,
        ask(http, per_day).status_code,
        ask(http, only_gpt).status_code,
        ask(http, paused).status_code,
    ]
    assert statuses == [200, 429, 200, 402, 402, 403, 403]
    summary = capgate.admin("GET", "/admin/summary", params={"team": team, "period": "24h"})
    data = summary.json()
    assert data["refused"] == 5
    assert data["refusals_by_reason"] == {
        "budget": 2, "model_not_allowed": 1, "paused": 1, "rate_limit": 1,
    }  # fmt: skip
    assert list(data["refusals_by_reason"]) == [
        "budget",
        "model_not_allowed",
        "paused",
        "rate_limit",
    ]
    assert sum(data["refusals_by_reason"].values()) == data["refused"]


def test_key_list_shows_spend_and_last_use(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    used = capgate.create_key(key_name + "-used")
    capgate.create_key(key_name + "-idle")
    assert ask(http, used, HAIKU, "a mock:words=7").status_code == 200
    assert ask(http, used, SONNET, "b mock:words=9").status_code == 200
    entries = capgate.ledger(key=key_name + "-used")
    items = {k["name"]: k for k in capgate.admin("GET", "/admin/keys").json()["items"]}
    spent = sum((Decimal(e["cost_usd"]) for e in entries), Decimal(0))
    assert spent > 0
    mine = items[key_name + "-used"]
    assert Decimal(mine["spend"]["today"]) == spent == Decimal(mine["spend"]["month"])
    assert mine["spend"]["timezone"] == "UTC"
    assert mine["last_used_at"] == entries[0]["created_at"]
    idle = items[key_name + "-idle"]
    assert idle["spend"] == {"today": "0", "month": "0", "timezone": "UTC"}
    assert idle["last_used_at"] is None
    assert all("spend" not in t for t in capgate.admin("GET", "/admin/teams").json()["items"])


def test_a_clamp_is_kept_when_the_server_dies_mid_request(
    upstream: Upstream, tmp_path: Path
) -> None:
    """A clamped request whose server is killed is settled by another process as
    lease_expired: its entry still records the lowered max_tokens."""
    config = gateway_config(upstream, server={"lease_seconds": 2})
    first = start_capgate(tmp_path, config)
    key = first.create_key("clamped", [{"metric": "cost_usd", "window": "day", "max": "0.10"}])
    body = {
        "model": SONNET, "max_tokens": 64_000, "stream": True,
        "messages": [{"role": "user", "content": "slow mock:words=300 mock:stream_delay_ms=100"}],
    }  # fmt: skip
    headers = kill_during_stream(first, body, key)
    clamped = int(headers["x-capgate-max-tokens"])
    assert 1024 <= clamped < 64_000

    second = start_capgate(tmp_path, config, db=first.db)
    try:
        deadline = time.monotonic() + 15
        entries = second.ledger(key="clamped")
        while not entries and time.monotonic() < deadline:
            time.sleep(0.3)
            entries = second.ledger(key="clamped")
        assert [e["outcome"] for e in entries] == ["lease_expired"]
        assert entries[0]["max_tokens_clamped"] == clamped
        assert entries[0]["request_id"] == headers["x-capgate-request-id"]
    finally:
        second.close()


# -- references, expiry, warnings, members --------------------------------------------------


def test_unknown_references_are_refused(capgate: Capgate, key_name: str) -> None:
    """A typo (`team: reserach`) would bind a key to no budget at all: refused, naming
    the missing scope and how to create it, changing nothing."""
    typo = f"reserach-{key_name}"
    for kind, body in (
        ("team", {"name": key_name, "team": typo}),
        ("user", {"name": key_name, "user": typo}),
    ):
        message = admin_error(capgate.admin("POST", "/admin/keys", json=body), 400)
        assert f'no {kind} named "{typo}"' in message
        assert f"capgate {kind}s create {typo}" in message and f"/admin/{kind}s" in message
        assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    body = {"name": f"team-{key_name}", "org": typo}
    message = admin_error(capgate.admin("POST", "/admin/teams", json=body), 400)
    assert f'no org named "{typo}"' in message and "capgate orgs create" in message
    assert capgate.admin("GET", f"/admin/teams/team-{key_name}").status_code == 404

    capgate.create_key(key_name)
    patch = {"team": typo, "limits": [{"metric": "requests", "window": "day", "max": 1}]}
    message = admin_error(capgate.admin("PATCH", f"/admin/keys/{key_name}", json=patch), 400)
    assert typo in message
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["team"] is None and shown["limits"] == []  # nothing changed
    # Once the team exists, the key may join it; clearing with null needs no team.
    ensure(capgate, "teams", typo)
    assert capgate.admin("PATCH", f"/admin/keys/{key_name}", json=patch).status_code == 200
    cleared = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"team": None})
    assert cleared.status_code == 200 and cleared.json()["team"] is None


@pytest.mark.parametrize("when", ["2020-01-01", "1970-01-02T00:00:00Z", 1_000_000])
def test_expiry_in_the_past_is_refused(capgate: Capgate, key_name: str, when: Any) -> None:
    body = {"name": key_name, "expires_at": when}
    message = admin_error(capgate.admin("POST", "/admin/keys", json=body), 400)
    assert "expires_at" in message and "in the past" in message
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    capgate.create_key(key_name, expires_at="2099-01-01")
    patch = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"expires_at": when})
    assert "in the past" in admin_error(patch, 400)
    shown = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert shown["expires_at"].startswith("2099-01-01")


def test_warnings_when_a_limit_cannot_pay_one_request(capgate: Capgate, key_name: str) -> None:
    """$0.05/day on Haiku 4.5 looks generous, but one Claude Code request reserves more:
    the answer says so (and the key is still made, as asked)."""
    cheap = {"metric": "cost_usd", "window": "day", "max": "0.05"}
    body = {"name": key_name, "limits": [cheap], "models": [HAIKU]}
    created = capgate.admin("POST", "/admin/keys", json=body)
    assert created.status_code == 201, created.text
    [warning] = created.json()["warnings"]
    assert "cost_usd/day" in warning and "$0.05" in warning and "Claude Code" in warning
    assert HAIKU in warning and "raise the limit to at least $0.1" in warning
    roomy = {"metric": "cost_usd", "window": "day", "max": "5"}
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"limits": [roomy]})
    assert patched.status_code == 200 and patched.json()["warnings"] == []
    tokens = {"metric": "tokens", "window": "day", "max": 20_000}
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"limits": [tokens]})
    assert ["tokens/day" in w for w in patched.json()["warnings"]] == [True]
    # Other scopes get the same check.
    body = {"name": f"t-{key_name}", "limits": [cheap], "models": ["claude-sonnet-*"]}
    team = capgate.admin("POST", "/admin/teams", json=body)
    assert team.status_code == 201 and len(team.json()["warnings"]) == 1
    # With every model allowed, the cheapest priced one decides.
    body = {"name": f"t2-{key_name}", "limits": [cheap]}
    assert capgate.admin("POST", "/admin/teams", json=body).json()["warnings"] == []


def test_show_lists_members(capgate: Capgate, key_name: str) -> None:
    org, team, user = f"o-{key_name}", f"t-{key_name}", f"u-{key_name}"
    ensure(capgate, "orgs", org)
    created = capgate.admin("POST", "/admin/teams", json={"name": team, "org": org})
    assert created.status_code == 201, created.text
    ensure(capgate, "users", user)
    capgate.create_key(f"{key_name}-b", team=team, user=user)
    capgate.create_key(f"{key_name}-a", team=team)
    capgate.create_key(f"{key_name}-c", user=user)
    shown = capgate.admin("GET", f"/admin/teams/{team}").json()
    assert shown["members"] == {"keys": [f"{key_name}-a", f"{key_name}-b"], "users": [user]}
    shown = capgate.admin("GET", f"/admin/users/{user}").json()
    assert shown["members"] == {"keys": [f"{key_name}-b", f"{key_name}-c"]}
    assert capgate.admin("GET", f"/admin/orgs/{org}").json()["members"] == {"teams": [team]}
    assert "members" not in capgate.admin("GET", f"/admin/keys/{key_name}-a").json()


def test_a_scope_that_is_still_named_cannot_be_deleted(capgate: Capgate, key_name: str) -> None:
    """Deleting a team, user or org that keys (or teams) still name would leave them bound to
    no budget under a dangling name: refused with 409 naming them, nothing changed."""
    org, team, user = f"o-{key_name}", f"t-{key_name}", f"u-{key_name}"
    for kind, body in (
        ("orgs", {"name": org}),
        ("teams", {"name": team, "org": org}),
        ("users", {"name": user}),
    ):
        assert capgate.admin("POST", f"/admin/{kind}", json=body).status_code == 201
    capgate.create_key(key_name, team=team, user=user)
    for kind, name, named in (
        ("teams", team, key_name),
        ("users", user, key_name),
        ("orgs", org, team),
    ):
        message = admin_error(capgate.admin("DELETE", f"/admin/{kind}/{name}"), 409)
        assert f'"{named}"' in message, message
        assert capgate.admin("GET", f"/admin/{kind}/{name}").status_code == 200
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"team": None, "user": None})
    assert patched.status_code == 200, patched.text
    assert capgate.admin("DELETE", f"/admin/teams/{team}").status_code in (200, 204)
    assert capgate.admin("DELETE", f"/admin/users/{user}").status_code in (200, 204)
    assert capgate.admin("DELETE", f"/admin/orgs/{org}").status_code in (200, 204)
