"""What the admin API's operations answer, and the request-body rules the models alone do
not say (each kind's own fields, the enums): the parts of `/admin/openapi.json` that let
a client or a fuzzer use it without guessing. tests/test_openapi_answers.py calls every
operation and checks each answer against its schema here.

Objects list the properties every answer has (`required`) and stay open to new ones
(`additionalProperties` is not false): adding a field is not a breaking change.
"""

from __future__ import annotations

from typing import Any

from capgate.core.limits import Metric, ScopeKind, Status
from capgate.store.admin_accounts import ADMIN_STATUSES, ROLES

JSON = dict[str, Any]

STR: JSON = {"type": "string"}
INT: JSON = {"type": "integer"}
NUM: JSON = {"type": "number"}
BOOL: JSON = {"type": "boolean"}
ANY_OBJECT: JSON = {"type": "object"}
MONEY: JSON = {
    "type": "string",
    "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
    "description": "US dollars as an exact decimal string",
}
TIME: JSON = {"type": "string", "description": "ISO 8601, UTC (…Z)"}
UNIX: JSON = {"type": "number", "description": "Unix seconds"}
WINDOW_PATTERN = r"^(minute|hour|day|week|month|total|rolling-[1-9][0-9]{0,5}[smhd])$"


def null(schema: JSON) -> JSON:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: dict[str, JSON], optional: dict[str, JSON] | None = None) -> JSON:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def array(items: JSON) -> JSON:
    return {"type": "array", "items": items}


def page(items: JSON) -> JSON:
    """A list answer: `items` and the cursor of the next page (null: the last)."""
    return obj({"items": array(items), "next_cursor": null(STR)})


COUNT_OR_MONEY: JSON = {"anyOf": [INT, MONEY], "description": "dollars for cost_usd, else a count"}
LIMIT: JSON = obj(
    {
        "metric": {"enum": [m.value for m in Metric]},
        "window": {"type": "string", "pattern": WINDOW_PATTERN},
        "max": COUNT_OR_MONEY,
    },
    {"model": STR},
)
LIMIT_USAGE: JSON = {
    **LIMIT,
    "properties": {
        **LIMIT["properties"],
        "used": COUNT_OR_MONEY,
        "reserved": COUNT_OR_MONEY,
        "remaining": COUNT_OR_MONEY,
        "resets_at": null(INT),
    },
    "required": [*LIMIT["required"], "used", "reserved", "remaining", "resets_at"],
}
SCHEDULE: JSON = obj({"model": STR, "days": STR, "start": STR, "end": STR, "tz": STR})
CACHE_SETTING: JSON = obj(
    {
        "ttl_s": NUM,
        "owner": {"enum": ["key", "user", "team", "org"]},
        "shared": null(STR),
        "charge": {"enum": ["free", "full"]},
        "semantic": BOOL,
    }
)
SCOPE: JSON = obj(
    {
        "name": STR,
        "id": STR,
        "kind": {"enum": [k.value for k in ScopeKind]},
        "prefix": null(STR),
        "status": {"enum": [s.value for s in Status]},
        "team": null(STR),
        "user": null(STR),
        "org": null(STR),
        "limits": array(LIMIT),
        "models": array(STR),
        "schedules": array(SCHEDULE),
        "timezone": STR,
        "on_short_budget": {"enum": ["clamp", "reject"]},
        "unbounded_hold_usd": null(MONEY),
        "fail_open": BOOL,
        "log_bodies": BOOL,
        "cache": null(CACHE_SETTING),
        "expires_at": null(STR),
        "metadata": ANY_OBJECT,
        "created_at": TIME,
        "updated_at": TIME,
    },
    {
        "usage": array(LIMIT_USAGE),
        "warnings": array(STR),
        "key": {**STR, "description": "the raw key: in the answer that creates it, once"},
        "members": {"type": "object", "additionalProperties": array(STR)},
        "spend": obj({"today": MONEY, "month": MONEY, "timezone": STR}),
        "last_used_at": null(TIME),
        # keys (docs/security.md#key-rotation)
        "rotated_at": null(TIME),
        "old_valid_until": null(TIME),
        "rotate_every": null(STR),
        "rotation_due_at": null(TIME),
    },
)
SCOPE_WITH_USAGE: JSON = {**SCOPE, "required": [*SCOPE["required"], "usage"]}
CREATED_SCOPE: JSON = {**SCOPE, "required": [*SCOPE["required"], "warnings"]}
CREATED_KEY: JSON = {**SCOPE, "required": [*SCOPE["required"], "warnings", "key"]}
ROTATED_KEY: JSON = {
    **SCOPE,
    "required": [*SCOPE["required"], "key", "rotated_at", "old_valid_until"],
}

