"""The admin API (`/admin/...`): keys, the ledger, usage, the audit log. JSON in and out,
errors as `{"error": {"type", "message"}}`, OpenAPI at `/admin/openapi.json`."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from capgate.config import Config
from capgate.core.affordable import shortfalls
from capgate.core.limits import Scope, ScopeKind, Status, nano_to_decimal_str
from capgate.core.windows import WindowKind, window_at
from capgate.errors import CapgateError, InvalidRequest, NotFound
from capgate.http.admin_admins import AdminRoutes
from capgate.http.admin_alerts import AlertRoutes
from capgate.http.admin_bodies import BodyRoutes
from capgate.http.admin_io import (
    choice_param,
    int_param,
    json_response,
    known_params,
    read_body,
    time_param,
)
from capgate.http.admin_json import audit_json, entry_json, limit_usage_json, usage_json
from capgate.http.admin_models import PLURALS, ScopeCreate, ScopeUpdate
from capgate.http.admin_rotation import KeyRotation
from capgate.http.admin_routing import RoutingRoutes
from capgate.http.admin_settings import SettingsRoutes
from capgate.http.admin_stats import StatsRoutes
from capgate.http.auth import PreviousAdminKey
from capgate.http.client_address import Network
from capgate.http.dialects import error_response
from capgate.http.events import EventHub
from capgate.http.hook_admin import HookAdminRoutes
from capgate.http.openapi import openapi_document
from capgate.http.roles import ledger_teams, permit, team_users
from capgate.http.sessions import AdminAccess, Caller
from capgate.keys import display_prefix, key_hash, new_key
from capgate.live_routing import LiveRouting
from capgate.runtime import RuntimeSettings
from capgate.store.base import RequestQuery, ScopeFields, Store
from capgate.store.records import USAGE_GROUPS, KeyActivity, LedgerEntry, iso, scope_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSV_COLUMNS = (
    "id", "created_at", "request_id", "key", "user", "team", "model", "provider",
    "upstream_model", "endpoint", "stream", "status", "outcome", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_ms",
    "ttft_ms", "attempts", "refusal", "error", "max_tokens_clamped", "flags",
)  # fmt: skip
REQUEST_PARAMS = (
    "key", "team", "user", "model", "provider", "status", "outcome", "request_id", "from",
    "to", "limit", "cursor", "format",
)  # fmt: skip
OUTCOMES = ("ok", "error", "cancelled", "refused", "lease_expired")
MAX_PAGE = 10_000
# Any name but a slash: names made before the alphabet (core/bounds.py) may hold `{`, `}`,
# spaces, ...; aiohttp's default `{name}` stops at braces, so those were unreachable.
NAME_SEGMENT = "/{name:[^/]+}"
# Headers on every admin answer: JSON that no browser should sniff, frame or cache.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class AdminAPI:
    def __init__(
        self,
        store: Store,
        admin_digest: bytes,
        clock: Callable[[], float] = time.time,
        default_timezone: str = "UTC",
        runtime: RuntimeSettings | None = None,
        routing: Callable[[], dict[str, Any]] | None = None,
        min_clamped_tokens: int = 1024,
        public_url: str | None = None,
        trusted_proxies: tuple[Network, ...] = (),
        live: LiveRouting | None = None,
        previous_admin: PreviousAdminKey | None = None,
    ) -> None:
        self.store = store
        self.live = live  # runtime providers and routes (None: not offered)
        self.public_url = public_url  # what hook install commands name (None: the request's)
        self.min_clamped_tokens = min_clamped_tokens  # for the "cannot pay one request" warning
        self._routing = routing  # the providers' health and the routes, for /admin/routing
        self.runtime = runtime or RuntimeSettings(
            Config.model_validate({"server": {"timezone": default_timezone}})
        )
        self.access = AdminAccess(store, admin_digest, trusted_proxies, previous=previous_admin)
        self.events = EventHub(store)
        self.clock = clock

    @property
    def default_timezone(self) -> str:
        """For scopes created without one, and for the overview's calendar periods."""
        return self.runtime.timezone

    def routes(self) -> list[web.RouteDef]:
        h = self._guard
        out = [web.get("/admin/openapi.json", self.openapi)]
        for kind, plural in PLURALS.items():
            base = f"/admin/{plural}"
            one = base + NAME_SEGMENT
            scopes = _ScopeRoutes(self, kind)
            out += [
                web.post(base, h(scopes.create)),
                web.get(base, h(scopes.list)),
                web.get(one, h(scopes.show)),
                web.patch(one, h(scopes.update)),
                web.delete(one, h(scopes.delete)),
                web.post(one + "/pause", h(scopes.status(Status.PAUSED))),
                web.post(one + "/resume", h(scopes.status(Status.ACTIVE))),
                web.post(one + "/revoke", h(scopes.status(Status.REVOKED))),
                web.post(one + "/reset-usage", h(scopes.reset_usage)),
            ]
        rotation = KeyRotation(self.store)
        out.append(web.post(f"/admin/keys{NAME_SEGMENT}/rotate", h(rotation.rotate)))
        stats, settings = StatsRoutes(self), SettingsRoutes(self)
        out += [
            web.get("/admin/requests", h(self.requests)),
            web.get("/admin/requests/{request_id}", h(self.request)),
            *BodyRoutes(self.store).routes(h),
            web.get("/admin/usage", h(self.usage)),
            web.get("/admin/summary", h(stats.summary)),
            web.get("/admin/timeseries", h(stats.timeseries)),
            web.get("/admin/audit", h(self.audit)),
            web.get("/admin/routing", h(self.routing)),
            web.get("/admin/settings", h(settings.show)),
            web.patch("/admin/settings", h(settings.update)),
            web.get("/admin/events", h(self.live_feed)),
        ]
        out += HookAdminRoutes(self.store, self.clock, self.public_url).routes(h)
        out += AlertRoutes(self).routes(h)
        if self.live is not None:
            out += RoutingRoutes(self.store, self.live).routes(h)
        out += AdminRoutes(self).routes(h)
        return out

    async def live_feed(self, request: web.Request) -> web.StreamResponse:
        """The live feed; a team admin's shows only their teams' requests."""
        return await self.events.stream(request, request["caller"].teams)

    async def routing(self, request: web.Request) -> web.StreamResponse:
        """Each provider's health as this process sees it (cooling down or not, recent
        failures) and the configured routes."""
        return json_response(self._routing() if self._routing is not None else {"providers": []})

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                caller = await self.access.authenticate(request)
                await permit(request, caller, self.store)
                request["actor"] = caller.actor
                request["caller"] = caller
                response = await handler(request)
            except CapgateError as exc:
                response = error_response("admin", exc)
            if not response.prepared:  # a stream has sent its headers already
                response.headers.update(SECURITY_HEADERS)
            return response

        return guarded

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document())

    # -- ledger ------------------------------------------------------------------------

    async def requests(self, request: web.Request) -> web.StreamResponse:
        params = request.query
        known_params(params, REQUEST_PARAMS)
        fmt = params.get("format", "json")
        if fmt not in ("json", "csv", "ndjson"):
            raise InvalidRequest("format: one of json, csv, ndjson")
        everything = params.get("limit") == "all"
        if everything and fmt == "json":
            raise InvalidRequest("limit: `all` is for format=csv or ndjson")
        page = MAX_PAGE if everything else min(int_param(params, "limit", 1) or 100, MAX_PAGE)
        query = RequestQuery(
            key=params.get("key") or None,
            **ledger_teams(request["caller"], params.get("team") or None),
            user=params.get("user") or None,
            model=params.get("model") or None,
            provider=params.get("provider") or None,
            status=int_param(params, "status", 0, maximum=999),
            outcome=choice_param(params, "outcome", OUTCOMES),
            request_id=params.get("request_id") or None,
            since=time_param(params, "from"),
            until=time_param(params, "to"),
            limit=page + 1,
            cursor=int_param(params, "cursor"),
        )
        if everything:
            return await self._export_all(request, query, fmt)
        entries = await self.store.query_requests(query)
        next_cursor = None
        if len(entries) == query.limit:
            entries = entries[:-1]
            next_cursor = str(entries[-1].id)
        items = [entry_json(entry) for entry in entries]
        if fmt == "json":
            return json_response({"items": items, "next_cursor": next_cursor})
        headers = {"x-next-cursor": next_cursor} if next_cursor else {}
        if fmt == "ndjson":
            body = b"".join(orjson.dumps(item) + b"\n" for item in items)
            return web.Response(body=body, content_type="application/x-ndjson", headers=headers)
        headers["content-disposition"] = 'attachment; filename="capgate-requests.csv"'
        return web.Response(text=_csv(items, header=True), content_type="text/csv", headers=headers)

    async def request(self, request: web.Request) -> web.Response:
        """One ledger entry by the `x-capgate-request-id` its client was answered with."""
        known_params(request.query, ())
        request_id = request.match_info["request_id"]
        found = await self.store.query_requests(RequestQuery(request_id=request_id, limit=1))
        if not found or not request["caller"].sees_team(found[0].team):
            raise NotFound(f"no request with id {request_id!r} in the ledger")
        return json_response(entry_json(found[0]))

    async def _export_all(
        self, request: web.Request, query: RequestQuery, fmt: str
    ) -> web.StreamResponse:
        """Every entry the filters select, streamed page by page (`limit=all`)."""
        response = web.StreamResponse(headers=SECURITY_HEADERS)
        if fmt == "csv":
            response.content_type = "text/csv"
            response.headers["content-disposition"] = 'attachment; filename="capgate-requests.csv"'
        else:
            response.content_type = "application/x-ndjson"
        response.enable_chunked_encoding()
        await response.prepare(request)
        first = True
        async for page in self._pages(query):
            items = [entry_json(entry) for entry in page]
            if fmt == "csv":
                await response.write(_csv(items, header=first).encode())
            else:
                await response.write(b"".join(orjson.dumps(item) + b"\n" for item in items))
            first = False
        if first and fmt == "csv":
            await response.write(_csv([], header=True).encode())
        await response.write_eof()
        return response

    async def _pages(self, query: RequestQuery) -> AsyncIterator[list[LedgerEntry]]:
        while True:
            items = await self.store.query_requests(query)
            if not items:
                return
            yield items[:MAX_PAGE]
            if len(items) <= MAX_PAGE:
                return
            query = replace(query, cursor=items[MAX_PAGE - 1].id)

    async def usage(self, request: web.Request) -> web.Response:
        known_params(request.query, ("group_by", "from", "to"))
        group_by = request.query.get("group_by", "key")
        if group_by not in USAGE_GROUPS:
            raise InvalidRequest(f"group_by: one of {', '.join(USAGE_GROUPS)}")
        rows = await self.store.usage(
            group_by, time_param(request.query, "from"), time_param(request.query, "to")
        )
        items = [usage_json(row, group_by) for row in rows]
        return json_response({"items": items, "next_cursor": None})

    async def audit(self, request: web.Request) -> web.Response:
        known_params(request.query, ("limit",))
        limit = min(int_param(request.query, "limit", 1) or 100, MAX_PAGE)
        items = [audit_json(entry) for entry in await self.store.audit(limit)]
        return json_response({"items": items, "next_cursor": None})


