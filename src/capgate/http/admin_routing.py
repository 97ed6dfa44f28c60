"""`/admin/routing/providers` and `/admin/routing/routes`: upstream providers and the
routes to them, created, changed and removed while the server runs (`capgate.live_routing`);
`/admin/routing/rules`: the routing rules in force, replaced whole or reset to the file's.

(`/admin/providers` is taken: it is the provider *budget* scope.) An API key goes in and
never comes out: answers show its `api_key_fingerprint` only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ConfigDict, Field

from capgate.errors import InvalidRequest
from capgate.http.admin_io import json_response, known_params, read_body, undecodable_body
from capgate.live_routing import LiveRouting
from capgate.rules.live import rules_of
from capgate.store.base import Store

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[Handler], Handler]


class ProviderBody(BaseModel):
    """A runtime provider's fields; on PATCH, the ones given change (null: the default)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="POST only: letters, digits, `_`, `.`, `-`")
    type: str | None = Field(None, description="anthropic | openai | openai-compatible | mock")
    base_url: str | None = Field(None, description="http(s)://host[:port][/path]")
    api_key: str | None = Field(
        None, min_length=1, description="write-only; PATCH: omitted keeps it, null removes it"
    )
    headers: dict[str, str] | None = Field(None, description="extra headers sent upstream")
    connect_timeout_s: float | None = None
    first_byte_timeout_s: float | None = None
    read_timeout_s: float | None = None
    timeout_s: float | None = None
    max_connections: int | None = None
    cooldown_after: int | None = None
    cooldown_s: float | None = None

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k != "api_key"}


class RouteBody(BaseModel):
    """A runtime route, validated as a `models` entry of the config file."""

    model_config = ConfigDict(extra="forbid")
    match: str | None = Field(None, description="POST only: a model name or glob")
    targets: list[dict[str, Any]] | None = None
    fallbacks: list[dict[str, Any]] | None = None
    retries: int | None = None
    deadline_s: float | None = None

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k != "match"}


class RulesBody(BaseModel):
    """The whole ordered list of routing rules, as the config file's `rules:`."""

    model_config = ConfigDict(extra="forbid")
    rules: Any = Field(description="a list of rules: {name, when, then}")


class RoutingRoutes:
    def __init__(self, store: Store, live: LiveRouting) -> None:
        self.store = store
        self.live = live

    def routes(self, guard: Guard) -> list[web.RouteDef]:
        providers, routes = "/admin/routing/providers", "/admin/routing/routes"
        return [
            web.get(providers, guard(self.list_providers)),
            web.post(providers, guard(self.create_provider)),
            web.get(providers + "/{name:[^/]+}", guard(self.show_provider)),
            web.patch(providers + "/{name:[^/]+}", guard(self.update_provider)),
            web.delete(providers + "/{name:[^/]+}", guard(self.delete_provider)),
            web.get(routes, guard(self.list_routes)),
            web.post(routes, guard(self.create_route)),
            # A match may hold slashes (`meta-llama/*`): the rest of the path is the match.
            web.get(routes + "/{match:.+}", guard(self.show_route)),
            web.patch(routes + "/{match:.+}", guard(self.update_route)),
            web.delete(routes + "/{match:.+}", guard(self.delete_route)),
            web.get("/admin/routing/rules", guard(self.show_rules)),
            web.put("/admin/routing/rules", guard(self.set_rules)),
            web.delete("/admin/routing/rules", guard(self.reset_rules)),
        ]

    # -- providers ---------------------------------------------------------------------

    async def list_providers(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        await self.live.refresh(self.store)
        return json_response({"items": self.live.provider_items(), "next_cursor": None})

    async def show_provider(self, request: web.Request) -> web.Response:
        await self.live.refresh(self.store)
        return json_response(self.live.provider(request.match_info["name"]))

    async def create_provider(self, request: web.Request) -> web.Response:
        body: ProviderBody = await read_body(request, ProviderBody)
        if body.name is None or body.type is None:
            raise InvalidRequest(f"{'name' if body.name is None else 'type'}: required")
        data = {k: v for k, v in body.fields().items() if v is not None}
        await self.live.create_provider(self.store, data, body.api_key, request["actor"])
        return json_response(self.live.provider(body.name), status=201)

    async def update_provider(self, request: web.Request) -> web.Response:
        body: ProviderBody = await read_body(request, ProviderBody)
        name = request.match_info["name"]
        if body.name is not None and body.name != name:
            raise InvalidRequest("name: cannot change; add a new provider and remove this one")
        changes = body.fields()
        changes.pop("name", None)
        # api_key: omitted keeps the stored one, null removes it.
        api_key = None if "api_key" not in body.model_fields_set else (body.api_key or "")
        await self.live.update_provider(self.store, name, changes, api_key, request["actor"])
        return json_response(self.live.provider(name))

    async def delete_provider(self, request: web.Request) -> web.Response:
        await self.live.delete_provider(self.store, request.match_info["name"], request["actor"])
        return web.Response(status=204)

    # -- routes ------------------------------------------------------------------------

    async def list_routes(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        await self.live.refresh(self.store)
        return json_response({"items": self.live.route_items(), "next_cursor": None})

    async def show_route(self, request: web.Request) -> web.Response:
        await self.live.refresh(self.store)
        return json_response(self.live.route(request.match_info["match"]))

    async def create_route(self, request: web.Request) -> web.Response:
        body: RouteBody = await read_body(request, RouteBody)
        if not body.match:
            raise InvalidRequest("match: required")
        settings = {k: v for k, v in body.fields().items() if v is not None}
        await self.live.create_route(self.store, body.match, settings, request["actor"])
        return json_response(self.live.route(body.match), status=201)

    async def update_route(self, request: web.Request) -> web.Response:
        body: RouteBody = await read_body(request, RouteBody)
        match = request.match_info["match"]
        if body.match is not None and body.match != match:
            raise InvalidRequest("match: cannot change; add a new route and remove this one")
        await self.live.update_route(self.store, match, body.fields(), request["actor"])
        return json_response(self.live.route(match))

    async def delete_route(self, request: web.Request) -> web.Response:
        await self.live.delete_route(self.store, request.match_info["match"], request["actor"])
        return web.Response(status=204)

    # -- rules -------------------------------------------------------------------------

    async def show_rules(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        await self.live.refresh(self.store)
        return json_response(self.live.rules_json())

    async def set_rules(self, request: web.Request) -> web.Response:
        if request.content_type in YAML_TYPES:  # the dashboard's editor, a file as is
            rules = rules_of(_yaml(await _text(request)))
        else:
            rules = (await read_body(request, RulesBody)).rules
        await self.live.set_rules(self.store, rules, request["actor"])
        return json_response(self.live.rules_json())

    async def reset_rules(self, request: web.Request) -> web.Response:
        await self.live.reset_rules(self.store, request["actor"])
        return json_response(self.live.rules_json())


def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"body: not valid YAML: {str(exc).splitlines()[0]}") from None


async def _text(request: web.Request) -> str:
    try:
        raw = await request.read()
    except (BadHttpMessage, RequestPayloadError):
        raise InvalidRequest(undecodable_body(request)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("body: YAML must be UTF-8 text") from None
