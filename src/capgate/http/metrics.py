"""`GET /metrics`: Prometheus's text format.

Two kinds of numbers, said apart in docs/operations.md:
- this process's request counters and histograms (`capgate.metrics.Metrics`), and its
  circuit breakers (each process learns on its own that a provider fails);
- what the store knows, read at scrape time, so every process and node reports the same:
  each limit's used / reserved / max / remaining in its current window, the reservations
  held, and the ledger's totals (cached `LEDGER_CACHE_S`: a grouped pass over the ledger).

A limit's `remaining` is never `+Inf`: a scope without a limit has no series. Keys beyond
the `metrics_key_series` most spending ones are summed into `scope="_other"`.

Access: with `metrics_token` set, a bearer token is required from anyone; without it,
only loopback clients are answered (403 otherwise). The admin key is never needed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from capgate.core.limits import Metric as LimitMetric
from capgate.core.limits import Scope, ScopeKind
from capgate.errors import AuthenticationFailed, CapgateError, PermissionDenied
from capgate.http.dialects import error_response
from capgate.metrics import NANO, OTHER, Metrics, histogram_family, reason_of_code
from capgate.routing import Breakers
from capgate.store.base import LEDGER_FLAGS, LedgerReader
from capgate.store.records import LedgerTotals, LimitUsage

LEDGER_CACHE_S = 5.0
_LIMIT_LABELS = ("scope_kind", "scope", "metric", "window", "model")
_Rows = tuple[tuple[Scope, LimitUsage], ...]


class MetricsAPI:
    def __init__(
        self,
        metrics: Metrics,
        store: LedgerReader,
        breakers: Breakers,
        token: str | None,
        key_series: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._token = token.encode() if token else None
        self._clock = clock
        self._shared = _SharedCollector(breakers, key_series)
        metrics.registry.register(self._shared)
        self._ledger: LedgerTotals | None = None
        self._ledger_at = -LEDGER_CACHE_S

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.scrape)]

    def _allowed(self, request: web.Request) -> bool:
        if self._token is not None:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self._token
            )
        try:
            return ip_address(request.remote or "").is_loopback
        except ValueError:  # a unix socket: local
            return request.remote == ""

    async def scrape(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            if self._token is not None:
                error: CapgateError = AuthenticationFailed(
                    "/metrics needs the scrape token (metrics_token) as a bearer token."
                )
            else:
                error = PermissionDenied(
                    "/metrics answers loopback clients only; set metrics_token to scrape "
                    "it from elsewhere."
                )
            return error_response("admin", error)
        now = self._clock()
        stale = time.monotonic() - self._ledger_at >= LEDGER_CACHE_S
        try:
            snapshot = await self._store.metrics_snapshot(now, ledger=stale)
        except CapgateError as exc:  # the store cannot be read: 503, not made-up numbers
            return error_response("admin", exc)
        if snapshot.ledger is not None:
            self._ledger, self._ledger_at = snapshot.ledger, time.monotonic()
        # No await between setting what the collector reads and rendering it.
        shared = self._shared
        shared.rows, shared.held = snapshot.limits, snapshot.reservations_held
        shared.ledger = self._ledger
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


class _SharedCollector(Collector):
    """Store-read gauges and counters, and this process's breakers, from the last read."""

    def __init__(self, breakers: Breakers, key_series: int) -> None:
        self._breakers = breakers
        self._key_series = key_series
        self.rows: _Rows = ()
        self.held = 0
        self.ledger: LedgerTotals | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._limits()
        held = GaugeMetricFamily(
            "capgate_reservations_held", "Reservations held now, by every process (store)."
        )
        held.add_metric((), self.held)
        yield held
        yield from self._ledger()
        yield from self._providers()

    def _limits(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "capgate_limit_used", "Used in the limit's current window (settled), from the store; dollars for cost_usd.", labels=_LIMIT_LABELS
        )  # fmt: skip
        reserved = GaugeMetricFamily(
            "capgate_limit_reserved", "Held for requests in flight in the limit's current window.", labels=_LIMIT_LABELS
        )  # fmt: skip
        maximum = GaugeMetricFamily("capgate_limit_max", "The limit.", labels=_LIMIT_LABELS)
        remaining = GaugeMetricFamily(
            "capgate_limit_remaining", "max - used - reserved, at least 0.", labels=_LIMIT_LABELS
        )
        for labels, (u, r, m) in self._grouped().items():
            scale = NANO if labels[2] == LimitMetric.COST_USD.value else 1
            used.add_metric(labels, u / scale)
            reserved.add_metric(labels, r / scale)
            maximum.add_metric(labels, m / scale)
            remaining.add_metric(labels, max(0, m - u - r) / scale)
        yield from (used, reserved, maximum, remaining)

    def _grouped(self) -> dict[tuple[str, ...], tuple[int, int, int]]:
        """(used, reserved, max) per series: keys beyond the top spenders summed as _other."""
        spend: dict[str, int] = {}
        for scope, usage in self.rows:
            if scope.kind is ScopeKind.KEY and usage.limit.metric is LimitMetric.COST_USD:
                spend[scope.id] = max(spend.get(scope.id, 0), usage.used + usage.reserved)
        keys = {s.id for s, _ in self.rows if s.kind is ScopeKind.KEY}
        ranked = sorted(keys, key=lambda k: -spend.get(k, 0))
        shown = set(ranked[: self._key_series])
        out: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for scope, usage in self.rows:
            limit, settled, reserved = usage.limit, usage.used, usage.reserved
            name = scope.name
            if scope.kind is ScopeKind.KEY and scope.id not in shown:
                name = OTHER
            labels = (
                scope.kind.value,
                name,
                limit.metric.value,
                limit.window.value,
                limit.model or "*",
            )
            u, r, m = out.get(labels, (0, 0, 0))
            out[labels] = (u + settled, r + reserved, m + limit.max)
        return out

    def _ledger(self) -> Iterator[Metric]:
        totals = self.ledger
        if totals is None:
            return
        requests = CounterMetricFamily(
            "capgate_ledger_requests", "Ledger entries of every process, by outcome.", labels=("outcome",)
        )  # fmt: skip
        for outcome, count in sorted(totals.requests.items()):
            requests.add_metric((outcome,), count)
        refusals = CounterMetricFamily(
            "capgate_ledger_refusals", "Refusals in the ledger, by reason.", labels=("reason",)
        )
        reasons: dict[str, int] = {}
        for code, count in totals.refusals.items():
            reason = reason_of_code(code)
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            refusals.add_metric((reason,), count)
        cost = CounterMetricFamily("capgate_ledger_cost_dollars", "Cost in the ledger, in dollars.")
        cost.add_metric((), totals.cost_nano / NANO)
        tokens = CounterMetricFamily(
            "capgate_ledger_tokens", "Tokens in the ledger, by kind.", labels=("kind",)
        )
        for kind, count in (
            ("input", totals.input_tokens),
            ("output", totals.output_tokens),
            ("cache_read", totals.cache_read_tokens),
            ("cache_write", totals.cache_write_tokens),
        ):
            tokens.add_metric((kind,), count)
        flagged = CounterMetricFamily(
            "capgate_ledger_flagged",
            "Ledger entries marked for a second look, by flag (over_reservation: usage above "
            "what was held; usage_unreadable; late_settlement; fail_open).",
            labels=("flag",),
        )
        for flag in LEDGER_FLAGS:  # every flag, zero included, so an alert rule can rate() it
            flagged.add_metric((flag,), totals.flagged.get(flag, 0))
        yield from (requests, refusals, cost, tokens, flagged)

    def _providers(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "capgate_upstream_errors", "Failed upstream attempts in this process.", labels=("provider",)
        )  # fmt: skip
        state = GaugeMetricFamily(
            "capgate_breaker_open", "1 while this process cools the provider down.", labels=("provider",)
        )  # fmt: skip
        in_a_row = GaugeMetricFamily(
            "capgate_upstream_failures_in_a_row", "Failures in a row, this process.", labels=("provider",)
        )  # fmt: skip
        for health in self._breakers.state():
            name = (health["provider"],)
            errors.add_metric(name, health["total_failures"])
            state.add_metric(name, 1 if health["state"] == "cooling" else 0)
            in_a_row.add_metric(name, health["failures_in_a_row"])
        yield from (errors, state, in_a_row)
        yield histogram_family(
            "capgate_upstream_attempt_duration_seconds",
            "Upstream attempts in this process, from sending to the end of the relayed answer.",
            ("provider", "result"), self._breakers.durations(),
        )  # fmt: skip
