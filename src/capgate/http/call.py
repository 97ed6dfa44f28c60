"""One admitted request, from forwarding to settlement: try the plan's targets (retries
with backoff on the same target, then the fallbacks in order), pass on the answer (a
stream through a `Relay`, `http/relay.py`, while a tap reads its usage), and settle
exactly once whatever happens (answer, upstream error, a stream cut short, a client that
goes away, shutdown).

Budgets through failures: a target at another price (or another provider, with its own
budget) is re-reserved at its own worst case *before* it is called; refused, the request
ends with the last failure and nothing more is spent. An attempt that failed after its
request may have reached the provider without an error status (a timeout, a broken
answer) may have been billed upstream: its worst case is kept as spent and carried into
the next reservation, so a flaky provider can never make a budget leak.

Streams fall over only before their first byte reaches the client; after it, an error is
passed on and only the tokens generated are charged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from capgate.bodylog.capture import BodyCapture
from capgate.bodylog.service import BodyLog
from capgate.core.engine import Amounts, Refusal
from capgate.core.money import MAX_AMOUNT, Usage
from capgate.deadlines import Deadlines
from capgate.errors import CapgateError, UpstreamFailed
from capgate.http.admission import Admission, Pricer, clamp_output
from capgate.http.answer_headers import CACHE_HEADER, answer_headers
from capgate.http.dialects import client_of, error_response, is_dialect_body
from capgate.http.door import GatewayRequest
from capgate.http.extensions import AnswerCache, CachedAnswer, CallFacts, FinalAnswer
from capgate.http.relay import Relay
from capgate.http.settler import Settler
from capgate.http.translation import Translation
from capgate.providers.base import Endpoint, UpstreamAnswer
from capgate.routing import Breakers, Plan, Route
from capgate.store.base import Outcome, Reservation, Store
from capgate.wire import anthropic as anthropic_wire
from capgate.wire import openai as openai_wire

log = logging.getLogger(__name__)

# Upstream statuses worth another attempt: rate limits, timeouts and server errors
# (Anthropic's 529 "overloaded" among them). Other 4xx would fail the same way anywhere.
_RETRYABLE = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_RETRY_WAIT_S = 5.0  # a longer retry-after moves on to the next target instead


def first_byte_deadlines() -> Deadlines[Call]:
    """The first-byte deadlines of the calls in flight, one loop timer for all: a call adds
    and removes an entry, where `asyncio.timeout` would make and cancel a timer of its own
    per attempt. A late call's task is cancelled (`Call._late`) and the call turns that
    into its timeout, as `asyncio.timeout` does."""
    return Deadlines(Call._late, log, "timing out a call's first byte failed")


@dataclass(frozen=True, slots=True)
class CallPath:
    """What every call of a server process works with, built once by the gateway."""

    store: Store  # re-reservation for a fallback
    breakers: Breakers  # each attempt's success or failure
    pricer: Pricer  # the price of a fallback at another model
    settler: Settler  # settlements, queued without waiting
    backoff: Callable[[int, float | None], float]  # the wait before a retry
    body_log: BodyLog | None = None  # where finished captures go
    cache: AnswerCache | None = None  # may answer instead of forwarding
    first_bytes: Deadlines[Call] = field(default_factory=first_byte_deadlines)


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that may succeed elsewhere (or later)."""

    status: int  # what the client gets if nothing else works
    message: str
    body: bytes | None = None  # the provider's error answer, if it sent one
    headers: dict[str, str] | None = None
    retry_after: float | None = None
    billed_maybe: bool = False  # reached the provider without an error status


