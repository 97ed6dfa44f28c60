"""The client-facing endpoints: authenticate, reserve, forward, relay, settle.

One request's way, with no back-and-forth: parse only the fields the engine needs, ask
the store for an atomic reservation of the worst case, forward the body (untouched unless
capgate had to set something), relay the answer as it arrives while a tap reads its usage,
then queue the settlement. The settlement is queued *before* the answer's last bytes are
written, so by the time a client has its answer, any later read of the ledger sees it.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from capgate.bodylog.service import BodyLog
from capgate.config import ServerConfig
from capgate.core.engine import Amounts, OutputFlex, Refusal, check_standing
from capgate.core.estimate import (
    RequestFacts,
    anthropic_facts,
    cap_server_tools,
    hidden_costs,
    input_bound,
    openai_chat_facts,
    responses_facts,
)
from capgate.core.limits import Metric, Scope
from capgate.core.money import Price
from capgate.errors import (
    CapgateError,
    InvalidRequest,
    PayloadTooLarge,
    StoreUnavailable,
    UnsupportedMediaType,
    UpstreamFailed,
    refusal_error,
)
from capgate.http.admin_io import undecodable_body
from capgate.http.admission import (
    Admission,
    Pricer,
    hidden_bound,
    thinking_budget,
    worst_case,
)
from capgate.http.auth import KeyAuthenticator
from capgate.http.call import Call, CallPath
from capgate.http.dialects import CLAUDE_CODE, client_of, client_status, error_response, for_client
from capgate.http.door import GatewayRequest, Handler
from capgate.http.extensions import CallFacts, Extensions, RoutePolicy
from capgate.http.key_info import KeyInfo
from capgate.http.settler import Backoff, Settler
from capgate.http.translation import Translation
from capgate.logs import AccessLog
from capgate.metrics import Metrics
from capgate.pricing import PricingTable
from capgate.providers.base import Endpoint
from capgate.routing import Route, Router
from capgate.store.base import RequestInfo, Reservation, Store
from capgate.wire.duplicates import duplicate_key

if TYPE_CHECKING:  # only imported when tracing is on (it imports OpenTelemetry)
    from capgate.traces import Traces

log = logging.getLogger(__name__)

_FACTS: dict[Endpoint, Callable[[Any], RequestFacts]] = {
    Endpoint.MESSAGES: anthropic_facts,
    Endpoint.CHAT: openai_chat_facts,
    Endpoint.RESPONSES: responses_facts,
}


class Gateway:
    def __init__(
        self,
        store: Store,
        router: Router,
        pricing: PricingTable,
        settings: ServerConfig,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        traces: Traces | None = None,
        body_log: BodyLog | None = None,
        extensions: Extensions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._body_log = body_log  # prompt and answer logging (capgate.bodylog)
        self._router = router
        self._pricing = pricing
        self._pricer = Pricer(pricing, settings.allow_unpriced_models)
        self._settings = settings
        self._clock = clock
        self._auth = KeyAuthenticator(store, clock)
        self._ids = itertools.count(1)
        self._id_prefix = "req_" + os.urandom(6).hex()
        self._max_bytes = int(settings.max_request_mb * 1024 * 1024)
        self._extensions = extensions or Extensions()
        # Tracing on or off is decided here, once: no check per request when it is off.
        self._traces = traces
        self._access = AccessLog(metrics=metrics) if traces is None else traces.access(metrics)
        self._call = Call if traces is None else traces.call_class
        self._settler = Settler(store, self._access)
        # What every call works with: no call reaches back into the gateway.
        self._path = CallPath(
            store, router.breakers, self._pricer, self._settler,
            Backoff(settings.retry_backoff_s, rng), body_log, self._extensions.cache,
        )  # fmt: skip

    def adopt_policies(self, policies: tuple[RoutePolicy, ...]) -> None:
        """Routing rules changed at runtime (capgate.rules.live): requests admitted from
        now on use these; one already past its rule step keeps the plan it got."""
        self._extensions = replace(self._extensions, policies=policies)

    def handlers(self) -> dict[str, Handler]:
        """The three gateway routes' handlers by path (traced when tracing is on): for
        aiohttp's router and for the fast path (http/fastserve.py)."""
        wrap = _untraced if self._traces is None else self._traces.wrap
        return {
            "/v1/messages": wrap(self.messages, "/v1/messages"),
            "/v1/chat/completions": wrap(self.chat_completions, "/v1/chat/completions"),
            "/v1/responses": wrap(self.responses, "/v1/responses"),
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            *(web.post(path, handler) for path, handler in self.handlers().items()),
            *KeyInfo(self, self._store, self._router, self._pricing, self._clock).routes(),
        ]

    async def messages(self, request: GatewayRequest) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.MESSAGES)

    async def chat_completions(self, request: GatewayRequest) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.CHAT)

    async def responses(self, request: GatewayRequest) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.RESPONSES)

    # -- admission ---------------------------------------------------------------------

    async def authenticate(self, request: GatewayRequest, *, standing: bool = False) -> Scope:
        """The caller's key. With `standing` (for the routes that reserve nothing): read
        as the store has it now, and refused when revoked, paused or expired, with the
        status and message a request to the gateway would get."""
        if not standing:
            return await self._auth.authenticate(request.headers)
        key = await self._auth.authenticate(request.headers, fresh=True)
        refusal = check_standing(key, self._clock())
        if refusal is not None:
            raise refusal_error(refusal, self._clock())
        return key

    async def read_json(self, request: GatewayRequest) -> tuple[bytes, Any]:
        if request.content_type != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {request.content_type or 'missing'}."
            )
        if request.content_length is not None and request.content_length > self._max_bytes:
            raise PayloadTooLarge(self._too_large())
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(self._too_large()) from None
        except (BadHttpMessage, RequestPayloadError):  # not what its Content-Encoding says
            raise InvalidRequest(undecodable_body(request)) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
        twice = duplicate_key(raw, body)
        if twice is not None:  # parsers differ on which one wins: the price could be wrong
            raise InvalidRequest(
                f'The request body has the key "{twice}" more than once in one object; '
                "JSON parsers disagree on which one counts, so capgate refuses it. Send it once."
            )
        return raw, body

    def _too_large(self) -> str:
        return f"The request body is larger than this gateway's limit of {self._settings.max_request_mb:g} MB."

    def _prepare(
        self, body: dict[str, Any], facts: RequestFacts, route: Route, endpoint: Endpoint
    ) -> tuple[bool, int, str, bool]:
        """Set what capgate must set in the body: an output bound when there is none, the
        usage chunk for OpenAI streams. (The routed model name is set per attempt.)
        Returns whether the body changed, the output bound per choice, the field that
        holds it, and whether to hide the usage chunk from the client."""
        changed = False
        max_out = facts.max_output
        if endpoint is Endpoint.MESSAGES:
            field = "max_tokens"
        elif endpoint is Endpoint.RESPONSES:
            field = "max_output_tokens"
        elif "max_completion_tokens" in body:
            field = "max_completion_tokens"
        elif "max_tokens" in body:
            field = "max_tokens"
        else:
            field = route.provider.chat_output_field  # the one the provider takes
        if max_out is None:  # a budget needs an output bound: set one
            max_out = body[field] = self._settings.default_max_tokens
            changed = True
        hide_usage = False
        if endpoint is Endpoint.CHAT and facts.stream:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                extra = options if isinstance(options, dict) else {}
                body["stream_options"] = {**extra, "include_usage": True}
                hide_usage = changed = True
        return changed, max_out, field, hide_usage

    def _flex(
        self,
        body: dict[str, Any],
        facts: RequestFacts,
        max_out: int,
        bound: int,
        price: Price,
        credits: int,
        fee_nano: int = 0,
    ) -> OutputFlex:
        """How far this request's max_tokens may be lowered to fit a budget."""
        minimum = self._settings.min_clamped_tokens
        if thinking_budget(body) is not None:
            minimum = max(minimum, _MIN_THINKING + 1)  # the API needs max_tokens > budget >= 1024
        return OutputFlex(
            requested=max_out,
            minimum=min(minimum, max_out),
            choices=facts.choices,
            input_tokens=bound,
            input_pico=bound * price.dearest_input + fee_nano * 1000,
            output_pico=price.output,
            credits=credits,
        )

    async def _count_input(
        self,
        route: Route,
        body: dict[str, Any],
        request: GatewayRequest,
        refusal: Refusal,
        bound: int,
    ) -> int | None:
        """An exact input count for a request an input-sensitive limit refused, or None
        (not worth asking, or the count failed: the byte bound stands). A small margin
        covers the count's documented slack; never above the byte bound."""
        limit = refusal.limit
        if limit is None or limit.metric not in _INPUT_SENSITIVE:
            return None
        fields = {k: v for k, v in body.items() if k in _COUNTED_FIELDS}
        try:
            answer = await route.provider.send(
                Endpoint.COUNT_TOKENS, orjson.dumps(fields), request.headers
            )
            data = await answer.read()
        except UpstreamFailed:
            return None
        if answer.status != 200:
            return None
        try:
            count = orjson.loads(data).get("input_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
        return min(bound, count + count // 20 + COUNT_MARGIN)

    def new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def refused(
        self, request: GatewayRequest, dialect: str, error: CapgateError, request_id: str
    ) -> web.Response:
        """An error before admission, as the calling client is best sent it."""
        return error_response(dialect, error, request_id, client_of(request.headers))

    async def _proxy(self, request: GatewayRequest, endpoint: Endpoint) -> web.StreamResponse:
        started, t0 = self._clock(), time.perf_counter()
        request_id = self.new_request_id()
        try:
            key = await self._auth.authenticate(request.headers)
            raw, body = await self.read_json(request)
        except CapgateError as exc:
            shown = for_client(exc, client_of(request.headers))
            self._access.refused(request_id, None, endpoint.value, None, shown)  # as sent
            return error_response(endpoint.dialect, shown, request_id)
        try:
            call = await self.admit(request, endpoint, key, raw, body, started, t0, request_id)
        except CapgateError as exc:  # recorded by admit
            return self.refused(request, endpoint.dialect, exc, request_id)
        return await call.run()

    async def admit(
        self,
        request: GatewayRequest,
        endpoint: Endpoint,
        key: Scope,
        raw: bytes,
        body: Any,
        started: float,
        t0: float,
        request_id: str | None = None,
    ) -> Call:
        """Route a parsed request and reserve its worst case: a Call ready to run. Raises
        the refusal or error (a CapgateError, recorded here as a refusal) for the door to
        render in its own dialect."""
        request_id = request_id or self.new_request_id()
        try:
            return await self._admit(request, endpoint, key, raw, body, started, t0, request_id)
        except CapgateError as exc:
            shown = for_client(exc, client_of(request.headers))
            self._access.refused(request_id, key, endpoint.value, body, shown)
            raise

    async def _admit(
        self,
        request: GatewayRequest,
        endpoint: Endpoint,
        key: Scope,
        raw: bytes,
        body: Any,
        started: float,
        t0: float,
        request_id: str,
    ) -> Call:
        client = client_of(request.headers)
        facts = _FACTS[endpoint](body)
        plan = self._router.plan(facts.model, endpoint)
        call_facts = None
        extensions = self._extensions
        cacheable = extensions.cache is not None and extensions.cache.wanted(key, request.headers)
        if extensions.policies or cacheable:  # rules and caches off: nothing of this computed
            call_facts = CallFacts(
                request_id, endpoint, facts.model, key, facts.stream, input_bound(body, len(raw)),
                len(raw), facts.max_output, dict(body), request.headers, started, cacheable,
            )  # fmt: skip
            for policy in self._extensions.policies:
                plan = await policy.route(call_facts, plan)
        route = plan.first
        price = self._pricer.price(route.upstream_model)
        changed, max_out, field, hide_usage = self._prepare(body, facts, route, endpoint)
        kind = endpoint.value  # (an enum's value is a property: read once)
        changed |= cap_server_tools(body, kind)
        hidden = hidden_costs(body, kind)
        byte_bound = input_bound(body, len(raw))
        hold = key.unbounded_hold_nano
        bound, held = hidden_bound(hidden, byte_bound, price, route.upstream_model, hold)
        output = max_out * facts.choices
        credits = self._pricer.credits_for(route.upstream_model)
        fee = hidden.fee_nano
        cost = price.worst_cost_nano(bound, output, fee) if held is None else held
        worst = worst_case(bound, output, cost, credits)
        info = RequestInfo(
            request_id, key.id, facts.model, route.provider.name, route.upstream_model,
            kind, facts.stream, started, client_status(client), rule=plan.rule,
        )  # fmt: skip
        flex: OutputFlex | None = self._flex(body, facts, max_out, bound, price, credits, fee)
        if held is not None:  # a stated hold does not shrink with max_tokens
            flex = None
        if route.endpoint is not endpoint:
            _translatable(body, endpoint, route)
        countable = (
            endpoint is Endpoint.MESSAGES
            and hidden.context is None  # a count cannot see what the provider adds
            and held is None
            and route.provider.supports(Endpoint.COUNT_TOKENS)
        )
        decision = await self._reserve(key, info, worst, flex, record_refusal=not countable)
        if isinstance(decision, Refusal) and countable:
            # Near the limit the byte bound is too loose: ask the provider's free
            # count endpoint for the real input size, and try once more with it.
            counted = await self._count_input(route, body, request, decision, bound)
            if counted is not None:
                bound = counted
                worst = Amounts(1, bound, output, price.worst_cost_nano(bound, output), credits)
                flex = self._flex(body, facts, max_out, bound, price, credits)
            decision = await self._reserve(key, info, worst, flex)
        if isinstance(decision, Refusal):
            if client == CLAUDE_CODE:  # in Claude Code's words, before the error is built
                message = self._claude_code_message(decision, key, max_out)
                decision = replace(decision, message=message)
            raise refusal_error(decision, self._clock())
        admission = Admission(info, price, worst, field, bound, output, hidden, byte_bound)
        body_log = self._body_log
        capture = None
        if body_log is not None and body_log.wanted(decision.key):
            capture = body_log.capture(request_id, raw)
        return self._call(
            self._path, request, endpoint, plan, admission, decision, body,
            None if changed else raw, t0, hide_usage, capture, call_facts,
        )  # fmt: skip

    async def _reserve(
        self,
        key: Scope,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
        record_refusal: bool = True,
    ) -> Reservation | Refusal:
        """The store's reservation; when the store cannot be reached, a key set fail_open
        goes on un-reserved (its static checks only; settled when the store is back), any
        other is refused at once (StoreUnavailable)."""
        try:
            return await self._store.reserve(info, worst, flex, record_refusal=record_refusal)
        except StoreUnavailable as exc:
            if not key.fail_open:
                raise
            decision = self._store.admit_unreserved(info, worst)
            if not isinstance(decision, Refusal):
                log.warning(
                    "request %s of key %s forwarded fail-open, un-reserved: %s",
                    info.request_id, key.name, exc.message,
                )  # fmt: skip
            return decision

    def _claude_code_message(self, refusal: Refusal, key: Scope, max_out: int) -> str:
        """The refusal with what a Claude Code user can do about it (its own words: /model,
        the environment it starts with) in place of advice for API callers."""
        if refusal.code in ("model_not_allowed", "outside_schedule"):
            model = self._allowed_model(key)
            if model is None:
                return refusal.message
            return (
                f"{refusal.message} In Claude Code use /model {model} "
                f"(or start it with --model {model})."
            )
        limit = refusal.limit
        if limit is None or refusal.is_rate_limit or refusal.used >= limit.max:
            return refusal.message
        if limit.metric not in (Metric.COST_USD, Metric.TOKENS, Metric.OUTPUT_TOKENS):
            return refusal.message
        # Claude Code's user cannot set max_tokens: it asks for its own worst case.
        message = refusal.message.split(_API_FIT_HINT)[0].rstrip()
        return (
            f"{message} Claude Code asks for up to {max_out:,} output tokens a request: "
            "start it with a lower CLAUDE_CODE_MAX_OUTPUT_TOKENS (e.g. 8000), or pick a "
            "cheaper model with /model."
        )

    def _allowed_model(self, key: Scope) -> str | None:
        """A model the key and every scope above it may use, for a hint: a Claude model
        when there is one."""
        scopes = (key, *self._store.scopes_above(key))
        names = [
            m
            for m in self._router.listed_models(self._pricing.models())
            if all(s.allows_model(m) for s in scopes)
        ]
        claude = [m for m in names if m.startswith("claude-")]
        return (claude or names)[0] if names else None

    async def drain(self) -> None:
        """Wait for queued settlements (shutdown); see Settler.drain."""
        await self._settler.drain()


def _untraced(handler: Handler, route: str) -> Handler:
    return handler


_MIN_THINKING = 1024  # Anthropic's smallest thinking budget
_API_FIT_HINT = " Lower max_tokens"  # the engine's advice to API callers, replaced for Claude Code
# Limits whose room depends on the input size: worth an exact count before refusing.
_INPUT_SENSITIVE = frozenset({Metric.COST_USD, Metric.TOKENS, Metric.INPUT_TOKENS})
# What the count endpoint reads of a Messages request.
_COUNTED_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
COUNT_MARGIN = 50  # tokens on top of an exact count (+5%)


def _translatable(body: dict[str, Any], endpoint: Endpoint, route: Route) -> None:
    """Raise the client's error (400, naming the field) before anything is held when the
    first target speaks another dialect and the body cannot be said in it. A failure of
    the target's own (5xx) is left to the call, which may fall back to another target."""
    translation = Translation(endpoint, route.endpoint)
    try:
        translation.request(
            {**body, "model": route.upstream_model}, route.provider.chat_output_field
        )
    except CapgateError as exc:
        if exc.status < 500:
            raise
