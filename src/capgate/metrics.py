"""Per-process request metrics, counted where a request ends (its settlement or its
refusal, through `logs.AccessLog`), for `GET /metrics` (`capgate.http.metrics`).

These counters and histograms are per process: each worker counts the requests it served
(Prometheus sums them over processes). What every process must agree on (scope usage,
reservations held, ledger totals) is read from the store at scrape time instead.

Cheap on the hot path: a request adds to one row of plain integers kept per label tuple
(a dict lookup, a few additions, a bisect per histogram), and the families are built
from the rows only when scraped. Everything runs on the event loop, so no locks (the
client library's own counters take one per increment: 5x the cost, measured).

Labels stay bounded: endpoints, statuses, outcomes and providers are few; model names
come from clients, so only the first `MAX_MODELS` seen get their own series, later ones
count as `_other`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from capgate.errors import AuthenticationFailed, CapgateError, LimitExceeded, StoreUnavailable
from capgate.store.base import Outcome, Reservation

MAX_MODELS = 100
OTHER = "_other"
NANO = 1_000_000_000
# Seconds: whole requests (answers can take minutes) and first tokens.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
UPSTREAM_BUCKETS = LATENCY_BUCKETS

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


class _Row:
    """What the requests of one label tuple added up to."""

    __slots__ = ("cost", "count", "labels", "latency", "tokens", "ttft")

    def __init__(self, labels: tuple[str, str, str, str, str]) -> None:
        self.labels = labels  # endpoint, status, outcome, model, provider
        self.count = 0
        self.cost = 0  # nano-dollars: exact
        self.tokens = [0, 0, 0, 0]  # input, output, cache_read, cache_write
        self.latency = Buckets(LATENCY_BUCKETS)
        self.ttft = Buckets(TTFT_BUCKETS)


class Buckets:
    """A histogram's counts per bucket and its sum, as plain numbers (one event loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value

    def add(self, other: Buckets) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.sum += other.sum


_KINDS = ("input", "output", "cache_read", "cache_write")