LEDGER_ENTRY: JSON = obj(
    {
        "id": INT,
        "request_id": STR,
        "created_at": TIME,
        "key": null(STR),
        "user": null(STR),
        "team": null(STR),
        "model": null(STR),
        "provider": null(STR),
        "upstream_model": null(STR),
        "endpoint": null(STR),
        "stream": BOOL,
        "status": INT,
        "outcome": STR,
        "input_tokens": INT,
        "output_tokens": INT,
        "cache_read_tokens": INT,
        "cache_write_tokens": INT,
        "cost_usd": MONEY,
        "latency_ms": null(NUM),
        "ttft_ms": null(NUM),
        "attempts": INT,
        "refusal": null(STR),
        "error": null(STR),
        "max_tokens_clamped": null(INT),
        "flags": array(STR),
        "session": null(STR),
        "prompt": null(STR),
        "rule": null(STR),  # the routing rule that matched (docs/routing.md)
        "cache": {"enum": ["hit", "miss", None]},
        "saved_usd": MONEY,
    }
)
TOTALS: dict[str, JSON] = {
    "requests": INT,
    "refused": INT,
    "errors": INT,
    "input_tokens": INT,
    "output_tokens": INT,
    "cache_read_tokens": INT,
    "cache_write_tokens": INT,
    "cost_usd": MONEY,
    "cache_hits": INT,  # answered from the response cache (docs/cache.md)
    "saved_usd": MONEY,  # what those hits would have cost upstream
}
USAGE_ROW: JSON = {
    **obj(TOTALS),
    "description": "one group; its name is under the grouping's own key (e.g. `key`)",
}
SUMMARY: JSON = obj(
    {
        "from": TIME,
        "to": TIME,
        "timezone": STR,
        **TOTALS,
        "error_rate": NUM,
        "keys": INT,
        "refusals_by_reason": {"type": "object", "additionalProperties": INT},
        "latency_ms": obj({"p50": null(NUM), "p95": null(NUM)}),
    }
)
SERIES: JSON = obj(
    {
        "name": STR,
        "requests": array(INT),
        "cost_usd": array(MONEY),
        "tokens": array(INT),
        "refused": array(INT),
        "errors": array(INT),
        "total_requests": INT,
        "total_cost_usd": MONEY,
    }
)
TIMESERIES: JSON = obj(
    {
        "from": TIME,
        "to": TIME,
        "timezone": STR,
        "step": {"enum": ["minute", "hour", "day"]},
        "group_by": null(STR),
        "buckets": array(INT),
        "series": array(SERIES),
    }
)
AUDIT_ENTRY: JSON = obj(
    {
        "id": INT,
        "created_at": TIME,
        "actor": STR,
        "action": STR,
        "target": STR,
        "before": null(ANY_OBJECT),
        "after": null(ANY_OBJECT),
    }
)
TARGET: JSON = obj({"provider": STR, "model": null(STR), "weight": INT})
ROUTING: JSON = obj(
    {
        "providers": array(
            obj(
                {
                    "provider": STR,
                    "type": STR,
                    "state": STR,
                    "cooling_until": null(NUM),
                    "cooling_seconds_left": NUM,
                    "failures_in_a_row": INT,
                    "total_failures": INT,
                    "cooldowns": INT,
                    "last_error": null(STR),
                    "last_failure_at": null(NUM),
                }
            )
        ),
        "models": array(
            obj(
                {
                    "match": STR,
                    "targets": array(TARGET),
                    "fallbacks": array(TARGET),
                    "retries": INT,
                    "deadline_s": NUM,
                }
            )
        ),
    }
)
SETTINGS: JSON = obj(
    {
        "pricing": {"type": "object", "additionalProperties": ANY_OBJECT},
        "credit_weights": {"type": "object", "additionalProperties": INT},
        "timezone": STR,
        "alert_rules": array(ANY_OBJECT),
        "alerts_allow_private_targets": BOOL,
        "sources": {"type": "object", "additionalProperties": {"enum": ["config", "dashboard"]}},
        "pricing_version": STR,
    }
)
ALERT_RULE: JSON = obj({"type": STR, "scope": STR}, {"id": STR})
WEBHOOK: JSON = obj(
    {
        "name": STR,
        "url": STR,
        "format": {"enum": ["json", "slack"]},
        "events": array(STR),
        "scope": null(STR),
        "report": null(STR),
    },
    {"secret": {**STR, "description": "the signing secret: in the answer that creates it, once"}},
)
DELIVERY: JSON = obj(
    {
        "id": INT,
        "alert": STR,
        "webhook": STR,
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": INT,
        "created_at": STR,
        "next_attempt_at": null(STR),
        "last_status": null(INT),
        "last_error": null(STR),
        "delivered_at": null(STR),
        "body": ANY_OBJECT,
    }
)
HOOK_CODE: JSON = obj(
    {
        "id": STR,
        "user": STR,
        "created_at": UNIX,
        "expires_at": UNIX,
        "used_at": null(UNIX),
        "machine": null(STR),
        "agents": array(STR),
        "state": STR,
    }
)
NEW_HOOK_CODE: JSON = obj(
    {
        "id": STR,
        "code": {**STR, "description": "the install code: in this answer, once"},
        "user": STR,
        "expires_at": UNIX,
        "install": obj({"capgate": STR, "curl": STR}),
    }
)
HOOK_MACHINE: JSON = obj(
    {
        "key": STR,
        "name": STR,
        "user": null(STR),
        "hostname": null(STR),
        "os": null(STR),
        "os_user": null(STR),
        "agents": array(STR),
        "hook_version": null(STR),
        "installed_at": null(NUM),
        "last_seen": null(NUM),
        "tampered_at": null(NUM),
        "tamper_files": array(STR),
        "status": {"enum": [s.value for s in Status]},
    }
)
ADMIN: JSON = obj(
    {
        "name": STR,
        "role": {"enum": list(ROLES)},
        "teams": array(STR),
        "status": {"enum": list(ADMIN_STATUSES)},
        "has_password": BOOL,
        "created_at": TIME,
        "updated_at": TIME,
    }
)
ADMIN_TOKEN: JSON = obj(
    {
        "id": STR,
        "admin": STR,
        "label": STR,
        "prefix": STR,
        "created_at": TIME,
        "expires_at": null(TIME),
        "revoked_at": null(TIME),
        "rotated_at": null(TIME),
        "old_valid_until": null(TIME),
    }
)
NEW_ADMIN_TOKEN: JSON = {
    **ADMIN_TOKEN,
    "properties": {
        **ADMIN_TOKEN["properties"],
        "token": {**STR, "description": "the token (cga-...): in this answer, once"},
    },
    "required": [*ADMIN_TOKEN["required"], "token"],
}
NO_CONTENT = None  # a 204: no body

