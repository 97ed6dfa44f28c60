"""What a key may ask about itself, authenticated like the gateway's endpoints but
neither budgeted nor recorded: `/v1/me` (its limits, used and left: `capgate status`),
`/v1/models` (the models it may use) and `/v1/messages/count_tokens` (free upstream)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from capgate.core.engine import check_access
from capgate.core.estimate import anthropic_facts
from capgate.core.windows import format_reset
from capgate.errors import CapgateError, InvalidRequest, refusal_error
from capgate.http.admin_json import limit_usage_json
from capgate.http.answer_headers import answer_headers
from capgate.http.dialects import is_dialect_body
from capgate.pricing import PricingTable
from capgate.providers.base import Endpoint
from capgate.routing import Router
from capgate.store.base import Store
from capgate.store.records import LimitUsage
from capgate.wire.translate_errors import error_to_anthropic

if TYPE_CHECKING:
    from capgate.http.gateway import Gateway


class KeyInfo:
    def __init__(
        self,
        gateway: Gateway,
        store: Store,
        router: Router,
        pricing: PricingTable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway  # authentication, body reading, request ids, refusals
        self._store = store
        self._router = router
        self._pricing = pricing
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages/count_tokens", self.count_tokens),
            web.get("/v1/models", self.models),
            web.get("/v1/me", self.me),
        ]

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Free on every provider: authenticated and routed, not budgeted or recorded."""
        request_id = self._gateway.new_request_id()
        try:
            key = await self._gateway.authenticate(request, standing=True)
            raw, body = await self._gateway.read_json(request)
            facts = anthropic_facts(body)
            route = self._router.resolve(facts.model, Endpoint.MESSAGES)
            refusal = check_access((key,), (facts.model, route.upstream_model), self._clock())
            if refusal is not None:
                raise refusal_error(refusal, self._clock())
            if not route.provider.supports(Endpoint.COUNT_TOKENS):
                raise InvalidRequest(f'provider "{route.provider.name}" cannot count tokens')
            if route.upstream_model != facts.model:
                raw = orjson.dumps({**body, "model": route.upstream_model})
            answer = await route.provider.send(Endpoint.COUNT_TOKENS, raw, request.headers)
            data = await answer.read()
        except CapgateError as exc:
            return self._gateway.refused(request, "anthropic", exc, request_id)
        headers = answer_headers(answer, None)
        headers["x-capgate-request-id"] = request_id
        if answer.status >= 400 and not is_dialect_body("anthropic", data):
            # An error page of a proxy, or an OpenAI-shaped body: the Anthropic SDK (and
            # Claude Code) parse only Anthropic's error shape. The status passes on.
            data = error_to_anthropic(answer.status, data)
            headers["content-type"] = "application/json"
        return web.Response(status=answer.status, body=data, headers=headers)

    async def me(self, request: web.Request) -> web.StreamResponse:
        """The caller's own key: its limits with what is used, held and left, and when
        each resets (in the key's timezone too). What `capgate status` prints."""
        dialect = "anthropic" if "anthropic-version" in request.headers else "openai"
        request_id = self._gateway.new_request_id()
        now = self._clock()
        try:
            key = await self._gateway.authenticate(request, standing=True)
            usage = _limits(await self._store.counters(key, now), key.timezone)
            above = []
            for scope in self._store.scopes_above(key):
                rows = _limits(await self._store.counters(scope, now), scope.timezone)
                above.append(
                    {
                        "kind": scope.kind.value,
                        "name": scope.name,
                        "status": scope.status.value,
                        "limits": rows,
                    }
                )
        except CapgateError as exc:
            return self._gateway.refused(request, dialect, exc, request_id)
        payload = {
            "key": key.name,
            "status": key.status.value,
            "team": key.extra.get("team"),
            "user": key.extra.get("user"),
            "models": list(key.models),
            "timezone": key.timezone,
            "on_short_budget": "clamp" if key.clamp else "reject",
            "expires_at": key.expires_at,
            "limits": usage,
            "scopes": above,  # the user, team and org above the key, with their limits
        }
        return _json(payload, request_id)

    async def models(self, request: web.Request) -> web.StreamResponse:
        dialect = "anthropic" if "anthropic-version" in request.headers else "openai"
        request_id = self._gateway.new_request_id()
        try:
            key = await self._gateway.authenticate(request, standing=True)
        except CapgateError as exc:
            return self._gateway.refused(request, dialect, exc, request_id)
        names = [
            m for m in self._router.listed_models(self._pricing.models()) if key.allows_model(m)
        ]
        items = [
            {"id": n, "object": "model", "type": "model", "display_name": n, "owned_by": "capgate",
             "created": 0, "created_at": "1970-01-01T00:00:00Z"}
            for n in names
        ]  # fmt: skip
        # One shape both SDKs parse: OpenAI's list plus Anthropic's paging fields.
        payload = {
            "object": "list",
            "data": items,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
        return _json(payload, request_id)


def _limits(usage: list[LimitUsage], timezone: str) -> list[dict[str, Any]]:
    """Each limit as the admin API shows it, with when it resets in `timezone` too."""
    out = []
    for item in usage:
        shown = limit_usage_json(item)
        shown["resets"] = format_reset(item.resets_at, timezone)
        out.append(shown)
    return out


def _json(payload: dict[str, Any], request_id: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={"x-capgate-request-id": request_id},
    )