def _csv(items: list[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS)
    for item in items:
        row = dict(item)
        if row["refusal"] is not None:
            row["refusal"] = row["refusal"]["message"]
        row["flags"] = ",".join(row["flags"]) or None
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return out.getvalue()


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
        if "rotate_every" in spec.model_fields_set and self.kind is not ScopeKind.KEY:
            raise InvalidRequest(f"rotate_every: only keys rotate, not a {self.kind.value}")
        fields = spec.to_fields()
        if fields.expires_at is not None and fields.expires_at <= self.api.clock():
            raise InvalidRequest(
                f"expires_at: {spec.expires_at} is in the past; give a later date or time, "
                "or pause or revoke the key to stop it now"
            )
        return fields

    def _answer(self, scope: Scope, **extra: Any) -> dict[str, Any]:
        """A created or changed scope, with `warnings` for limits that cannot pay one
        request of Claude Code on any model the scope may use."""
        table = self.api.runtime.pricing
        prices = {m: p for m in table.models() if (p := table.lookup(m)) is not None}
        minimum = self.api.min_clamped_tokens
        warnings = [s.message(minimum) for s in shortfalls(scope, prices, minimum)]
        return {**scope_json(scope), **extra, "warnings": warnings}

    async def create(self, request: web.Request) -> web.Response:
        spec: ScopeCreate = await read_body(request, ScopeCreate)
        fields = self._fields(spec)
        if fields.timezone is None:
            fields = replace(fields, timezone=self.api.default_timezone)
        store = self.api.store
        if self.kind is not ScopeKind.KEY:
            scope = await store.create_scope(self.kind, spec.name, fields, actor=request["actor"])
            return json_response(self._answer(scope), status=201)
        key_id, raw = new_key()
        scope = await store.create_scope(
            ScopeKind.KEY, spec.name, fields, scope_id=key_id, secret_hash=key_hash(raw),
            prefix=display_prefix(raw), actor=request["actor"],
        )  # fmt: skip
        return json_response(self._answer(scope, key=raw), status=201)

    async def list(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        now = self.api.clock()
        items = []
        for scope in await self._visible(request["caller"]):
            usage = await self.api.store.counters(scope, now)
            items.append({**scope_json(scope), "usage": [limit_usage_json(u) for u in usage]})
        if self.kind is ScopeKind.KEY:
            await self._add_activity(items, now)
        return json_response({"items": items, "next_cursor": None})

    async def _visible(self, caller: Caller) -> Iterable[Scope]:
        """The scopes of this kind `caller` may see: a team admin's teams, their keys,
        and those keys' users."""
        scopes = await self.api.store.list_scopes(self.kind)
        teams = caller.teams
        if teams is None:
            return scopes
        if self.kind is ScopeKind.KEY:
            return [s for s in scopes if s.extra.get("team") in teams]
        if self.kind is ScopeKind.TEAM:
            return [s for s in scopes if s.name in teams]
        if self.kind is ScopeKind.USER:
            users = await team_users(self.api.store, teams)
            return [s for s in scopes if s.name in users]
        return []

    async def _add_activity(self, items: Iterable[dict[str, Any]], now: float) -> None:
        """Each key's spend today and this month (calendar, in the default timezone, as on
        the overview) and when it was last used."""
        tz = self.api.default_timezone
        day, month = window_at(WindowKind.DAY, now, tz), window_at(WindowKind.MONTH, now, tz)
        activity = await self.api.store.key_activity(day.start, month.start)
        for item in items:
            found = activity.get(item["id"], KeyActivity())
            item["spend"] = {
                "today": nano_to_decimal_str(found.today_nano),
                "month": nano_to_decimal_str(found.month_nano),
                "timezone": tz,
            }
            item["last_used_at"] = iso(found.last_used_at)

    async def show(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        scope = await self.api.store.get_scope(self.kind, name)
        usage = await self.api.store.counters(scope, self.api.clock())
        shown = {**scope_json(scope), "usage": [limit_usage_json(u) for u in usage]}
        if self.kind in (ScopeKind.TEAM, ScopeKind.USER, ScopeKind.ORG):
            shown["members"] = await self.api.store.members(self.kind, name)
            if self.kind is ScopeKind.USER and request["caller"].teams is not None:
                keys = {
                    k.name
                    for k in await _ScopeRoutes(self.api, ScopeKind.KEY)._visible(request["caller"])
                }
                shown["members"]["keys"] = [
                    k for k in shown["members"].get("keys", []) if k in keys
                ]
        return json_response(shown)

    async def update(self, request: web.Request) -> web.Response:
        spec: ScopeUpdate = await read_body(request, ScopeUpdate)
        name = request.match_info["name"]
        fields = self._fields(spec)
        scope = await self.api.store.update_scope(self.kind, name, fields, request["actor"])
        return json_response(self._answer(scope))

    async def delete(self, request: web.Request) -> web.Response:
        await self.api.store.delete_scope(self.kind, request.match_info["name"], request["actor"])
        return web.Response(status=204)

    def status(self, status: Status) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            store, actor = self.api.store, request["actor"]
            if self.kind is ScopeKind.USER and status is Status.ACTIVE:  # and a kill's mark
                scope = await store.resume_user(name, actor)
            else:
                scope = await store.set_status(self.kind, name, status, actor)
            return json_response(scope_json(scope))

        return handler

    async def reset_usage(self, request: web.Request) -> web.Response:
        await self.api.store.reset_usage(self.kind, request.match_info["name"], request["actor"])
        return await self.show(request)
