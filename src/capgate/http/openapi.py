"""The admin API's OpenAPI document, built once from the request models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from capgate import __version__
from capgate.core.limits import ScopeKind
from capgate.http.admin_admins import (
    AdminCreate,
    AdminUpdate,
    PasswordSet,
    TokenCreate,
    TokenRotate,
)
from capgate.http.admin_models import PLURALS, ScopeCreate, ScopeUpdate
from capgate.http.admin_rotation import KeyRotate
from capgate.http.admin_routing import ProviderBody, RouteBody, RulesBody
from capgate.http.admin_settings import SettingsUpdate
from capgate.http.hook_admin import CodeCreate, Kill
from capgate.http.openapi_answers import (
    ANSWERS,
    EXPORTS,
    NO_CONTENT,
    body_name,
    kind_bodies,
    scope_answers,
)

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_LEDGER_FILTERS = [
    {"name": n, "in": "query", "schema": {"type": t}}
    for n, t in (
        ("key", "string"), ("team", "string"), ("user", "string"), ("model", "string"),
        ("provider", "string"), ("status", "integer"), ("outcome", "string"),
        ("request_id", "string"), ("from", "string"),
        ("to", "string"), ("limit", "integer"), ("cursor", "string"), ("format", "string"),
    )
]  # fmt: skip


_SUMMARY_PARAMS = [
    {"name": n, "in": "query", "schema": {"type": "string"}}
    for n in ("period", "from", "to", "tz", "key", "team", "user", "model", "provider")
]


_SERIES_PARAMS = [
    *_SUMMARY_PARAMS,
    {"name": "step", "in": "query", "schema": {"type": "string"}},
    {"name": "group_by", "in": "query", "schema": {"type": "string"}},
    {"name": "top", "in": "query", "schema": {"type": "integer"}},
]


def _op(
    summary: str, *, body: str | None = None, params: list[Any] | None = None, ok: str = "200"
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"adminKey": []}, {"adminToken": []}, {"dashboardSession": []}],
        "responses": {ok: {"description": "ok"}, "default": _ERROR},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (ScopeCreate, "validation"), (ScopeUpdate, "validation"),
            (SettingsUpdate, "validation"), (CodeCreate, "validation"), (Kill, "validation"),
            (ProviderBody, "validation"), (RouteBody, "validation"), (RulesBody, "validation"),
            (AdminCreate, "validation"), (AdminUpdate, "validation"), (PasswordSet, "validation"),
            (TokenCreate, "validation"), (TokenRotate, "validation"),
            (KeyRotate, "validation"),
        ],
        ref_template="#/components/schemas/{model}",
    )  # fmt: skip
    components = dict(schemas.get("$defs", {}))
    kind_bodies(components, {kind: body_name(kind, True)[: -len("Create")] for kind in PLURALS})
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    paths: dict[str, Any] = {}
    for kind, plural in PLURALS.items():
        what = kind.value
        note = "; the raw key is in the answer, once" if kind is ScopeKind.KEY else ""
        paths[f"/admin/{plural}"] = {
            "get": _op(
                f"List {plural} with their current usage"
                + ("; spend today and this month, last use" if kind is ScopeKind.KEY else "")
            ),
            "post": _op(f"Create a {what}{note}", body=body_name(kind, True), ok="201"),
        }
        paths[f"/admin/{plural}/{{name}}"] = {
            "get": _op(f"Show a {what} and its usage per limit", params=_NAME),
            "patch": _op(f"Change a {what}", body=body_name(kind, False), params=_NAME),
            "delete": _op(
                f"Delete a {what} (the ledger keeps its entries)", params=_NAME, ok="204"
            ),
        }
        for action in ("pause", "resume", "revoke", "reset-usage"):
            paths[f"/admin/{plural}/{{name}}/{action}"] = {
                "post": _op(f"{action.capitalize()} a {what}", params=_NAME)
            }
    paths["/admin/keys/{name}/rotate"] = {
        "post": _op(
            "Rotate a key: a new secret (in the answer, once) for the same key; the old one "
            "works for grace_s more seconds, then is refused as rotated; audit-logged",
            body="KeyRotate",
            params=_NAME,
        )
    }
    paths |= {
        "/admin/requests": {
            "get": _op(
                "The ledger: one entry per request (an unknown parameter is a 400)",
                params=_LEDGER_FILTERS,
            )
        },
        "/admin/requests/{request_id}": {
            "get": _op(
                "One ledger entry by the x-capgate-request-id its client got (404 if none)",
                params=[
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/admin/requests/{request_id}/body": {
            "get": _op(
                "The request's logged body and answer, redacted, when its scopes log bodies "
                "(log_bodies), else logged: false; 404 for an unknown request id; 403 for a "
                "caller that may not read prompts",
                params=[
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/admin/usage": {
            "get": _op(
                "Usage summed by key, user, team, model, upstream_model, provider, outcome or day",
                params=[
                    {"name": "group_by", "in": "query", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "schema": {"type": "string"}},
                ],
            )
        },
        "/admin/summary": {
            "get": _op(
                "Totals of a period: requests, refusals, errors, tokens, cost, p50/p95 latency",
                params=_SUMMARY_PARAMS,
            )
        },
        "/admin/timeseries": {
            "get": _op(
                "Requests, cost, tokens, refusals and errors per minute, hour or day, per group",
                params=_SERIES_PARAMS,
            )
        },
        "/admin/audit": {
            "get": _op(
                "Admin changes, newest first",
                params=[{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            )
        },
        "/admin/routing": {
            "get": _op(
                "Providers' health as this process sees it (circuit breaker: cooling down "
                "or not, failures in a row, last error) and the routes"
            )
        },
        "/admin/settings": {
            "get": _op("The runtime settings in effect: price overrides, credit weights, timezone"),
            "patch": _op(
                "Change runtime settings (null: back to the config file's); audit-logged",
                body="SettingsUpdate",
            ),
        },
        "/admin/events": {
            "get": {
                **_op(
                    "Live feed (Server-Sent Events): `event: request` for each new ledger entry, "
                    "`event: audit` for each admin change; resumable with Last-Event-ID",
                    params=[
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}
                    ],
                ),
                "responses": {
                    "200": {
                        "description": "an endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "default": _ERROR,
                },
            }
        },
    }
    paths |= _alert_paths() | _hook_paths() | _routing_paths() | _admin_paths()
    paths["/admin/openapi.json"] = {
        "get": {**_op("This document (OpenAPI 3.1)"), "security": []},
    }
    _describe_answers(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "capgate admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer"},
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a named admin's API token (cga-...); its role decides",
                },
                "dashboardSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "capgate_session",
                    "description": "a dashboard login; changes also need the x-csrf-token header",
                },
            },
        },
    }


def _alert_paths() -> dict[str, Any]:
    """/admin/alerts/...: bodies are JSON objects (docs/configuration.md#alert-rules)."""

    def path(name: str) -> list[dict[str, Any]]:
        return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]

    query = [
        {"name": "status", "in": "query", "schema": {"enum": ["pending", "delivered", "failed"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
    ]
    return {
        "/admin/alerts/rules": {
            "get": _op("Alert rules: the server's defaults and each scope's"),
            "post": _op("Add an alert rule to a scope (answers its id); audit-logged", ok="201"),
        },
        "/admin/alerts/rules/{id}": {
            "delete": _op("Remove an alert rule; audit-logged", params=path("id"), ok="204")
        },
        "/admin/alerts/webhooks": {
            "get": _op("Alert webhooks, without their secrets"),
            "post": _op(
                "Add a webhook; its signing secret is in the answer, once; audit-logged", ok="201"
            ),
        },
        "/admin/alerts/webhooks/{name}": {
            "delete": _op("Remove a webhook; audit-logged", params=path("name"), ok="204")
        },
        "/admin/alerts/webhooks/{name}/test": {
            "post": _op("Queue a signed test delivery to a webhook", params=path("name"), ok="202")
        },
        "/admin/alerts/deliveries": {
            "get": _op("The webhook delivery log, newest first", params=query)
        },
    }


def _routing_paths() -> dict[str, Any]:
    """/admin/routing/...: upstream providers and routes defined at runtime."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    match = [{"name": "match", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/admin/routing/providers": {
            "get": _op(
                "Every upstream provider, the config file's and the runtime ones (`source`); "
                "API keys as `api_key_fingerprint` only"
            ),
            "post": _op(
                "Add a runtime provider (its api_key is stored encrypted; validated first)",
                body="ProviderBody", ok="201",
            ),
        },
        "/admin/routing/providers/{name}": {
            "get": _op("One provider", params=name),
            "patch": _op(
                "Change a runtime provider (api_key omitted: kept; null: removed); the config "
                "file's are read-only (409)",
                body="ProviderBody", params=name,
            ),
            "delete": _op(
                "Remove a runtime provider (409 while a route uses it, naming the route)",
                params=name, ok="204",
            ),
        },
        "/admin/routing/routes": {
            "get": _op("Every route in the order they are matched: the config file's first"),
            "post": _op("Add a runtime route (its targets must exist)", body="RouteBody", ok="201"),
        },
        "/admin/routing/routes/{match}": {
            "get": _op("One route (the match may hold slashes)", params=match),
            "patch": _op("Change a runtime route", body="RouteBody", params=match),
            "delete": _op(
                "Remove a runtime route (409 while the runtime rules name its model, naming "
                "the rule)",
                params=match, ok="204",
            ),
        },
        "/admin/routing/rules": {
            "get": _op(
                "The routing rules in force and where they come from (`source`: config or "
                "runtime, who changed them when), and the config file's"
            ),
            "put": _op(
                "Replace the whole ordered list of rules (JSON `{rules: [...]}`, or YAML text with "
                "Content-Type application/yaml), checked as the config file's (400 "
                "naming the rule and field; nothing changes); every process within a second",
                body="RulesBody",
            ),
            "delete": _op("Back to the config file's rules; audit-logged"),
        },
    }  # fmt: skip


def _hook_paths() -> dict[str, Any]:
    """/admin/hook/... and a person's kill switch (docs/hook-mode.md)."""
    ident = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/admin/hook/codes": {
            "get": _op("Hook install codes: open, used or expired (never the code)"),
            "post": _op(
                "A one-time install code for a person's machine; the code is in the answer, "
                "once; audit-logged",
                body="CodeCreate",
                ok="201",
            ),
        },
        "/admin/hook/codes/{id}": {
            "delete": _op("Withdraw an install code; audit-logged", params=ident, ok="204")
        },
        "/admin/hook/machines": {"get": _op("Enrolled hook machines, last seen, tampering")},
        "/admin/users/{name}/kill": {
            "post": _op(
                "Stop a person now on every machine (optionally log the agent out); one "
                "audit entry",
                body="Kill",
                params=_NAME,
            )
        },
    }


def _admin_paths() -> dict[str, Any]:
    """Named admins and their API tokens (who may call each: docs/security.md)."""
    token = [*_NAME, {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/admin/me": {"get": _op("Who this credential is: name, role, teams, break_glass")},
        "/admin/admins": {
            "get": _op("Named admins (owners only)"),
            "post": _op(
                "Create an admin (owners only); audit-logged", body="AdminCreate", ok="201"
            ),
        },
        "/admin/admins/{name}": {
            "get": _op("Show an admin", params=_NAME),
            "patch": _op(
                "Change an admin's role, teams or status", body="AdminUpdate", params=_NAME
            ),
            "delete": _op("Delete an admin with their tokens and sessions", params=_NAME, ok="204"),
        },
        "/admin/admins/{name}/password": {
            "post": _op(
                "Set an admin's password; ends their sessions",
                body="PasswordSet",
                params=_NAME,
                ok="204",
            ),
        },
        "/admin/admins/{name}/tokens": {
            "get": _op("An admin's API tokens, without their secrets", params=_NAME),
            "post": _op(
                "Make an API token; its secret is in the answer, once",
                body="TokenCreate",
                params=_NAME,
                ok="201",
            ),
        },
        "/admin/admins/{name}/tokens/{id}/revoke": {
            "post": _op("Revoke an API token at once", params=token)
        },
        "/admin/admins/{name}/tokens/{id}/rotate": {
            "post": _op(
                "A new secret; the old one works grace_s seconds more",
                body="TokenRotate",
                params=token,
            ),
        },
    }


def _describe_answers(paths: dict[str, Any]) -> None:
    """Each operation's success answer with its schema (openapi_answers)."""
    answers = dict(ANSWERS)
    for kind, plural in PLURALS.items():
        answers |= scope_answers(plural, kind)
    for path, ops in paths.items():
        for method, op in ops.items():
            if (method, path) not in answers:
                continue
            schema = answers[(method, path)]
            (status,) = (code for code in op["responses"] if code != "default")
            if schema is NO_CONTENT:
                op["responses"][status] = {"description": "done; no body"}
            else:
                content = {"application/json": {"schema": schema}}
                op["responses"][status] = {
                    "description": "ok",
                    "content": content | EXPORTS.get((method, path), {}),
                }
