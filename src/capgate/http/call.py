"""One admitted request, from forwarding to settlement: relay the answer as it arrives
while a tap reads its usage, and settle exactly once whatever happens (answer, upstream
error, a stream cut short, a client that goes away, shutdown)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import quote

from aiohttp import web

from capgate.core.limits import Metric, nano_to_decimal_str
from capgate.core.money import Price, Usage
from capgate.core.windows import format_reset_iso
from capgate.errors import CapgateError, UpstreamFailed
from capgate.http.dialects import error_response, is_dialect_body
from capgate.providers.base import Endpoint, UpstreamAnswer
from capgate.routing import Route
from capgate.store.base import Outcome, Reservation
from capgate.wire import anthropic as anthropic_wire
from capgate.wire import openai as openai_wire

Settle = Callable[[Reservation, Outcome], None]
Tap = (
    anthropic_wire.AnthropicStreamTap | openai_wire.OpenAIStreamTap | openai_wire.ResponsesStreamTap
)


def answer_headers(answer: UpstreamAnswer, res: Reservation | None) -> dict[str, str]:
    headers = dict(answer.headers)
    if res is not None:
        headers["x-capgate-request-id"] = res.info.request_id
        if res.max_output is not None:  # tell the client its max_tokens was lowered
            headers["x-capgate-max-tokens"] = str(res.max_output)
        room = res.headroom
        if room is not None:  # the tightest limit, as it stood when this was admitted
            limit = room.limit
            what = f"{limit.metric.value}/{limit.window.value}"
            if limit.model is not None:
                what += f" ({limit.model})"
            name = quote(room.scope.name, safe="-_.~@+:")  # headers are ASCII; names need not be
            headers["x-capgate-limit"] = f"{room.scope.kind.value}={name} {what}"
            amount = room.remaining
            headers["x-capgate-remaining"] = (
                nano_to_decimal_str(amount) if limit.metric is Metric.COST_USD else str(amount)
            )
            headers["x-capgate-reset"] = format_reset_iso(room.resets_at)
    return headers


class Call:
    """One admitted request, from forwarding to settlement."""

    def __init__(
        self,
        settle: Settle,
        request: web.Request,
        endpoint: Endpoint,
        reservation: Reservation,
        price: Price,
        t0: float,
        hide_usage: bool,
        input_bound: int,
    ) -> None:
        self._settle = settle
        self.request = request
        self.endpoint = endpoint
        self.res = reservation
        self.price = price
        self.t0 = t0
        self.hide_usage = hide_usage
        self.input_bound = input_bound
        self.ttft_ms: float | None = None
        self.settled = False

    def _ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def settle(
        self,
        status: int,
        outcome: str,
        usage: Usage | None,
        model: str | None = None,
        error: str | None = None,
        reported_cost: int | None = None,
    ) -> None:
        """Record the outcome once. The cost is the provider's own figure when it gave
        one (a CLI provider: Claude Code's), else the usage priced, else the worst case."""
        if self.settled:
            return
        self.settled = True
        if reported_cost is not None:
            cost = reported_cost
        elif usage is not None:
            cost = self.price.cost_nano(usage)
        else:
            cost = self.res.worst.cost_nano
        self._settle(
            self.res,
            Outcome(status, outcome, usage, cost, self._ms(), self.ttft_ms, 1, error, model),
        )

    async def run(self, route: Route, body: bytes) -> web.StreamResponse:
        dialect = self.endpoint.dialect
        request_id = self.res.info.request_id
        try:
            answer = await route.provider.send(self.endpoint, body, self.request.headers)
        except UpstreamFailed as exc:
            usage = None if exc.charge_all else Usage()
            self.settle(exc.status, "error", usage, error=exc.message)
            return error_response(dialect, exc, request_id)
        except BaseException:  # cancelled while connecting: upstream may be working; charge all
            self.settle(499, "cancelled", None, error="client went away before the answer")
            raise
        try:
            if answer.status >= 400:
                return await self._upstream_error(answer)
            if self.res.info.stream and answer.headers.get("content-type", "").startswith(
                "text/event-stream"
            ):
                return await self._relay(answer)
            return await self._whole(answer)
        finally:
            if not self.settled:  # cancelled or failed somewhere unexpected: charge it all
                answer.close()
                self.settle(499, "cancelled", None, error="interrupted before settlement")

    async def _upstream_error(self, answer: UpstreamAnswer) -> web.StreamResponse:
        dialect = self.endpoint.dialect
        try:
            data = await answer.read()
        except UpstreamFailed as exc:
            data = exc.message.encode()
        message = data[:2000].decode("utf-8", "replace")
        # An error answer is not billed by providers: count the request, no tokens.
        self.settle(
            answer.status, "error", Usage(), error=f"upstream {answer.status}: {message[:500]}"
        )
        if not is_dialect_body(dialect, data):
            err = CapgateError(f"The provider answered {answer.status}: {message}")
            err.status, err.kind = answer.status, "api_error"
            return error_response(dialect, err, self.res.info.request_id)
        return web.Response(
            status=answer.status,
            body=data,
            headers=answer_headers(answer, self.res),
        )

    async def _whole(self, answer: UpstreamAnswer) -> web.StreamResponse:
        try:
            data = await answer.read()
        except UpstreamFailed as exc:
            self.settle(502, "error", None, error=exc.message)  # unknown usage: charge all
            return error_response(self.endpoint.dialect, exc, self.res.info.request_id)
        self.ttft_ms = self._ms()
        if self.endpoint is Endpoint.MESSAGES:
            usage, model = anthropic_wire.message_usage(data)
        else:
            usage, model = openai_wire.completion_usage(data)
        self.settle(answer.status, "ok", usage, model, reported_cost=answer.cost_nano)
        return web.Response(
            status=answer.status,
            body=data,
            headers=answer_headers(answer, self.res),
        )

    async def _relay(self, answer: UpstreamAnswer) -> web.StreamResponse:
        headers = answer_headers(answer, self.res)
        headers["cache-control"] = "no-cache"
        response = web.StreamResponse(status=answer.status, headers=headers)
        tap: Tap
        if self.endpoint is Endpoint.MESSAGES:
            tap = anthropic_wire.AnthropicStreamTap()
        elif self.endpoint is Endpoint.RESPONSES:
            tap = openai_wire.ResponsesStreamTap()
        else:
            tap = openai_wire.OpenAIStreamTap(self.hide_usage)
        try:
            await response.prepare(self.request)
            async for chunk in answer.chunks():
                block = tap.feed(chunk)
                if not block:
                    continue
                if self.ttft_ms is None:
                    self.ttft_ms = self._ms()
                if tap.finished:  # the usage is known: queue settlement before the last bytes
                    self.settle(
                        answer.status, "ok", tap.usage(), tap.model, reported_cost=answer.cost_nano
                    )
                await response.write(block)
            if not self.settled:  # the stream ended without its final event
                self.settle(
                    answer.status, "error", self._partial(tap), tap.model, "stream ended early"
                )
            rest = tap.splitter.rest()
            if rest:
                await response.write(rest)
            await response.write_eof()
        except UpstreamFailed as exc:
            self.settle(answer.status, "error", self._partial(tap), tap.model, exc.message)
        except ConnectionResetError:
            # The client went away: stop the upstream generation, charge what it made.
            answer.close()
            self.settle(499, "cancelled", self._partial(tap), tap.model, "client disconnected")
        except asyncio.CancelledError:  # server shutdown
            answer.close()
            self.settle(499, "cancelled", self._partial(tap), tap.model, "server shutting down")
            raise
        return response

    def _partial(self, tap: Tap) -> Usage:
        """Usage of a stream cut short. Its output bound (bytes relayed) is capped at the
        output reserved: the provider cannot have generated more than max_tokens."""
        if isinstance(tap, anthropic_wire.AnthropicStreamTap):
            usage = tap.partial_usage()
            if usage.total_input == 0:  # no message_start: the input bound is all we know
                usage = replace(usage, input_tokens=self.input_bound)
        else:
            usage = tap.partial_usage(self.input_bound)
        return replace(usage, output_tokens=min(usage.output_tokens, self.res.worst.output_tokens))