class Metrics(Collector):
    """The request counters and histograms of this process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._models: set[str] = set()
        self._finished: dict[tuple[Any, ...], _Row] = {}
        self._rows: dict[tuple[str, str, str, str, str], _Row] = {}
        self._refused: dict[tuple[Any, ...], tuple[_Row, list[int]]] = {}
        self._refusals: dict[tuple[str, str], list[int]] = {}
        self._fail_open: dict[str, int] = {}  # per endpoint
        self.body_log: dict[str, int] = {}  # the body log's results (capgate.bodylog)
        self._cache: dict[str, int] = {"hit": 0, "miss": 0}  # the response cache's lookups
        self._cache_saved = 0  # nano-dollars hits did not spend upstream

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    def _row(self, labels: tuple[str, str, str, str, str]) -> _Row:
        row = self._rows.get(labels)
        if row is None:
            row = self._rows[labels] = _Row(labels)
        return row

    def finished(self, res: Reservation, outcome: Outcome) -> None:
        info = res.info
        if res.fail_open:
            self._fail_open[info.endpoint] = self._fail_open.get(info.endpoint, 0) + 1
        key = (info.endpoint, outcome.status, outcome.outcome, info.model, info.provider)
        row = self._finished.get(key)
        if row is None:
            model = self._model(info.model)
            row = self._row(
                (info.endpoint, str(outcome.status), outcome.outcome, model, info.provider)
            )
            if model != OTHER:  # `_other` tuples are not kept: their models are unbounded
                self._finished[key] = row
        row.count += 1
        row.cost += outcome.cost_nano
        if outcome.cache is not None:
            self._cache[outcome.cache] += 1
            self._cache_saved += outcome.saved_nano
        row.latency.observe(outcome.latency_ms / 1000)
        if outcome.ttft_ms is not None:
            row.ttft.observe(outcome.ttft_ms / 1000)
        usage = outcome.usage
        if usage is not None:
            tokens = row.tokens
            tokens[0] += usage.input_tokens
            tokens[1] += usage.output_tokens
            tokens[2] += usage.cache_read_tokens
            tokens[3] += usage.cache_write_tokens + usage.cache_write_1h_tokens

    def refused(self, endpoint: str, model: Any, exc: CapgateError) -> None:
        name = model if isinstance(model, str) else ""
        key = (endpoint, exc.status, name, exc.headers.get("x-capgate-refusal", ""))
        found = self._refused.get(key)
        if found is None:
            label = self._model(name[:100]) if name else ""
            reason = (endpoint, refusal_reason(exc))
            count = self._refusals.setdefault(reason, [0])
            found = (self._row((endpoint, str(exc.status), "refused", label, "")), count)
            if label != OTHER and len(self._refused) < 10_000:
                self._refused[key] = found
        found[0].count += 1
        found[1][0] += 1

    def collect(self) -> Iterator[Metric]:
        rows = list(self._rows.values())
        requests = CounterMetricFamily(
            "capgate_requests", "Requests ended in this process.",
            labels=("endpoint", "status", "outcome", "model", "provider"),
        )  # fmt: skip
        for row in rows:
            requests.add_metric(row.labels, row.count)
        refusals = CounterMetricFamily(
            "capgate_refusals", "Requests refused in this process, by reason.",
            labels=("endpoint", "reason"),
        )  # fmt: skip
        for labels, count in sorted(self._refusals.items()):
            refusals.add_metric(labels, count[0])
        fail_open = CounterMetricFamily(
            "capgate_fail_open_requests",
            "Requests of fail_open keys forwarded un-reserved in this process while the "
            "store could not be reached.",
            labels=("endpoint",),
        )
        for endpoint, forwarded in sorted(self._fail_open.items()):
            fail_open.add_metric((endpoint,), forwarded)
        body_log = CounterMetricFamily(
            "capgate_body_log_writes",
            "Logged request bodies in this process: written, failed (the store could not "
            "take them) or dropped (too many waiting).",
            labels=("result",),
        )
        for result, n in sorted(self.body_log.items()):
            body_log.add_metric((result,), n)
        cache = CounterMetricFamily(
            "capgate_cache_lookups",
            "Cacheable requests ended in this process: answered from the response cache "
            "(hit) or forwarded (miss).",
            labels=("result",),
        )
        for result, n in sorted(self._cache.items()):
            cache.add_metric((result,), n)
        saved = CounterMetricFamily(
            "capgate_cache_saved_dollars",
            "What the response cache's hits in this process would have cost upstream.",
        )
        saved.add_metric((), self._cache_saved / NANO)
        yield from (requests, refusals, fail_open, body_log, cache, saved)
        yield from _money(rows)
        yield _histogram(
            rows, "capgate_request_duration_seconds",
            "Admitted requests, from arrival to the last byte.", lambda r: r.latency,
        )  # fmt: skip
        yield _histogram(
            rows, "capgate_time_to_first_token_seconds",
            "Admitted requests, from arrival to the first byte of the answer.", lambda r: r.ttft,
        )  # fmt: skip


def _money(rows: list[_Row]) -> Iterator[Metric]:
    """Tokens and cost by model and provider."""
    tokens: dict[tuple[str, str], list[int]] = {}
    cost: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.labels[2] == "refused":
            continue
        pair = (row.labels[3], row.labels[4])
        sums = tokens.setdefault(pair, [0, 0, 0, 0])
        for i, count in enumerate(row.tokens):
            sums[i] += count
        cost[pair] = cost.get(pair, 0) + row.cost
    family = CounterMetricFamily(
        "capgate_tokens", "Tokens of admitted requests in this process.",
        labels=("model", "provider", "kind"),
    )  # fmt: skip
    for pair, sums in tokens.items():
        for kind, count in zip(_KINDS, sums, strict=True):
            family.add_metric((*pair, kind), count)
    dollars = CounterMetricFamily(
        "capgate_cost_dollars", "Cost of requests ended in this process, in dollars.",
        labels=("model", "provider"),
    )  # fmt: skip
    for pair, nano in cost.items():
        dollars.add_metric(pair, nano / NANO)
    yield from (family, dollars)


def _histogram(rows: list[_Row], name: str, doc: str, pick: Any) -> HistogramMetricFamily:
    """One histogram by endpoint and provider, summed over the rows of admitted requests."""
    summed: dict[tuple[str, ...], Buckets] = {}
    for row in rows:
        if row.labels[2] == "refused":
            continue
        hist: Buckets = pick(row)
        into = summed.get((row.labels[0], row.labels[4]))
        if into is None:
            into = summed[(row.labels[0], row.labels[4])] = Buckets(hist.bounds)
        into.add(hist)
    return histogram_family(name, doc, ("endpoint", "provider"), summed)


def histogram_family(
    name: str, doc: str, labels: tuple[str, ...], series: dict[tuple[str, ...], Buckets]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series.items():
        cumulative, buckets = 0, []
        for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        family.add_metric(values, buckets, hist.sum)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
