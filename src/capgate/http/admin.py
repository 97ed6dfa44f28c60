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
from capgate.http.admin_models import KeyCreate, KeyUpdate, parse_time
from capgate.http.auth import AdminAuthenticator
from capgate.http.dialects import error_response
from capgate.http.openapi import openapi_document
from capgate.keys import display_prefix, key_hash, new_key
from capgate.store.base import RequestQuery
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
    ) -> None:
        self._store = store
        self._default_timezone = default_timezone  # for keys created without one
        self._auth = AdminAuthenticator(admin_digest)
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        h = self._guard
        return [
            web.get("/admin/openapi.json", self.openapi),
            web.post("/admin/keys", h(self.create_key)),
            web.get("/admin/keys", h(self.list_keys)),
            web.get("/admin/keys/{name}", h(self.show_key)),
            web.patch("/admin/keys/{name}", h(self.update_key)),
            web.delete("/admin/keys/{name}", h(self.delete_key)),
            web.post("/admin/keys/{name}/pause", h(self.pause_key)),
            web.post("/admin/keys/{name}/resume", h(self.resume_key)),
            web.post("/admin/keys/{name}/revoke", h(self.revoke_key)),
            web.post("/admin/keys/{name}/reset-usage", h(self.reset_usage)),
            web.get("/admin/requests", h(self.requests)),
            web.get("/admin/usage", h(self.usage)),
            web.get("/admin/audit", h(self.audit)),
        ]

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

    # -- keys --------------------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        spec: KeyCreate = await _body(request, KeyCreate)
        fields = spec.to_fields()
        if fields.timezone is None:
            fields = replace(fields, timezone=self._default_timezone)
        key_id, raw = new_key()
        scope = await self._store.create_key(
            spec.name, key_id, key_hash(raw), display_prefix(raw), fields
        )
        return _json({**scope_json(scope), "key": raw}, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        now = self._clock()
        items = []
        for scope in await self._store.list_keys():
            items.append({**scope_json(scope), "usage": await self._store.counters(scope, now)})
        return _json({"items": items, "next_cursor": None})

    async def show_key(self, request: web.Request) -> web.Response:
        scope = await self._store.get_key(request.match_info["name"])
        usage = await self._store.counters(scope, self._clock())
        return _json({**scope_json(scope), "usage": usage})

    async def update_key(self, request: web.Request) -> web.Response:
        spec: KeyUpdate = await _body(request, KeyUpdate)
        scope = await self._store.update_key(request.match_info["name"], spec.to_fields(), "admin")
        return _json(scope_json(scope))

    async def delete_key(self, request: web.Request) -> web.Response:
        await self._store.delete_key(request.match_info["name"], "admin")
        return web.Response(status=204)

    async def _set_status(self, request: web.Request, status: Status) -> web.Response:
        scope = await self._store.set_key_status(request.match_info["name"], status, "admin")
        return _json(scope_json(scope))

    async def pause_key(self, request: web.Request) -> web.Response:
        return await self._set_status(request, Status.PAUSED)

    async def resume_key(self, request: web.Request) -> web.Response:
        return await self._set_status(request, Status.ACTIVE)

    async def revoke_key(self, request: web.Request) -> web.Response:
        return await self._set_status(request, Status.REVOKED)

    async def reset_usage(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._store.reset_usage(ScopeKind.KEY, name, "admin")
        return await self.show_key(request)

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
        items = await self._store.query_requests(query)
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
        items = await self._store.usage(
            group_by, _time_param(request.query, "from"), _time_param(request.query, "to")
        )
        return _json({"items": items, "next_cursor": None})

    async def audit(self, request: web.Request) -> web.Response:
        limit = min(_int_param(request.query, "limit") or 100, MAX_PAGE)
        return _json({"items": await self._store.audit(limit), "next_cursor": None})


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
