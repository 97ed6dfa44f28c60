"""OpenTelemetry traces of the gateway's requests (docs/operations.md#traces), optional.

Only `bootstrap` imports this module, and only when `otel_endpoint` is set: with tracing
off nothing of OpenTelemetry is imported, and the request path is the same code as
without this module (the gateway picks its handlers, access log and Call class once, when
it is built, not per request).

A request is one SERVER span, continuing the client's W3C `traceparent`, with children:

    POST /v1/messages       request id, key id, models, provider, status, outcome, tokens, cost
    ├─ capgate.admission    authentication, body, routing, the reservation
    ├─ capgate.attempt      one per upstream attempt: provider, model, its status
    └─ capgate.settlement   from the queued settlement until the store commits it

Spans carry ids, names, statuses, token counts and cost; never a prompt, an answer, an
error text (an upstream's may quote the prompt) or a key. Spans are exported by the SDK's
batch processor from its own thread, over OTLP/HTTP (protobuf).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from capgate.core.limits import Scope, nano_to_decimal_str
from capgate.errors import CapgateError
from capgate.http.call import Call, Failure
from capgate.http.door import GatewayRequest, Handler
from capgate.logs import AccessLog
from capgate.metrics import Metrics
from capgate.routing import Route
from capgate.store.base import Outcome, Reservation

_TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (OTEL_EXPORTER_OTLP_ENDPOINT's
    convention), or the URL itself when it names the traces path already."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


class _Request:
    """One traced request: its server span, and its admission span while that is open."""

    __slots__ = ("admission", "context", "span", "tracer")

    def __init__(self, tracer: Tracer, span: Span) -> None:
        self.tracer, self.span = tracer, span
        self.context: Context = trace.set_span_in_context(span)
        self.admission: Span | None = tracer.start_span("capgate.admission", self.context)

    def child(self, name: str, attributes: Mapping[str, Any]) -> Span:
        return self.tracer.start_span(name, self.context, attributes=attributes)

    def admitted(self, res: Reservation) -> None:
        if self.admission is not None:
            self.admission.set_attributes(
                {
                    "capgate.reserved_cost_nano": res.worst.cost_nano,
                    "capgate.fail_open": res.fail_open,
                }
            )
            self.admission.end()
            self.admission = None

    def refused(self, reason: str) -> None:
        self.span.set_attributes({"capgate.outcome": "refused", "capgate.refusal": reason})
        if self.admission is not None:
            self.admission.set_attribute("capgate.refusal", reason)
            self.admission.set_status(Status(StatusCode.ERROR, reason))
            self.admission.end()
            self.admission = None

    def finished(self, res: Reservation, outcome: Outcome, pending: asyncio.Future[None]) -> None:
        info, usage = res.info, outcome.usage
        attributes: dict[str, Any] = {
            "capgate.request_id": info.request_id,
            "capgate.key_id": info.key_id,
            "gen_ai.request.model": info.model,
            "capgate.provider": info.provider,
            "capgate.upstream_model": outcome.upstream_model or info.upstream_model,
            "capgate.endpoint": info.endpoint,
            "capgate.stream": info.stream,
            "capgate.status": outcome.status,
            "capgate.outcome": outcome.outcome,
            "capgate.attempts": outcome.attempts,
            "capgate.cost_nano": outcome.cost_nano,
            "capgate.cost_usd": nano_to_decimal_str(outcome.cost_nano),
        }
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.total_input
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        if outcome.flags:
            attributes["capgate.flags"] = list(outcome.flags)
        self.span.set_attributes(attributes)
        settlement = self.child(
            "capgate.settlement",
            {"capgate.request_id": info.request_id, "capgate.cost_nano": outcome.cost_nano},
        )

        def committed(fut: asyncio.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                settlement.set_status(Status(StatusCode.ERROR, "not committed yet"))
            settlement.end()

        pending.add_done_callback(committed)


_CURRENT: ContextVar[_Request | None] = ContextVar("capgate_traced_request", default=None)


class TracedAccessLog(AccessLog):
    """The access log, also writing how a request ended into its span."""

    __slots__ = ()

    def finished(
        self, res: Reservation, outcome: Outcome, pending: asyncio.Future[None] | None = None
    ) -> None:
        super().finished(res, outcome, pending)
        current = _CURRENT.get()
        if current is not None and pending is not None:
            current.finished(res, outcome, pending)

    def refused(
        self, request_id: str | None, key: Scope | None, endpoint: str, body: Any, exc: CapgateError
    ) -> None:
        super().refused(request_id, key, endpoint, body, exc)
        current = _CURRENT.get()
        if current is None:
            return
        model = body.get("model") if isinstance(body, dict) else None
        attributes: dict[str, Any] = {"capgate.endpoint": endpoint, "capgate.status": exc.status}
        if request_id is not None:
            attributes["capgate.request_id"] = request_id
        if key is not None:
            attributes["capgate.key_id"] = key.id
        if isinstance(model, str):
            attributes["gen_ai.request.model"] = model[:100]
        current.span.set_attributes(attributes)
        current.refused(exc.headers.get("x-capgate-refusal") or exc.kind)


class TracedCall(Call):
    """A Call whose admission ends when it is made, with a span per upstream attempt."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = _CURRENT.get()
        if current is not None:
            current.admitted(self.res)

    async def _attempt(self, route: Route, deadline: float) -> web.StreamResponse | Failure:
        current = _CURRENT.get()
        if current is None:  # a door that is not traced (/generate)
            return await super()._attempt(route, deadline)
        span = current.child(
            "capgate.attempt",
            {
                "capgate.attempt": self.attempts,
                "capgate.provider": route.provider.name,
                "capgate.upstream_model": route.upstream_model,
            },
        )
        try:
            result = await super()._attempt(route, deadline)
        except BaseException as exc:  # cancelled (client gone, shutdown)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        span.set_attribute("http.response.status_code", result.status)
        if isinstance(result, Failure):
            span.set_attributes({"capgate.attempt.failed": True})
            span.set_status(Status(StatusCode.ERROR, f"upstream {result.status}"))
        span.end()
        return result


class Traces:
    """The tracer provider and what the gateway uses to trace its requests."""

    call_class = TracedCall

    def __init__(
        self, endpoint: str, sample_ratio: float, exporter: SpanExporter | None = None
    ) -> None:
        # OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION / _CERTIFICATE and
        # OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* are read by the SDK itself.
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": "capgate"}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        exporter = exporter or OTLPSpanExporter(endpoint=traces_url(endpoint))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("capgate")
        self._propagator = TraceContextTextMapPropagator()

    def access(self, metrics: Metrics | None) -> AccessLog:
        return TracedAccessLog(metrics=metrics)

    def wrap(self, handler: Handler, route: str) -> Handler:
        """`handler` inside a server span; sampled out, only the span's check is added."""
        tracer, propagator = self._tracer, self._propagator
        name = f"POST {route}"

        async def traced(request: GatewayRequest) -> web.StreamResponse:
            span = tracer.start_span(
                name,
                propagator.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "http.route": route,
                    "url.path": request.path,
                },
            )
            if not span.is_recording():
                return await handler(request)
            current = _Request(tracer, span)
            token = _CURRENT.set(current)
            try:
                response = await handler(request)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            else:
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response
            finally:
                _CURRENT.reset(token)
                if current.admission is not None:  # ended by an unexpected error
                    current.admission.end()
                span.end()

        return traced

    async def close(self) -> None:
        """Export what is queued (the exporter's HTTP call blocks: off the event loop)."""
        await asyncio.to_thread(self._provider.shutdown)