# A request's logged body (http/admin_bodies.py); only `request_id` and `logged: false`
# when it was not logged.
LOGGED_BODY: JSON = obj(
    {"request_id": STR, "logged": BOOL},
    {
        "created_at": TIME,
        "request": STR,
        "answer": null(STR),
        "request_bytes": INT,
        "answer_bytes": INT,
        "truncated": BOOL,
    },
)

PROVIDER_ITEM: JSON = obj(
    {
        "name": STR,
        "type": STR,
        "source": {"enum": ["config", "runtime"]},
        "base_url": null(STR),
        "api_key_fingerprint": null(STR),
        "header_names": array(STR),
        "connect_timeout_s": NUM,
        "first_byte_timeout_s": NUM,
        "read_timeout_s": NUM,
        "timeout_s": NUM,
        "max_connections": INT,
        "cooldown_after": INT,
        "cooldown_s": NUM,
    },
    {"problem": null(STR), "created_at": NUM, "updated_at": NUM},
)
ROUTE_ITEM: JSON = obj(
    {
        "match": STR,
        "source": {"enum": ["config", "runtime"]},
        "targets": array(TARGET),
        "fallbacks": array(TARGET),
        "retries": null(INT),
        "deadline_s": null(NUM),
    },
    {"problem": null(STR)},
)


