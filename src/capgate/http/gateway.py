"""The client-facing endpoints: authenticate, reserve, forward, relay, settle.

One request's way, with no back-and-forth: parse only the fields the engine needs, ask
the store for an atomic reservation of the worst case, forward the body (untouched unless
capgate had to set something), relay the answer as it arrives while a tap reads its usage,
then queue the settlement. The settlement is queued *before* the answer's last bytes are
written, so by the time a client has its answer, any later read of the ledger sees it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from capgate.bodylog.capture import BodyCapture
from capgate.bodylog.service import BodyLog
from capgate.cache.service import HEADER as CACHE_HEADER
from capgate.cache.service import CacheSlot, ResponseCache
from capgate.config import ServerConfig
from capgate.core.engine import Amounts, OutputFlex, Refusal, check_standing
from capgate.core.estimate import (
    Hidden,
    RequestFacts,
    anthropic_facts,
    cap_server_tools,
    hidden_costs,
    input_bound,
    openai_chat_facts,
    responses_facts,
)
from capgate.core.limits import Metric, Scope
from capgate.core.money import MAX_AMOUNT, Price
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
from capgate.http.auth import KeyAuthenticator
from capgate.http.call import Call, jittered_backoff
from capgate.http.dialects import CLAUDE_CODE, client_of, client_status, error_response, for_client
from capgate.http.key_info import KeyInfo
from capgate.http.translation import Translation
from capgate.logs import AccessLog
from capgate.metrics import Metrics
from capgate.pricing import PricingTable
from capgate.providers.base import Endpoint
from capgate.routing import Breakers, Route, Router
from capgate.store.base import Outcome, RequestInfo, Reservation, Store
from capgate.wire.duplicates import duplicate_key

if TYPE_CHECKING:  # only imported when tracing is on (it imports OpenTelemetry)
    from capgate.traces import Traces

log = logging.getLogger(__name__)

_FREE = Price(0, 0, 0, 0, 0)  # for unpriced models when the admin allows them
_FACTS: dict[Endpoint, Callable[[Any], RequestFacts]] = {
    Endpoint.MESSAGES: anthropic_facts,
    Endpoint.CHAT: openai_chat_facts,
    Endpoint.RESPONSES: responses_facts,
}
_DRAIN_SECONDS = 15.0  # how long shutdown waits for settlements the store cannot write yet


@dataclass(frozen=True, slots=True)
class Admission:
    """A request admitted to one target: what the ledger records, its price, the worst
    case held for it, and what re-admitting it elsewhere needs."""

    info: RequestInfo
    price: Price
    worst: Amounts
    max_field: str  # the body field that holds the output bound
    input_bound: int
    output: int  # the output bound, all choices together
    hidden: Hidden  # input and fees beyond the body (server state, tools)
    byte_bound: int  # the input bound from the body alone


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
        cache: ResponseCache | None = None,
    ) -> None:
        self._store = store
        self._cache = cache  # the response cache (capgate.cache)
        self._body_log = body_log  # prompt and answer logging (capgate.bodylog)
        self._router = router
        self._pricing = pricing
        self._settings = settings
        self._clock = clock
        self._auth = KeyAuthenticator(store, clock)
        self._ids = itertools.count(1)
        self._id_prefix = "req_" + os.urandom(6).hex()
        self._max_bytes = int(settings.max_request_mb * 1024 * 1024)
        self._pending: set[asyncio.Future[None]] = set()
        self._rng = random.Random()
        # Tracing on or off is decided here, once: no check per request when it is off.
        self._traces = traces
        self._access = AccessLog(metrics=metrics) if traces is None else traces.access(metrics)
        self._call = Call if traces is None else traces.call_class

    def routes(self) -> list[web.RouteDef]:
        wrap = _untraced if self._traces is None else self._traces.wrap
        return [
            web.post("/v1/messages", wrap(self.messages, "/v1/messages")),
            web.post("/v1/chat/completions", wrap(self.chat_completions, "/v1/chat/completions")),
            web.post("/v1/responses", wrap(self.responses, "/v1/responses")),
            *KeyInfo(self, self._store, self._router, self._pricing, self._clock).routes(),
        ]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.MESSAGES)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.CHAT)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, Endpoint.RESPONSES)

    # -- admission ---------------------------------------------------------------------

    async def authenticate(self, request: web.Request, *, standing: bool = False) -> Scope:
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

    async def read_json(self, request: web.Request) -> tuple[bytes, Any]:
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

    def _credits_for(self, model: str) -> int:
        # From the pricing table: an admin may change the weights while the server runs.
        return self._pricing.credits_for(model)

    def _price(self, model: str) -> Price:
        price = self._pricing.lookup(model)
        if price is not None:
            return price
        if self._settings.allow_unpriced_models:
            return _FREE
        raise InvalidRequest(
            f'Model "{model}" has no known price, so capgate cannot hold a budget for it. '
            "An admin can price it under `pricing:` in the capgate config.",
            headers={"x-capgate-refusal": "unpriced_model"},
        )

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
        elif "max_completion_tokens" in body or (
            "max_tokens" not in body and route.provider.type == "openai"
        ):
            field = "max_completion_tokens"  # OpenAI's reasoning models refuse `max_tokens`
        else:
            field = "max_tokens"
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
        if _thinking_budget(body) is not None:
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
        self, route: Route, body: dict[str, Any], request: web.Request, refusal: Refusal, bound: int
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
        self, request: web.Request, dialect: str, error: CapgateError, request_id: str
    ) -> web.Response:
        """An error before admission, as the calling client is best sent it."""
        return error_response(dialect, for_client(error, client_of(request.headers)), request_id)

    async def _proxy(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        started, t0 = self._clock(), time.perf_counter()
        request_id = self.new_request_id()
        try:
            key = await self._auth.authenticate(request.headers)
            raw, body = await self.read_json(request)
        except CapgateError as exc:
            response = self.refused(request, endpoint.dialect, exc, request_id)
            self._access.refused(request_id, None, endpoint.value, None, exc)  # as sent
            return response
        admitted = await self.admit(request, endpoint, key, raw, body, started, t0, request_id)
        if isinstance(admitted, Call):
            return await admitted.run()
        return admitted

    async def admit(
        self,
        request: web.Request,
        endpoint: Endpoint,
        key: Scope,
        raw: bytes,
        body: Any,
        started: float,
        t0: float,
        request_id: str | None = None,
    ) -> Call | web.Response:
        """Route a parsed request and reserve its worst case: a Call ready to run, or the
        refusal / error in the endpoint's dialect."""
        request_id = request_id or self.new_request_id()
        dialect = endpoint.dialect
        client = client_of(request.headers)
        try:
            facts = _FACTS[endpoint](body)
            plan = self._router.plan(facts.model, endpoint)
            route = plan.first
            slot = None
            if self._cache is not None and (key.cache is not None or self._store.named_cache):
                slot = self._cache_slot(request, key, endpoint, route, facts.stream, body)
            price = self._price(route.upstream_model)
            changed, max_out, field, hide_usage = self._prepare(body, facts, route, endpoint)
            changed |= cap_server_tools(body, endpoint.value)
            hidden = hidden_costs(body, endpoint.value)
            byte_bound = input_bound(body, len(raw))
            hold = key.unbounded_hold_nano
            bound, held = _hidden_bound(hidden, byte_bound, price, route.upstream_model, hold)
            output = max_out * facts.choices
            credits = self._credits_for(route.upstream_model)
            fee = hidden.fee_nano
            cost = price.worst_cost_nano(bound, output, fee) if held is None else held
            worst = _worst(bound, output, cost, credits)
            info = RequestInfo(
                request_id, key.id, facts.model, route.provider.name, route.upstream_model,
                endpoint.value, facts.stream, started, client_status(client),
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
                error = refusal_error(decision, self._clock())
                if client == CLAUDE_CODE:
                    error.message = self._claude_code_message(decision, key, max_out)
                raise error
        except CapgateError as exc:
            for_client(exc, client)
            self._access.refused(request_id, key, endpoint.value, body, exc)
            return error_response(dialect, exc, request_id)
        admission = Admission(info, price, worst, field, bound, output, hidden, byte_bound)
        call = self._call(
            self, request, endpoint, plan, admission, decision, body,
            None if changed else raw, t0, hide_usage,
        )  # fmt: skip
        body_log = self._body_log
        if body_log is not None and body_log.wanted(decision.key):
            call.capture = body_log.capture(request_id, raw)
        if slot is not None and self._cache is not None:
            call.cache, call.cache_slot = self._cache, slot
            call.cached = self._cache.lookup(slot)
        return call

    def _cache_slot(
        self,
        request: web.Request,
        key: Scope,
        endpoint: Endpoint,
        route: Route,
        stream: bool,
        body: dict[str, Any],
    ) -> CacheSlot | None:
        assert self._cache is not None
        return self._cache.slot(
            key, lambda: self._store.scopes_above(key), request.headers.get(CACHE_HEADER),
            endpoint.value, route.upstream_model, stream, body,
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

    # -- what attempts need ------------------------------------------------------------

    def admission(self, call: Call, route: Route) -> Admission:
        """The same request, admitted to another target: its price, worst case, ledger
        info. Raises InvalidRequest for an unpriced target."""
        base = call.admission
        price = self._price(route.upstream_model)
        bound, output, hidden = base.input_bound, base.output, base.hidden
        held = None
        if hidden.context is not None or hidden.unbounded is not None:  # this model's own
            hold = call.res.key.unbounded_hold_nano  # context window, or the key's hold
            bound, held = _hidden_bound(hidden, base.byte_bound, price, route.upstream_model, hold)
        credits = self._credits_for(route.upstream_model)
        cost = price.worst_cost_nano(bound, output, hidden.fee_nano) if held is None else held
        worst = _worst(bound, output, cost, credits)
        info = replace(base.info, provider=route.provider.name, upstream_model=route.upstream_model)
        return replace(base, info=info, price=price, worst=worst, input_bound=bound)

    @staticmethod
    def clamp(body: dict[str, Any], field: str, max_output: int) -> None:
        _clamp(body, field, max_output)

    def backoff(self, tries: int, retry_after: float | None) -> float:
        return jittered_backoff(self._settings.retry_backoff_s, tries, retry_after, self._rng)

    @property
    def breakers(self) -> Breakers:
        return self._router.breakers

    @property
    def store(self) -> Store:
        return self._store

    def log_body(self, capture: BodyCapture) -> None:
        """A finished request's capture, for the background writer (never waits)."""
        if self._body_log is not None:
            self._body_log.submit(capture)

    # -- settlement --------------------------------------------------------------------

    def settle(self, reservation: Reservation, outcome: Outcome) -> None:
        """Hand the settlement to the store, which journals it at once and retries it
        until it commits (the reservation stays held meanwhile, so a failing store never
        lets money leak, and an answered request is never lost)."""
        pending = self._store.settle(reservation, outcome)
        self._access.finished(reservation, outcome, pending)
        self._pending.add(pending)

        def done(fut: asyncio.Future[None]) -> None:
            self._pending.discard(fut)
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("settlement of %s: %s", reservation.id, fut.exception())

        pending.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for queued settlements (shutdown), at most _DRAIN_SECONDS: what the store
        cannot write by then stays in its journal, and the next start writes it."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=_DRAIN_SECONDS)
        if self._pending:
            log.warning(
                "%d settlements not written yet; the journal keeps them", len(self._pending)
            )


def _untraced(handler: Callable[[web.Request], Any], route: str) -> Any:
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


def _hidden_bound(
    hidden: Hidden, byte_bound: int, price: Price, model: str, hold: int | None
) -> tuple[int, int | None]:
    """The input bound once what the provider adds is counted (the model's context window
    bounds it), and the key's stated hold when nothing bounds the request (None: the
    worst case is computed). Raises InvalidRequest when nothing bounds it and the key
    states no hold."""
    window = price.context_window
    if hidden.unbounded is not None or (hidden.context is not None and window is None):
        if hold is not None:
            return max(byte_bound, window or 0), hold
        if hidden.unbounded is not None:
            raise InvalidRequest(
                f"capgate cannot hold a budget for this request: {hidden.unbounded}. "
                "(An admin can give the key an unbounded_hold_usd to hold instead.)"
            )
        raise InvalidRequest(
            f"capgate cannot bound the input of this request: it uses {hidden.context}, and "
            f'the context window of model "{model}" is unknown. An admin can set '
            f"`context_window` for it under `pricing:` in the capgate config."
        )
    if hidden.context is None or window is None:
        return byte_bound, None
    return max(byte_bound, window), None


def _translatable(body: dict[str, Any], endpoint: Endpoint, route: Route) -> None:
    """Raise the client's error (400, naming the field) before anything is held when the
    first target speaks another dialect and the body cannot be said in it. A failure of
    the target's own (5xx) is left to the call, which may fall back to another target."""
    translation = Translation(endpoint, route.endpoint)
    try:
        translation.request({**body, "model": route.upstream_model}, route.provider.type)
    except CapgateError as exc:
        if exc.status < 500:
            raise


def _worst(bound: int, output: int, cost_nano: int, credits: int) -> Amounts:
    """The worst case to hold, refused when an amount is past what the store can count
    (an absurd max_tokens times a dear price)."""
    if max(bound, output, cost_nano) > MAX_AMOUNT:
        raise InvalidRequest(
            "The worst case of this request is too large to hold a budget for "
            f"({output:,} output tokens, {bound:,} input tokens); lower max_tokens."
        )
    return Amounts(1, bound, output, cost_nano, credits)


def _thinking_budget(body: dict[str, Any]) -> int | None:
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int):
            return budget
    return None


def _clamp(body: dict[str, Any], field: str, max_output: int) -> None:
    """Lower the output bound to `max_output`, and an extended-thinking budget with it
    (the API wants budget_tokens < max_tokens)."""
    body[field] = max_output
    budget = _thinking_budget(body)
    if budget is not None and budget >= max_output:
        body["thinking"] = {**body["thinking"], "budget_tokens": max_output - 1}
