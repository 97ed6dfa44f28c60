"""Per-process request metrics, counted where a request ends (its settlement or its
refusal, through `logs.AccessLog`), for `GET /metrics` (`capgate.http.metrics`).

These counters and histograms are per process: each worker counts the requests it served
(Prometheus sums them over processes). What every process must agree on (scope usage,
reservations held, ledger totals) is read from the store at scrape time instead.

Cheap on the hot path: the children of each label tuple are made once and cached, so a
request costs a dict lookup and a few increments. Labels stay bounded: endpoints,
statuses, outcomes and providers are few; model names come from clients, so only the
first `MAX_MODELS` seen get their own series, later ones count as `_other`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from capgate.errors import AuthenticationFailed, CapgateError, LimitExceeded, StoreUnavailable
from capgate.store.base import Outcome, Reservation

MAX_MODELS = 100
OTHER = "_other"
NANO = 1_000_000_000
# Seconds: whole requests (answers can take minutes) and first tokens.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

# Why a request was refused, from the refusal's code (x-capgate-refusal).
_REASONS = {
    "paused": "access",
    "revoked": "access",
    "expired": "access",
    "model_not_allowed": "model",
    "outside_schedule": "schedule",
    "unpriced_model": "price",
    "rate_limit": "rate",  # the ledger's name (sqlite_insights.refusals_by_reason)
}


def reason_of_code(code: str) -> str:
    return _REASONS.get(code, code)


def refusal_reason(exc: CapgateError) -> str:
    """budget, rate, access, schedule, model, price; else invalid (a bad request) or
    unavailable (the store cannot be written)."""
    if isinstance(exc, LimitExceeded):
        return "rate" if exc.refusal.is_rate_limit else "budget"
    if isinstance(exc, AuthenticationFailed):
        return "access"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    code = exc.headers.get("x-capgate-refusal")
    return reason_of_code(code) if code else "invalid"


class Metrics:
    """The request counters and histograms of this process, in its own registry."""

    def __init__(self) -> None:
        # No `_created` series beside each counter: half the output for a timestamp that
        # Prometheus does not need (the library's own switch, process-wide).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        labels = ("endpoint", "status", "outcome", "model", "provider")
        self._requests = Counter(
            "capgate_requests", "Requests ended in this process.", labels, registry=reg
        )
        self._refusals = Counter(
            "capgate_refusals", "Requests refused in this process, by reason.",
            ("endpoint", "reason"), registry=reg,
        )  # fmt: skip
        self._tokens = Counter(
            "capgate_tokens", "Tokens of admitted requests in this process.",
            ("model", "provider", "kind"), registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "capgate_request_duration_seconds", "Admitted requests, start to last byte.",
            ("endpoint", "provider"), buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self._ttft = Histogram(
            "capgate_time_to_first_token_seconds", "Admitted requests, start to first token.",
            ("endpoint", "provider"), buckets=TTFT_BUCKETS, registry=reg,
        )  # fmt: skip
        # Cost is kept in exact nano-dollars (a float counter would drift) and shown in dollars.
        self._cost: dict[tuple[str, str], int] = {}
        reg.register(_CostCollector(self._cost))
        self._models: set[str] = set()
        self._finished: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._refused: dict[tuple[str, int, str, str], tuple[Any, Any]] = {}

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    def finished(self, res: Reservation, outcome: Outcome) -> None:
        info = res.info
        key = (info.endpoint, outcome.status, outcome.outcome, info.model, info.provider)
        children = self._finished.get(key)
        if children is None:
            children = self._children(key)
        requests, latency, ttft, tokens, cost_key = children
        requests.inc()
        latency.observe(outcome.latency_ms / 1000)
        if outcome.ttft_ms is not None:
            ttft.observe(outcome.ttft_ms / 1000)
        usage = outcome.usage
        if usage is not None:
            tokens[0].inc(usage.input_tokens)
            tokens[1].inc(usage.output_tokens)
            if usage.cache_read_tokens:
                tokens[2].inc(usage.cache_read_tokens)
            if usage.cache_write_tokens or usage.cache_write_1h_tokens:
                tokens[3].inc(usage.cache_write_tokens + usage.cache_write_1h_tokens)
        if outcome.cost_nano:
            self._cost[cost_key] = self._cost.get(cost_key, 0) + outcome.cost_nano

    def _children(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        endpoint, status, outcome, model, provider = key
        model = self._model(model)
        kinds = ("input", "output", "cache_read", "cache_write")
        children = (
            self._requests.labels(endpoint, str(status), outcome, model, provider),
            self._latency.labels(endpoint, provider),
            self._ttft.labels(endpoint, provider),
            tuple(self._tokens.labels(model, provider, kind) for kind in kinds),
            (model, provider),
        )
        if model != OTHER:  # `_other` tuples are not kept: their models are unbounded
            self._finished[key] = children
        return children

    def refused(self, endpoint: str, model: Any, exc: CapgateError) -> None:
        name = model if isinstance(model, str) else ""
        key = (endpoint, exc.status, name, exc.headers.get("x-capgate-refusal", ""))
        children = self._refused.get(key)
        if children is None:
            label = self._model(name[:100]) if name else ""
            children = (
                self._requests.labels(endpoint, str(exc.status), "refused", label, ""),
                self._refusals.labels(endpoint, refusal_reason(exc)),
            )
            if label != OTHER and len(self._refused) < 10_000:
                self._refused[key] = children
        children[0].inc()
        children[1].inc()


class _CostCollector(Collector):
    def __init__(self, cost: dict[tuple[str, str], int]) -> None:
        self._cost = cost

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "capgate_cost_dollars", "Cost of requests ended in this process, in dollars.",
            labels=("model", "provider"),
        )  # fmt: skip
        for (model, provider), nano in list(self._cost.items()):
            family.add_metric((model, provider), nano / NANO)
        yield family