RULES_IN_FORCE: JSON = obj(
    {
        "source": {"enum": ["config", "runtime"]},
        "rules": array(ANY_OBJECT),
        "changed_by": null(STR),
        "changed_at": null(UNIX),
        "problem": null(STR),
        "config_rules": array(ANY_OBJECT),
    }
)


def scope_answers(plural: str, kind: ScopeKind) -> dict[tuple[str, str], JSON | None]:
    base, one = f"/admin/{plural}", f"/admin/{plural}/{{name}}"
    answers: dict[tuple[str, str], JSON | None] = {
        ("get", base): page(SCOPE_WITH_USAGE),
        ("post", base): CREATED_KEY if kind is ScopeKind.KEY else CREATED_SCOPE,
        ("get", one): SCOPE_WITH_USAGE,
        ("patch", one): CREATED_SCOPE,
        ("delete", one): NO_CONTENT,
        ("post", one + "/reset-usage"): SCOPE_WITH_USAGE,
    }
    for action in ("pause", "resume", "revoke"):
        answers[("post", f"{one}/{action}")] = SCOPE
    if kind is ScopeKind.KEY:
        answers[("post", one + "/rotate")] = ROTATED_KEY
    return answers


ANSWERS: dict[tuple[str, str], JSON | None] = {
    ("get", "/admin/requests"): page(LEDGER_ENTRY),
    ("get", "/admin/requests/{request_id}"): LEDGER_ENTRY,
    ("get", "/admin/requests/{request_id}/body"): LOGGED_BODY,
    ("get", "/admin/usage"): page(USAGE_ROW),
    ("get", "/admin/summary"): SUMMARY,
    ("get", "/admin/timeseries"): TIMESERIES,
    ("get", "/admin/audit"): obj({"items": array(AUDIT_ENTRY)}, {"next_cursor": null(STR)}),
    ("get", "/admin/routing"): ROUTING,
    ("get", "/admin/settings"): SETTINGS,
    ("patch", "/admin/settings"): SETTINGS,
    ("get", "/admin/alerts/rules"): obj(
        {"defaults": array(ALERT_RULE), "items": array(ALERT_RULE)}
    ),
    ("post", "/admin/alerts/rules"): ALERT_RULE,
    ("delete", "/admin/alerts/rules/{id}"): NO_CONTENT,
    ("get", "/admin/alerts/webhooks"): obj({"items": array(WEBHOOK)}),
    ("post", "/admin/alerts/webhooks"): {**WEBHOOK, "required": [*WEBHOOK["required"], "secret"]},
    ("delete", "/admin/alerts/webhooks/{name}"): NO_CONTENT,
    ("post", "/admin/alerts/webhooks/{name}/test"): obj({"id": STR}),
    ("get", "/admin/alerts/deliveries"): obj({"items": array(DELIVERY)}),
    ("post", "/admin/hook/codes"): NEW_HOOK_CODE,
    ("get", "/admin/hook/codes"): array(HOOK_CODE),
    ("delete", "/admin/hook/codes/{id}"): NO_CONTENT,
    ("get", "/admin/hook/machines"): array(HOOK_MACHINE),
    ("post", "/admin/users/{name}/kill"): SCOPE,
    ("get", "/admin/openapi.json"): obj({"openapi": STR, "info": ANY_OBJECT, "paths": ANY_OBJECT}),
    ("get", "/admin/routing/providers"): page(PROVIDER_ITEM),
    ("post", "/admin/routing/providers"): PROVIDER_ITEM,
    ("get", "/admin/routing/providers/{name}"): PROVIDER_ITEM,
    ("patch", "/admin/routing/providers/{name}"): PROVIDER_ITEM,
    ("delete", "/admin/routing/providers/{name}"): NO_CONTENT,
    ("get", "/admin/routing/routes"): page(ROUTE_ITEM),
    ("post", "/admin/routing/routes"): ROUTE_ITEM,
    ("get", "/admin/routing/routes/{match}"): ROUTE_ITEM,
    ("patch", "/admin/routing/routes/{match}"): ROUTE_ITEM,
    ("delete", "/admin/routing/routes/{match}"): NO_CONTENT,
    ("get", "/admin/routing/rules"): RULES_IN_FORCE,
    ("put", "/admin/routing/rules"): RULES_IN_FORCE,
    ("delete", "/admin/routing/rules"): RULES_IN_FORCE,
    ("get", "/admin/me"): obj(
        {"name": STR, "role": {"enum": list(ROLES)}, "teams": array(STR), "break_glass": BOOL}
    ),
    ("get", "/admin/admins"): page(ADMIN),
    ("post", "/admin/admins"): ADMIN,
    ("get", "/admin/admins/{name}"): ADMIN,
    ("patch", "/admin/admins/{name}"): ADMIN,
    ("delete", "/admin/admins/{name}"): NO_CONTENT,
    ("post", "/admin/admins/{name}/password"): NO_CONTENT,
    ("get", "/admin/admins/{name}/tokens"): page(ADMIN_TOKEN),
    ("post", "/admin/admins/{name}/tokens"): NEW_ADMIN_TOKEN,
    ("post", "/admin/admins/{name}/tokens/{id}/revoke"): ADMIN_TOKEN,
    ("post", "/admin/admins/{name}/tokens/{id}/rotate"): NEW_ADMIN_TOKEN,
}
# Other forms of an answer, chosen by a query parameter (`format=`).
EXPORTS: dict[tuple[str, str], dict[str, JSON]] = {
    ("get", "/admin/requests"): {
        "text/csv": {
            "schema": {**STR, "description": "format=csv: a header row, one row an entry"}
        },
        "application/x-ndjson": {
            "schema": {**STR, "description": "format=ndjson: one ledger entry (JSON) a line"}
        },
    }
}


