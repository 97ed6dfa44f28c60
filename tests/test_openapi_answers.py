"""`/admin/openapi.json` says what every operation answers (issue #18 part 5: it used to
describe 1 success answer of 54), each kind's own body, and the enums. Checked against a
real server: every operation of the document is called once, and its answer must have
the documented status and match the documented schema (jsonschema, draft 2020-12, as
OpenAPI 3.1 uses). A new route without an example here fails the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

Call = tuple[str, str, str, dict[str, Any]]  # method, path template, concrete path, httpx kwargs


def _calls(request_id: str) -> list[Call]:
    """One example of every operation, in an order where each finds what it needs."""
    calls: list[Call] = []
    names = {"orgs": "acme", "teams": "research", "users": "alice", "keys": "k1",
             "providers": "anthropic"}  # fmt: skip
    bodies: dict[str, dict[str, Any]] = {
        "orgs": {"limits": [{"metric": "cost_usd", "window": "month", "max": "100"}]},
        "teams": {"org": "acme"},
        "users": {},
        "keys": {"team": "research", "user": "alice",
                 "limits": [{"metric": "requests", "window": "rolling-5m", "max": 50}]},
        "providers": {},
    }  # fmt: skip
    for plural, name in names.items():
        base, one = f"/admin/{plural}", f"/admin/{plural}/{{name}}"
        here = f"{base}/{name}"
        calls += [
            ("post", base, base, {"json": {"name": name, **bodies[plural]}}),
            ("get", base, base, {}),
            ("get", one, here, {}),
            ("patch", one, here, {"json": {"metadata": {"owner": "ops"}}}),
            ("post", one + "/pause", here + "/pause", {}),
            ("post", one + "/resume", here + "/resume", {}),
            ("post", one + "/reset-usage", here + "/reset-usage", {}),
        ]
    calls += [
        ("get", "/admin/requests", "/admin/requests", {"params": {"limit": 5}}),
        ("get", "/admin/requests/{request_id}", f"/admin/requests/{request_id}", {}),
        ("get", "/admin/requests/{request_id}/body", f"/admin/requests/{request_id}/body", {}),
        ("get", "/admin/usage", "/admin/usage", {"params": {"group_by": "model"}}),
        ("get", "/admin/summary", "/admin/summary", {}),
        ("get", "/admin/timeseries", "/admin/timeseries", {"params": {"group_by": "key"}}),
        ("get", "/admin/audit", "/admin/audit", {"params": {"limit": 3}}),
        ("get", "/admin/routing", "/admin/routing", {}),
        ("get", "/admin/settings", "/admin/settings", {}),
        ("patch", "/admin/settings", "/admin/settings", {"json": {"timezone": "Europe/Paris"}}),
        ("get", "/admin/openapi.json", "/admin/openapi.json", {}),
        ("post", "/admin/alerts/rules", "/admin/alerts/rules",
         {"json": {"scope": "team:research", "type": "threshold", "percents": [50]}}),
        ("get", "/admin/alerts/rules", "/admin/alerts/rules", {}),
        ("post", "/admin/alerts/webhooks", "/admin/alerts/webhooks",
         {"json": {"name": "w1", "url": "http://127.0.0.1:9/hook"}}),
        ("get", "/admin/alerts/webhooks", "/admin/alerts/webhooks", {}),
        ("post", "/admin/alerts/webhooks/{name}/test", "/admin/alerts/webhooks/w1/test", {}),
        ("get", "/admin/alerts/deliveries", "/admin/alerts/deliveries", {}),
        ("delete", "/admin/alerts/webhooks/{name}", "/admin/alerts/webhooks/w1", {}),
        ("post", "/admin/hook/codes", "/admin/hook/codes", {"json": {"user": "alice"}}),
        ("get", "/admin/hook/codes", "/admin/hook/codes", {}),
        ("get", "/admin/hook/machines", "/admin/hook/machines", {}),
        ("post", "/admin/users/{name}/kill", "/admin/users/alice/kill", {"json": {}}),
        ("post", "/admin/routing/providers", "/admin/routing/providers",
         {"json": {"name": "rt", "type": "mock", "base_url": "http://127.0.0.1:9"}}),
        ("get", "/admin/routing/providers", "/admin/routing/providers", {}),
        ("get", "/admin/routing/providers/{name}", "/admin/routing/providers/rt", {}),
        ("patch", "/admin/routing/providers/{name}", "/admin/routing/providers/rt",
         {"json": {"timeout_s": 60}}),
        ("post", "/admin/routing/routes", "/admin/routing/routes",
         {"json": {"match": "org/rt-*", "targets": [{"provider": "rt", "model": "m"}]}}),
        ("get", "/admin/routing/routes", "/admin/routing/routes", {}),
        ("get", "/admin/routing/routes/{match}", "/admin/routing/routes/org/rt-*", {}),
        ("patch", "/admin/routing/routes/{match}", "/admin/routing/routes/org/rt-*",
         {"json": {"retries": 0}}),
        ("put", "/admin/routing/rules", "/admin/routing/rules", {"json": {"rules": [
            {"name": "rt-small", "when": {"max_tokens": "<= 8"}, "then": {"model": "org/rt-a"}}]}}),
        ("get", "/admin/routing/rules", "/admin/routing/rules", {}),
        ("delete", "/admin/routing/rules", "/admin/routing/rules", {}),
        ("delete", "/admin/routing/routes/{match}", "/admin/routing/routes/org/rt-*", {}),
        ("delete", "/admin/routing/providers/{name}", "/admin/routing/providers/rt", {}),
        ("get", "/admin/me", "/admin/me", {}),
        ("post", "/admin/admins", "/admin/admins", {"json": {"name": "ann", "role": "team-admin",
         "teams": ["research"], "password": "a long enough password"}}),
        ("get", "/admin/admins", "/admin/admins", {}),
        ("get", "/admin/admins/{name}", "/admin/admins/ann", {}),
        ("patch", "/admin/admins/{name}", "/admin/admins/ann", {"json": {"status": "disabled"}}),
        ("post", "/admin/admins/{name}/password", "/admin/admins/ann/password",
         {"json": {"password": "another long password"}}),
        ("post", "/admin/admins/{name}/tokens", "/admin/admins/ann/tokens", {"json": {}}),
        ("get", "/admin/admins/{name}/tokens", "/admin/admins/ann/tokens", {}),
        ("post", "/admin/keys/{name}/rotate", "/admin/keys/k1/rotate", {"json": {"grace_s": 60}}),
    ]  # fmt: skip
    for plural, name in reversed(names.items()):
        one = f"/admin/{plural}/{{name}}"
        calls.append(("post", one + "/revoke", f"/admin/{plural}/{name}/revoke", {}))
        calls.append(("delete", one, f"/admin/{plural}/{name}", {}))
    return calls


@pytest.fixture
def server(tmp_path: Path, upstream: Upstream) -> Any:
    config = gateway_config(upstream, server={"alerts_allow_private_targets": True})
    capgate = start_capgate(tmp_path, config)
    try:
        yield capgate
    finally:
        capgate.close()


def _traffic(server: Capgate) -> str:
    """One request through the gateway, for the ledger routes: its request id."""
    key = server.create_key("traffic")
    answer = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": "claude-haiku-4-5", "max_tokens": 16,
              "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.headers["x-capgate-request-id"]


def test_every_operation_answers_what_the_document_says(server: Capgate) -> None:
    document = server.admin("GET", "/admin/openapi.json").json()
    request_id = _traffic(server)
    # Rule/id-bearing routes need the id the server gave: filled in as they are created.
    calls = _calls(request_id)
    seen: set[tuple[str, str]] = set()
    rule_id = code_id = token_id = None
    for method, template, path, kwargs in calls:
        answer = _check(server, document, method, template, path, kwargs)
        seen.add((method, template))
        if template == "/admin/alerts/rules" and method == "post":
            rule_id = answer["id"]
        if template == "/admin/hook/codes" and method == "post":
            code_id = answer["id"]
        if template == "/admin/admins/{name}/tokens" and method == "post":
            token_id = answer["id"]
    assert rule_id is not None and code_id is not None and token_id is not None
    tokens = "/admin/admins/{name}/tokens/{id}/"
    for action, body in (("rotate", {"json": {"grace_s": 5}}), ("revoke", {})):
        here = f"/admin/admins/ann/tokens/{token_id}/{action}"
        _check(server, document, "post", tokens + action, here, body)
        seen.add(("post", tokens + action))
    _check(server, document, "delete", "/admin/admins/{name}", "/admin/admins/ann", {})
    seen.add(("delete", "/admin/admins/{name}"))
    _check(
        server, document, "delete", "/admin/alerts/rules/{id}", f"/admin/alerts/rules/{rule_id}", {}
    )
    _check(server, document, "delete", "/admin/hook/codes/{id}", f"/admin/hook/codes/{code_id}", {})
    seen |= {("delete", "/admin/alerts/rules/{id}"), ("delete", "/admin/hook/codes/{id}")}
    documented = {
        (method, path)
        for path, ops in document["paths"].items()
        for method in ops
        if path != "/admin/events"  # an endless stream: tests/test_events.py
    }
    assert documented - seen == set(), "documented operations without an example here"
    assert seen - documented == set(), "operations called here that the document lacks"


def _check(
    server: Capgate,
    document: dict[str, Any],
    method: str,
    template: str,
    path: str,
    kwargs: dict[str, Any],
) -> Any:
    op = document["paths"][template][method]
    (status,) = (code for code in op["responses"] if code != "default")
    response = server.admin(method.upper(), path, **kwargs)
    assert response.status_code == int(status), (method, path, response.text)
    described = op["responses"][status]
    if response.status_code == 204:
        assert "content" not in described and response.content == b""
        return None
    schema = described["content"]["application/json"]["schema"]
    body = response.json()
    try:
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as exc:
        raise AssertionError(
            f"{method.upper()} {path}: {exc.message} at {list(exc.path)}"
        ) from None
    return body


def test_the_document_states_each_kinds_body_and_the_enums(capgate: Capgate) -> None:
    document = capgate.admin("GET", "/admin/openapi.json").json()
    schemas = document["components"]["schemas"]
    team_body = document["paths"]["/admin/teams"]["post"]["requestBody"]
    assert team_body["content"]["application/json"]["schema"]["$ref"].endswith("/TeamCreate")
    assert {"org"} <= set(schemas["TeamCreate"]["properties"])
    assert not {"team", "user"} & set(schemas["TeamCreate"]["properties"])
    assert {"team", "user"} <= set(schemas["KeyCreate"]["properties"])
    assert not {"team", "user", "org"} & set(schemas["UserUpdate"]["properties"])
    for name in ("TeamCreate", "KeyUpdate", "OrgCreate"):
        assert schemas[name]["additionalProperties"] is False
    limit = schemas["LimitIn"]["properties"]
    assert set(limit["metric"]["enum"]) >= {"requests", "cost_usd", "credits", "concurrent"}
    assert "rolling-" in limit["window"]["pattern"]
    # What the document calls a team's body is what the server takes: a key's fields are
    # refused on a team, as the schema says.
    refused = capgate.admin("POST", "/admin/teams", json={"name": "t-doc", "user": "x"})
    assert refused.status_code == 400 and "user" in refused.json()["error"]["message"]