class Call:
    """One admitted request, from forwarding to settlement."""

    def __init__(
        self,
        path: CallPath,
        request: GatewayRequest,
        endpoint: Endpoint,
        plan: Plan,
        admission: Admission,
        reservation: Reservation,
        body: dict[str, Any],
        raw: bytes | None,
        t0: float,
        hide_usage: bool,
        capture: BodyCapture | None = None,
        facts: CallFacts | None = None,
    ) -> None:
        self._path = path
        self.request = request
        self.endpoint = endpoint  # what the client called
        self.plan = plan
        self.admission = admission  # the current target's price and worst case
        self.res = reservation
        self.body = body
        self.raw = raw  # the client's bytes, when they can go upstream as they are
        self.t0 = t0
        self.hide_usage = hide_usage
        self.ttft_ms: float | None = None
        self.settled = False
        self.attempts = 0
        self.spent = Amounts()  # failed attempts that may have been billed upstream
        self.answer: UpstreamAnswer | None = None
        self.cost_nano: int | None = None  # what was charged, once settled
        # When the request logs its body: the answer sent is kept in it, and it is
        # handed to the body log when the call ends.
        self.capture = capture
        self.facts = facts  # computed only when a rule or a cache is plugged in
        # The response cache's mark for the ledger: hit | miss (cacheable, forwarded) |
        # None; what a hit saved.
        self.cache_mark: str | None = None
        self.saved_nano = 0
        self._task: asyncio.Task[Any] | None = None  # waiting for a first byte
        self._timed_out = False  # its first-byte deadline cancelled it

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    # -- settlement --------------------------------------------------------------------

    def settle(
        self,
        status: int,
        outcome: str,
        usage: Usage | None,
        model: str | None = None,
        error: str | None = None,
        cost_nano: int | None = None,
    ) -> None:
        """Settle once; `cost_nano` is a cost known without pricing (a cache's hit)."""
        if self.settled:
            return
        self.settled = True
        spent = self.spent
        flags: tuple[str, ...] = ()
        if usage is None:
            cost = self.res.worst.cost_nano  # unknown usage: everything held is charged
            if outcome == "ok":  # answered, but with no usage capgate could read
                flags = ("usage_unreadable",)
        else:
            reported = self.answer.cost_nano if self.answer is not None else cost_nano
            cost = reported if reported is not None else self.admission.price.cost_nano(usage)
            if spent.requests:  # earlier attempts kept as spent
                cost += spent.cost_nano
                usage = replace(
                    usage,
                    input_tokens=usage.input_tokens + spent.input_tokens,
                    output_tokens=usage.output_tokens + spent.output_tokens,
                )
            cost = min(cost, MAX_AMOUNT)  # what the store can count (counts are capped too)
            if _over(usage, cost, self.res.worst):  # the truth is charged, and marked
                flags = ("over_reservation",)
        self.cost_nano = cost
        self._path.settler.settle(
            self.res,
            Outcome(
                status, outcome, usage, cost, self.elapsed_ms(), self.ttft_ms, self.attempts, error,
                model, flags, cache=self.cache_mark, saved_nano=self.saved_nano,
            ),
        )  # fmt: skip

    # -- attempts ----------------------------------------------------------------------

    async def run(self) -> web.StreamResponse:
        plan = self.plan
        deadline = self.t0 + plan.deadline_s
        breakers = self._path.breakers
        index, tries = 0, 0
        route = plan.first
        try:
            cache = self._path.cache
            if cache is not None and self.facts is not None and self.facts.cacheable:
                hit = await cache.lookup(self.facts)
                if hit is not None:
                    return self._cached(hit)
                self.cache_mark = "miss"
            while True:
                self.attempts += 1
                began = time.perf_counter()
                result = await self._attempt(route, deadline)
                took = time.perf_counter() - began  # the upstream's part, for /metrics
                if not isinstance(result, Failure):
                    breakers.succeeded(route.provider.name, took)
                    return result
                breakers.failed(route.provider.name, result.message, took)
                self._drop()
                if result.billed_maybe:  # all held so far may be billed: keep it as spent
                    held = self.res.worst
                    self.spent = Amounts(1, held.input_tokens, held.output_tokens, held.cost_nano)
                left = deadline - time.perf_counter()
                wait = self._path.backoff(tries, result.retry_after)
                same = (
                    tries < plan.retries
                    and wait <= min(MAX_RETRY_WAIT_S, left)
                    and not breakers.cooling(route.provider.name)
                )
                if same:
                    tries += 1
                    await asyncio.sleep(wait)
                    nxt = route
                else:
                    index, tries = index + 1, 0
                    if index >= len(plan.routes) or left <= 0:
                        return self._give_up(result)
                    nxt = plan.routes[index]
                if not nxt.same_target(route) or result.billed_maybe:
                    refused = await self._move_to(nxt)
                    if refused is not None:
                        return self._give_up(result, f"; {refused}")
                route = nxt
        finally:
            if not self.settled:  # cancelled or failed somewhere unexpected: charge it all
                if self.answer is not None:
                    self.answer.close()
                self.settle(499, "cancelled", None, error="interrupted before settlement")
            if self.capture is not None and self._path.body_log is not None:
                self._path.body_log.submit(self.capture)

    async def _move_to(self, route: Route) -> str | None:
        """Re-reserve for `route` (plus what failed attempts may have cost). Returns why
        not, when the budget cannot pay for it; the old reservation then stays."""
        try:
            admission = self._path.pricer.readmit(
                self.admission, route, self.res.key.unbounded_hold_nano
            )
        except CapgateError as exc:
            return f'fallback to "{route.provider.name}" ({route.upstream_model}) impossible: {exc.message}'
        worst = _plus(admission.worst, self.spent, requests=False)
        store = self._path.store
        if self.res.fail_open:  # nothing is held to move: the next target goes un-reserved too
            decision = store.admit_unreserved(admission.info, worst)
        else:
            decision = await store.rereserve(self.res, admission.info, worst)
        if isinstance(decision, Refusal):
            return f'fallback to "{route.provider.name}" ({route.upstream_model}) refused: {decision.message}'
        self.admission, self.res = admission, decision
        return None

    def _give_up(self, failure: Failure, note: str = "") -> web.StreamResponse:
        message = failure.message + note
        self.settle(failure.status, "error", Usage(), error=message[:1000])
        request_id = self.res.info.request_id
        if failure.body is not None and is_dialect_body(self.endpoint.dialect, failure.body):
            headers = dict(failure.headers or {})
            headers["x-capgate-request-id"] = request_id
            return web.Response(status=failure.status, body=failure.body, headers=headers)
        err = UpstreamFailed(message, status=failure.status)
        return error_response(self.endpoint.dialect, err, request_id)

    def _body(self, route: Route, translation: Translation | None) -> bytes:
        """The bytes to send to `route`: the client's own when nothing must change."""
        res = self.res
        if (
            self.raw is not None
            and translation is None
            and res.max_output is None
            and route.upstream_model == self.admission.info.model  # as asked
        ):
            return self.raw
        body = dict(self.body)
        if res.max_output is not None:
            clamp_output(body, self.admission.max_field, res.max_output)
        body["model"] = route.upstream_model
        if translation is not None:
            body = translation.request(body, route.provider.chat_output_field)
        return orjson.dumps(body)

    async def _attempt(self, route: Route, deadline: float) -> web.StreamResponse | Failure:
        translation = None
        if route.endpoint is not self.endpoint:
            translation = Translation(self.endpoint, route.endpoint)
        try:
            payload = self._body(route, translation)
        except CapgateError as exc:  # the body cannot be translated for this target
            return Failure(exc.status, exc.message) if exc.status >= 500 else self._refuse(exc)
        wait = route.provider.first_byte_timeout_s
        first_byte = min(wait, max(0.001, deadline - time.perf_counter()))
        stream = self.res.info.stream
        chunks: AsyncIterator[bytes] | None = None
        first = b""
        first_bytes = self._path.first_bytes
        self._task = task = asyncio.current_task()
        assert task is not None
        cancelling, self._timed_out = task.cancelling(), False
        cancelled_too = False  # by someone else as well as by the deadline
        loop = task.get_loop()  # (asyncio.get_running_loop costs a getpid on 3.11)
        first_bytes.add(self, loop, loop.time() + first_byte)
        try:
            try:
                answer = await route.provider.send(route.endpoint, payload, self.request.headers)
                self.answer = answer
                is_sse = answer.headers.get("content-type", "").startswith("text/event-stream")
                if answer.status < 400 and stream and is_sse:
                    chunks = aiter(answer.chunks())
                    first = await anext(chunks, b"")
            finally:
                if self._timed_out:  # its cancel taken back, even if converted or swallowed
                    cancelled_too = task.uncancel() > cancelling
                else:
                    first_bytes.remove(self)
        except UpstreamFailed as exc:
            self._drop()
            return Failure(exc.status, exc.message, billed_maybe=exc.sent or exc.charge_all)
        except BaseException as exc:  # cancelled while waiting: the upstream may be working
            self._drop()
            late = self._timed_out and isinstance(exc, asyncio.CancelledError) and not cancelled_too
            if late or isinstance(exc, TimeoutError):
                return Failure(
                    504,
                    f'provider "{route.provider.name}" sent nothing within {first_byte:g} s',
                    billed_maybe=True,
                )
            self.settle(499, "cancelled", None, error="client went away before the answer")
            raise
        if answer.status >= 400:
            return await self._upstream_error(answer, translation)
        if chunks is not None:
            if not first or b"event: error" in first[:200]:
                self._drop()
                return Failure(502, f'provider "{route.provider.name}" stream failed at its start')
            return await self._relay(answer, route, translation).run(chunks, first)
        return await self._whole(answer, route, translation)

    def _late(self, now: float) -> float:
        """The first byte is late (`first_byte_deadlines`): stop waiting for it. Nothing
        more to watch (math.inf): the attempt that comes next adds its own deadline."""
        self._timed_out = True
        if self._task is not None:
            self._task.cancel()
        return math.inf

    def _drop(self) -> None:
        if self.answer is not None:
            self.answer.close()
            self.answer = None

    def _refuse(self, exc: CapgateError) -> web.StreamResponse:
        client = client_of(self.request.headers)  # the status it shows at once
        response = error_response(self.endpoint.dialect, exc, self.res.info.request_id, client)
        self.settle(response.status, "error", Usage(), error=exc.message)
        return response

    async def _upstream_error(
        self, answer: UpstreamAnswer, translation: Translation | None
    ) -> web.StreamResponse | Failure:
        try:
            data = await answer.read()
        except UpstreamFailed as exc:
            data = exc.message.encode()
        self.answer = None
        if translation is not None and is_dialect_body(translation.upstream.dialect, data):
            data = translation.error(answer.status, data)
        message = data[:2000].decode("utf-8", "replace")
        if answer.status in _RETRYABLE:
            return Failure(
                answer.status,
                f"upstream {answer.status}: {message[:500]}",
                data,
                answer_headers(answer, None),
                _retry_after(answer.headers.get("retry-after")),
            )
        # An error answer is not billed by providers: count the request, no tokens.
        self.settle(
            answer.status, "error", Usage(), error=f"upstream {answer.status}: {message[:500]}"
        )
        if self.capture is not None:
            self.capture.feed(data)
        dialect = self.endpoint.dialect
        if not is_dialect_body(dialect, data):
            err = CapgateError(
                f"The provider answered {answer.status}: {message}", status=answer.status
            )
            return error_response(dialect, err, self.res.info.request_id)
        return web.Response(
            status=answer.status, body=data, headers=answer_headers(answer, self.res)
        )

    async def _whole(
        self, answer: UpstreamAnswer, route: Route, translation: Translation | None
    ) -> web.StreamResponse | Failure:
        try:
            data = await answer.read()
        except UpstreamFailed as exc:  # no answer for the client yet: another target may
            return Failure(exc.status, exc.message, billed_maybe=True)
        self.ttft_ms = self.elapsed_ms()
        if route.endpoint is Endpoint.MESSAGES:
            usage, model = anthropic_wire.message_usage(data)
        else:
            usage, model = openai_wire.completion_usage(data)
        if translation is not None:
            try:
                data = translation.answer(data)
            except CapgateError as exc:
                return Failure(502, exc.message, billed_maybe=True)
        self.settle(answer.status, "ok", usage, model)
        if self.capture is not None:
            self.capture.feed(data)
        headers = answer_headers(answer, self.res)
        if self.cache_mark is not None:
            headers[CACHE_HEADER] = self.cache_mark
            content_type = headers.get("content-type", "application/json")
            self.remember(data, content_type, usage, model, route)
        return web.Response(status=answer.status, body=data, headers=headers)

    def _relay(
        self, answer: UpstreamAnswer, route: Route, translation: Translation | None
    ) -> Relay:
        """The relay of a stream whose first chunk is in."""
        headers = answer_headers(answer, self.res)
        headers["cache-control"] = "no-cache"
        if self.cache_mark is not None:
            headers[CACHE_HEADER] = self.cache_mark
        if self.capture is not None:  # its text is assembled from the events the client gets
            self.capture.stream = self.endpoint.value
        return Relay(
            self, self.request, answer, headers, route, translation,
            hide_usage=self.hide_usage, capture=self.capture, keep=self.cache_mark is not None,
            input_bound=self.admission.input_bound,
            output_left=self.res.worst.output_tokens - self.spent.output_tokens,
        )  # fmt: skip

    def _cached(self, hit: CachedAnswer) -> web.StreamResponse:
        """A cache's answer instead of forwarding: settled at the hit's cost, marked a
        hit with what it saved (no attempt was made)."""
        self.cache_mark, self.saved_nano = "hit", hit.saved_nano
        self.ttft_ms = self.elapsed_ms()
        self.settle(hit.status, "ok", hit.usage, hit.model, cost_nano=hit.cost_nano)
        if self.capture is not None:
            self.capture.stream = self.endpoint.value if _is_stream(hit.content_type) else None
            self.capture.feed(hit.body)
        headers = answer_headers(None, self.res)
        headers["content-type"], headers[CACHE_HEADER] = hit.content_type, hit.mark
        if _is_stream(hit.content_type):
            headers["cache-control"] = "no-cache"
        return web.Response(status=hit.status, body=hit.body, headers=headers)

    def remember(
        self, body: bytes, content_type: str, usage: Usage | None, model: str | None, route: Route
    ) -> None:
        """Tell the cache a successful answer (only answers with a usage read)."""
        cache, facts = self._path.cache, self.facts
        if cache is None or facts is None or usage is None or self.cost_nano is None:
            return
        if self.res.max_output is not None or route is not self.plan.first:
            return  # cut short by a lowered max_tokens, or a fallback's: not this request's
        answer = FinalAnswer(
            body, content_type, usage, self.cost_nano, model, route.provider.name,
            route.upstream_model,
        )  # fmt: skip
        cache.remember(facts, answer)


def _is_stream(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")


def _over(usage: Usage, cost_nano: int, held: Amounts) -> bool:
    """Whether an answer used more than its reservation held (a provider that ignored
    max_tokens, or added input the bound did not foresee)."""
    return (
        cost_nano > held.cost_nano
        or usage.total_input > held.input_tokens
        or usage.output_tokens > held.output_tokens
    )


def _plus(a: Amounts, b: Amounts, requests: bool = True) -> Amounts:
    return Amounts(
        a.requests + b.requests if requests else a.requests,
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cost_nano + b.cost_nano,
        a.credits,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing for a few seconds' wait
    return seconds if 0 <= seconds < 86400 else None