def kind_bodies(components: dict[str, JSON], kinds: dict[ScopeKind, str]) -> None:
    """Each kind's own create and update bodies (a key names its team and user, a team its
    org, nothing else names either), and the enums of a limit, in `components`."""
    limit = components.get("LimitIn")
    if limit is not None:
        props = limit["properties"]
        props["metric"] = {**props["metric"], "enum": [m.value for m in Metric]}
        props["window"] = {**props["window"], "type": "string", "pattern": WINDOW_PATTERN}
    membership = {ScopeKind.KEY: {"team", "user"}, ScopeKind.TEAM: {"org"}}
    for kind, title in kinds.items():
        own = membership.get(kind, set())
        for base in ("ScopeCreate", "ScopeUpdate"):
            schema = components[base]
            others = {"team", "user", "org"} - own
            if kind is not ScopeKind.KEY:
                others |= {"rotate_every"}  # only keys rotate
            props = {
                name: value for name, value in schema["properties"].items() if name not in others
            }
            variant = {**schema, "properties": props, "additionalProperties": False}
            variant["title"] = f"{title}{base[5:]}"
            components[variant["title"]] = variant


def body_name(kind: ScopeKind, create: bool) -> str:
    return f"{kind.name.capitalize()}{'Create' if create else 'Update'}"
