"""The alerts' background task, one per process: every `alerts_interval_s` it reads the
store's counters (the same snapshot /metrics reads), this process's circuit breakers and,
for rate rules, ledger sums; it claims each alert it finds (the store lets one process
win each claim, with its deliveries queued in the same transaction) and sends what is
due. Nothing of this runs on a request's path."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from capgate.alerts import rules as r
from capgate.alerts.payload import alert_body, iso, render
from capgate.alerts.rotation_due import rotation_alerts
from capgate.alerts.sender import LEASE_S, Sender
from capgate.alerts.setup import AlertSetup, Webhook
from capgate.core.limits import Scope, ScopeKind, format_usd, nano_to_decimal_str
from capgate.core.windows import WindowKind, window_at
from capgate.store.alerting import AlertClaim, AlertStore, NewDelivery
from capgate.store.base import LedgerReader
from capgate.store.records import UsageRow

log = logging.getLogger(__name__)

WEEK_S = 7 * 86400
WEEK_CACHE_S = 600.0  # the 7-day average of spend_rate rules is read again this often
PRUNE_EVERY_S = 3600.0
KEEP_DELIVERIES_S = 30 * 86400


class AlertSource(AlertStore, LedgerReader, Protocol):
    """What the watcher reads and writes."""

    async def list_scopes(self, kind: ScopeKind) -> list[Scope]:
        """Every scope of `kind` (the keys, for their rotation schedules)."""


class AlertWatcher:
    def __init__(
        self,
        store: AlertSource,
        breakers: Callable[[], list[dict[str, Any]]],
        settings: Callable[[], dict[str, Any]],
        interval_s: float,
        max_attempts: int,
        retry_base_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._breakers = breakers
        self._settings = settings  # the effective runtime settings (alert_rules, ...)
        self._interval = interval_s
        self._clock = clock
        self.sender = Sender(store, uuid.uuid4().hex[:16], max_attempts, retry_base_s, clock)
        self._tried: dict[str, float] = {}  # claims this process tried, until they expire
        self._week: dict[str, tuple[float, int]] = {}  # scope -> (read at, 7 days' spend)
        self._pruned_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.sender.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the store is down, ...: try again at the next tick
                log.exception("evaluating alerts failed")
            await asyncio.sleep(self._interval)

    async def tick(self) -> None:
        setup = AlertSetup.from_json(await self._store.get_alert_config())
        effective = self._settings()
        allow_private = bool(effective["alerts_allow_private_targets"])
        if setup.webhooks:
            now = self._clock()
            defaults = r.parse_defaults(effective["alert_rules"])
            alerts = await self._alerts(setup, defaults, now)
            alerts += rotation_alerts(await self._store.list_scopes(ScopeKind.KEY), now)
            for alert in alerts:
                await self._fire(alert, setup.webhooks, now)
            await self._reports(setup.webhooks, str(effective["timezone"]), now)
        await self.sender.run_due(setup, allow_private)
        await self._prune()

    async def _alerts(
        self, setup: AlertSetup, defaults: Sequence[r.Rule], now: float
    ) -> list[r.Alert]:
        snapshot = await self._store.metrics_snapshot(now, ledger=False)
        found = r.threshold_alerts(snapshot.limits, setup.rules, defaults, now)
        for scope in {r.ALL, *(rule.scope for rule in setup.rules)}:
            for rule in r.rules_of(scope, "refusal_rate", setup.rules, defaults):
                rows = await self._rows(scope, now - rule.minutes * 60, now)
                requests, refused = sum(x.requests for x in rows), sum(x.refused for x in rows)
                alert = r.refusal_alert(rule, scope, requests, refused, now)
                found += [alert] if alert else []
            for rule in r.rules_of(scope, "spend_rate", setup.rules, defaults):
                hour = await self._spend(scope, now - 3600, now)
                week = await self._week_spend(scope, now)
                alert = r.spend_alert(rule, scope, hour, week, now)
                found += [alert] if alert else []
        down = r.rules_of(r.ALL, "provider_down", setup.rules, defaults)
        return found + r.provider_alerts(down, self._breakers(), now)

    async def _week_spend(self, scope: str, now: float) -> int:
        read_at, spend = self._week.get(scope, (0.0, 0))
        if now - read_at >= WEEK_CACHE_S:
            spend = await self._spend(scope, now - WEEK_S, now)
            self._week[scope] = (now, spend)
        return spend

    async def _spend(self, scope: str, since: float, until: float) -> int:
        return sum(row.cost_nano for row in await self._rows(scope, since, until))

    async def _rows(self, scope: str, since: float, until: float) -> list[UsageRow]:
        """The ledger's sums in [since, until) of a key, user, team or provider (or of
        all): one
        grouped pass (`summary` would also sort the entries for latency percentiles)."""
        kind = r.scope_kind(scope)
        rows = await self._store.usage(kind.value if kind else "outcome", since, until)
        name = scope.partition(":")[2]
        return [row for row in rows if kind is None or row.group == name]

    async def _fire(self, alert: r.Alert, webhooks: Sequence[Webhook], now: float) -> None:
        """Claim `alert` once per process (the store decides between processes)."""
        if alert.key in self._tried:
            return
        body = alert_body(alert, now)
        deliveries = tuple(
            NewDelivery(hook.name, render(body, hook.format))
            for hook in webhooks
            if hook.wants(alert)
        )
        await self._claim(alert.key, alert.expires_at, deliveries, now)

    async def _claim(
        self, key: str, expires_at: float, deliveries: tuple[NewDelivery, ...], now: float
    ) -> None:
        claim = AlertClaim(key, expires_at, deliveries, self.sender.owner, now + LEASE_S)
        won = await self._store.claim_alert(claim, now)
        self._tried[key] = expires_at
        if won:
            log.info("alert %s fired (%d deliveries)", key, len(deliveries))

    async def _reports(self, webhooks: Sequence[Webhook], tz: str, now: float) -> None:
        """Each report webhook's spend per team over the last full day or week."""
        for hook in webhooks:
            if hook.report is None or "report" not in hook.events:
                continue
            kind = WindowKind.DAY if hook.report == "daily" else WindowKind.WEEK
            until = window_at(kind, now, tz).start
            since = window_at(kind, until - 1, tz).start
            key = f"report:{hook.name}:{hook.report}:{since}"
            if key in self._tried:
                continue
            rows = await self._store.usage("team", since, until)
            body = _report(hook.report, since, until, rows, now)
            deliveries = (NewDelivery(hook.name, render(body, hook.format)),)
            await self._claim(key, until + 8 * 86400, deliveries, now)

    async def _prune(self) -> None:
        now = self._clock()
        self._tried = {k: e for k, e in self._tried.items() if e >= now}
        if now - self._pruned_at >= PRUNE_EVERY_S:
            await self._store.prune_alerts(now, KEEP_DELIVERIES_S)
            self._pruned_at = now


def _report(period: str, since: int, until: int, rows: Sequence[Any], now: float) -> dict[str, Any]:
    teams = [
        {
            "team": row.group,
            "requests": row.requests,
            "refused": row.refused,
            "cost_usd": nano_to_decimal_str(row.cost_nano),
        }
        for row in rows
    ]
    total = sum(row.cost_nano for row in rows)
    parts = ", ".join(
        f"{row.group or '(no team)'} {format_usd(row.cost_nano)}" for row in rows[:10]
    )
    text = f"{period} spend report {iso(since)[:10]}: {format_usd(total)} in all" + (
        f"; {parts}" if parts else ""
    )
    return {
        "id": f"report:{period}:{since}",
        "type": "report",
        "created_at": iso(now),
        "text": text,
        "scope": None,
        "data": {
            "period": period,
            "from": iso(since),
            "to": iso(until),
            "total_usd": nano_to_decimal_str(total),
            "teams": teams,
        },
    }
