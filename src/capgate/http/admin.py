"""The admin API (`/admin/...`): keys, the ledger, usage, the audit log. JSON in and out,
errors as `{"error": {"type", "message"}}`, OpenAPI at `/admin/openapi.json`."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from capgate.core.limits import ScopeKind, Status
from capgate.errors import CapgateError, InvalidRequest
from capgate.http.admin_models import PLURALS, ScopeCreate, ScopeUpdate, parse_time
from capgate.http.auth import AdminAuthenticator
from capgate.http.dialects import error_response
from capgate.http.openapi import openapi_document
from capgate.keys import display_prefix, key_hash, new_key
from capgate.store.base import RequestQuery, ScopeFields
from capgate.store.sqlite import SQLiteStore
from capgate.store.sqlite_queries import GROUPS, scope_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSV_COLUMNS = (
    "id", "created_at", "request_id", "key", "user", "team", "model", "provider",
    "upstream_model", "endpoint", "stream", "status", "outcome", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_ms",
    "ttft_ms", "attempts", "refusal", "error",
)  # fmt: skip
MAX_PAGE = 10_000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise InvalidRequest("Content-Type must be application/json.")
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidRequest("; ".join(problems)) from None


class AdminAPI:
    def __init__(
        self,
        store: SQLiteStore,
        admin_digest: bytes,
        clock: Callable[[], float] = time.time,
        default_timezone: str = "UTC",
        routing: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self._routing = routing  # the providers' health and the routes, for /admin/routing
        self.default_timezone = default_timezone  # for scopes created without one
        self._auth = AdminAuthenticator(admin_digest)
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        h = self._guard
        out = [web.get("/admin/openapi.json", self.openapi)]
        for kind, plural in PLURALS.items():
            base = f"/admin/{plural}"
            scopes = _ScopeRoutes(self, kind)
            out += [
                web.post(base, h(scopes.create)),
                web.get(base, h(scopes.list)),
                web.get(base + "/{name}", h(scopes.show)),
                web.patch(base + "/{name}", h(scopes.update)),
                web.delete(base + "/{name}", h(scopes.delete)),
                web.post(base + "/{name}/pause", h(scopes.status(Status.PAUSED))),
                web.post(base + "/{name}/resume", h(scopes.status(Status.ACTIVE))),
                web.post(base + "/{name}/revoke", h(scopes.status(Status.REVOKED))),
                web.post(base + "/{name}/reset-usage", h(scopes.reset_usage)),
            ]
        out += [
            web.get("/admin/requests", h(self.requests)),
            web.get("/admin/usage", h(self.usage)),
            web.get("/admin/audit", h(self.audit)),
            web.get("/admin/routing", h(self.routing)),
        ]
        return out

    async def routing(self, request: web.Request) -> web.StreamResponse:
        """Each provider's health as this process sees it (cooling down or not, recent
        failures) and the configured routes."""
        return _json(self._routing() if self._routing is not None else {"providers": []})

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                self._auth.check(request.headers)
                return await handler(request)
            except CapgateError as exc:
                return error_response("admin", exc)

        return guarded

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    # -- ledger ------------------------------------------------------------------------

    async def requests(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        fmt = params.get("format", "json")
        if fmt not in ("json", "csv", "ndjson"):
            raise InvalidRequest("format: one of json, csv, ndjson")
        query = RequestQuery(
            key=params.get("key"),
            team=params.get("team"),
            user=params.get("user"),
            model=params.get("model"),
            provider=params.get("provider"),
            status=_int_param(params, "status"),
            outcome=params.get("outcome"),
            since=_time_param(params, "from"),
            until=_time_param(params, "to"),
            limit=min(_int_param(params, "limit") or 100, MAX_PAGE) + 1,
            cursor=_int_param(params, "cursor"),
        )
        items = await self.store.query_requests(query)
        next_cursor = None
        if len(items) == query.limit:
            items = items[:-1]
            next_cursor = str(items[-1]["id"])
        if fmt == "json":
            return _json({"items": items, "next_cursor": next_cursor})
        headers = {"x-next-cursor": next_cursor} if next_cursor else {}
        if fmt == "ndjson":
            body = b"".join(orjson.dumps(item) + b"\n" for item in items)
            return web.Response(body=body, content_type="application/x-ndjson", headers=headers)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for item in items:
            row = dict(item)
            if row["refusal"] is not None:
                row["refusal"] = row["refusal"]["message"]
            writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
        headers["content-disposition"] = 'attachment; filename="capgate-requests.csv"'
        return web.Response(text=out.getvalue(), content_type="text/csv", headers=headers)

    async def usage(self, request: web.Request) -> web.Response:
        group_by = request.query.get("group_by", "key")
        if group_by not in GROUPS:
            raise InvalidRequest(f"group_by: one of {', '.join(GROUPS)}")
        items = await self.store.usage(
            group_by, _time_param(request.query, "from"), _time_param(request.query, "to")
        )
        return _json({"items": items, "next_cursor": None})

    async def audit(self, request: web.Request) -> web.Response:
        limit = min(_int_param(request.query, "limit") or 100, MAX_PAGE)
        return _json({"items": await self.store.audit(limit), "next_cursor": None})


# Which membership fields each kind takes: a key names its team and user, a team its org.
_MEMBERSHIP = {ScopeKind.KEY: {"team", "user"}, ScopeKind.TEAM: {"org"}}


class _ScopeRoutes:
    """The same nine routes for every kind of scope."""

    def __init__(self, api: AdminAPI, kind: ScopeKind) -> None:
        self.api = api
        self.kind = kind

    def _fields(self, spec: ScopeCreate | ScopeUpdate) -> ScopeFields:
        allowed = _MEMBERSHIP.get(self.kind, set())
        for name in ("team", "user", "org"):
            if name in spec.model_fields_set and name not in allowed:
                raise InvalidRequest(f"{name}: a {self.kind.value} has no {name}")
        return spec.to_fields()

    async def create(self, request: web.Request) -> web.Response:
        spec: ScopeCreate = await _body(request, ScopeCreate)
        fields = self._fields(spec)
        if fields.timezone is None:
            fields = replace(fields, timezone=self.api.default_timezone)
        store = self.api.store
        if self.kind is not ScopeKind.KEY:
            scope = await store.create_scope(self.kind, spec.name, fields)
            return _json(scope_json(scope), status=201)
        key_id, raw = new_key()
        scope = await store.create_scope(
            ScopeKind.KEY, spec.name, fields, scope_id=key_id, secret_hash=key_hash(raw),
            prefix=display_prefix(raw),
        )  # fmt: skip
        return _json({**scope_json(scope), "key": raw}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        now = self.api.clock()
        items = []
        for scope in await self.api.store.list_scopes(self.kind):
            items.append({**scope_json(scope), "usage": await self.api.store.counters(scope, now)})
        return _json({"items": items, "next_cursor": None})

    async def show(self, request: web.Request) -> web.Response:
        scope = await self.api.store.get_scope(self.kind, request.match_info["name"])
        usage = await self.api.store.counters(scope, self.api.clock())
        return _json({**scope_json(scope), "usage": usage})

    async def update(self, request: web.Request) -> web.Response:
        spec: ScopeUpdate = await _body(request, ScopeUpdate)
        name = request.match_info["name"]
        scope = await self.api.store.update_scope(self.kind, name, self._fields(spec))
        return _json(scope_json(scope))

    async def delete(self, request: web.Request) -> web.Response:
        await self.api.store.delete_scope(self.kind, request.match_info["name"])
        return web.Response(status=204)

    def status(self, status: Status) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            return _json(scope_json(await self.api.store.set_status(self.kind, name, status)))

        return handler

    async def reset_usage(self, request: web.Request) -> web.Response:
        await self.api.store.reset_usage(self.kind, request.match_info["name"])
        return await self.show(request)


def _int_param(params: Any, name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{name}: must be a whole number") from None


def _time_param(params: Any, name: str) -> float | None:
    try:
        return parse_time(params.get(name))
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
