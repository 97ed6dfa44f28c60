"""Alert rules and which alerts they fire, pure: no I/O, no clock (callers pass `now`).

A rule is one of four types:
- `threshold`: percents of a scope's limits (of one metric, or of every limit), each in
  the limit's current window: fired once per limit, window instance and percent;
- `refusal_rate`: the refused share of a scope's requests over the last `minutes`;
- `spend_rate`: the spend of the last hour above `factor` x the average hourly spend of
  the last 7 days, and at least `floor_usd`;
- `provider_down`: a provider's circuit breaker is open.

Rules are set per scope (`scope` "team:eng", ...; "*" is all traffic), and the server's
defaults (the runtime setting `alert_rules`) apply where a scope has no rule of that type.
Each alert is named by its `key`; the store lets one process claim a key, once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capgate.core.limits import (
    Limit,
    Metric,
    Scope,
    ScopeKind,
    format_usd,
    nano_to_decimal_str,
    usd_to_nano,
)
from capgate.core.windows import NEVER, Rolling, WindowKind
from capgate.store.records import LimitUsage

TYPES = ("threshold", "refusal_rate", "spend_rate", "provider_down")
ALL = "*"  # the scope of all traffic (and of the server's default rules)
DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"type": "threshold", "percents": [50, 80, 100], "metric": "cost_usd"},
    {"type": "provider_down"},
)
_SCOPE = re.compile(r"^(key|user|team|org|provider):(.+)$")


@dataclass(frozen=True, slots=True)
class Rule:
    type: str
    scope: str = ALL  # "team:eng", ... or "*"
    id: str = "default"
    percents: tuple[int, ...] = ()  # threshold
    metric: str | None = None  # threshold: one metric, None: every limit
    percent: float = 0.0  # refusal_rate: above this share of refused requests
    minutes: int = 15  # refusal_rate: over this many minutes
    min_requests: int = 20  # refusal_rate: not below this many requests
    factor: float = 3.0  # spend_rate
    floor_nano: int = usd_to_nano("1.00")  # spend_rate
    provider: str | None = None  # provider_down: this one, None: any
    every_minutes: int = 60  # provider_down: at most once per provider per this long

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "scope": self.scope}
        if self.type == "threshold":
            out |= {"percents": list(self.percents), "metric": self.metric}
        elif self.type == "refusal_rate":
            out |= {"percent": self.percent, "minutes": self.minutes}
            out["min_requests"] = self.min_requests
        elif self.type == "spend_rate":
            out |= {"factor": self.factor, "floor_usd": nano_to_decimal_str(self.floor_nano)}
        else:
            out |= {"provider": self.provider, "every_minutes": self.every_minutes}
        return out


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert to fire once: `key` names it, `expires_at` ends its claim."""

    key: str
    expires_at: float
    type: str
    text: str
    scope: tuple[str, str] | None  # (kind, name)
    data: dict[str, Any] = field(default_factory=dict)


def _number(data: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{name}: a number from {lo:g} to {hi:g}")
    return float(value)


def parse_rule(data: Mapping[str, Any], *, default: bool = False) -> Rule:
    """A rule from its JSON; ValueError names the bad field. `default`: a server default
    (no scope, no id)."""
    if not isinstance(data, Mapping):
        raise ValueError("a rule is an object")
    kind = data.get("type")
    if kind not in TYPES:
        raise ValueError(f"type: one of {', '.join(TYPES)}")
    allowed = set(Rule(str(kind)).to_json())  # id, type, scope and the type's own
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a field of a {kind} rule")
    scope = ALL if default else str(data.get("scope", ""))
    if scope != ALL and not _SCOPE.match(scope):
        raise ValueError('scope: "KIND:NAME" (key, user, team, org or provider) or "*"')
    if kind in ("refusal_rate", "spend_rate") and scope.startswith("org:"):
        # The ledger names each request's key, user, team and provider, not its org.
        raise ValueError(
            f"scope: a {kind} rule is for a key, user, team or provider, or * (all traffic)"
        )
    if kind == "provider_down" and scope != ALL:
        raise ValueError('scope: a provider_down rule is server-wide ("*")')
    rule_id = "default" if default else str(data.get("id", "default"))
    if kind == "threshold":
        return Rule(kind, scope, rule_id, _percents(data), _metric(data))
    if kind == "refusal_rate":
        return Rule(
            kind, scope, rule_id,
            percent=_number(data, "percent", 50, 0.01, 100),
            minutes=int(_number(data, "minutes", 15, 1, 1440)),
            min_requests=int(_number(data, "min_requests", 20, 1, 1_000_000)),
        )  # fmt: skip
    if kind == "spend_rate":
        try:
            floor = usd_to_nano(data.get("floor_usd", "1.00"))
        except (ValueError, TypeError, ArithmeticError):
            raise ValueError('floor_usd: dollars, e.g. "5.00"') from None
        factor = _number(data, "factor", 3, 1.01, 1000)
        return Rule(kind, scope, rule_id, factor=factor, floor_nano=floor)
    provider = data.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ValueError("provider: a provider's name, or null for any")
    every = int(_number(data, "every_minutes", 60, 1, 10080))
    return Rule(kind, scope, rule_id, provider=provider, every_minutes=every)


def _percents(data: Mapping[str, Any]) -> tuple[int, ...]:
    raw = data.get("percents", [50, 80, 100])
    if (
        not isinstance(raw, list)
        or not raw
        or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 1000 for p in raw)
    ):
        raise ValueError("percents: a list of whole numbers from 1 to 1000")
    return tuple(sorted(set(raw)))


def _metric(data: Mapping[str, Any]) -> str | None:
    metric = data.get("metric", "cost_usd")
    if metric is None or metric == ALL:
        return None
    if metric not in {m.value for m in Metric}:
        raise ValueError(f'metric: one of {", ".join(m.value for m in Metric)}, or "*"')
    return str(metric)


def parse_defaults(raw: Any) -> tuple[Rule, ...]:
    """The server's default rules (the runtime setting `alert_rules`)."""
    if not isinstance(raw, list):
        raise ValueError("alert_rules: a list of rules")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(parse_rule(item, default=True))
        except ValueError as exc:
            raise ValueError(f"alert_rules[{i}].{exc}") from None
    return tuple(out)


def scope_label(scope: Scope) -> str:
    return f"{scope.kind.value}:{scope.name}"


def rules_of(scope: str, type_: str, rules: Sequence[Rule], defaults: Sequence[Rule]) -> list[Rule]:
    """The rules of `type_` for `scope`: its own, else the server's defaults. Defaults
    other than thresholds are about all traffic (`*`): a scope has only its own."""
    own = [r for r in rules if r.scope == scope and r.type == type_]
    if own or (type_ != "threshold" and scope != ALL):
        return own
    return [r for r in defaults if r.type == type_]


def threshold_alerts(
    rows: Iterable[tuple[Scope, LimitUsage]],
    rules: Sequence[Rule],
    defaults: Sequence[Rule],
    now: float,
) -> list[Alert]:
    """Every threshold a scope's settled usage has reached in its limit's current window."""
    out = []
    for scope, usage in rows:
        limit = usage.limit
        if limit.max <= 0:
            continue
        for rule in rules_of(scope_label(scope), "threshold", rules, defaults):
            if rule.metric is not None and rule.metric != limit.metric.value:
                continue
            for pct in rule.percents:
                if usage.used * 100 >= pct * limit.max:  # exact: integers
                    out.append(_threshold(scope, usage, pct, now))
    return out


def _window_id(limit: Limit, usage: LimitUsage, now: float) -> tuple[int, float]:
    """What names the window instance, and when its claim may be forgotten."""
    if isinstance(limit.window, Rolling):  # no instance: once per span
        start = math.floor(now / limit.window.span) * limit.window.span
        return start, start + 2 * limit.window.span
    if limit.window is WindowKind.TOTAL:
        return NEVER, float(NEVER)
    return usage.resets_at, float(usage.resets_at)


def _threshold(scope: Scope, usage: LimitUsage, pct: int, now: float) -> Alert:
    limit = usage.limit
    window, expires = _window_id(limit, usage, now)
    key = f"threshold:{scope.kind.value}:{scope.id}:{limit.ident}:{window}:{pct}"
    what = f" of {limit.model}" if limit.model else ""
    window_name = limit.window.value
    text = (
        f'{scope.kind.value} "{scope.name}" reached {pct}% of its {window_name} '
        f"{limit.metric.value} limit{what}: {limit.format_amount(usage.used)} of "
        f"{limit.format_amount(limit.max)}"
    )
    data = {
        "metric": limit.metric.value,
        "window": window_name,
        "model": limit.model,
        "threshold_percent": pct,
        "used": _amount(limit, usage.used),
        "max": _amount(limit, limit.max),
        "resets_at": None if limit.window is WindowKind.TOTAL else usage.resets_at,
    }
    return Alert(key, expires, "threshold", text, (scope.kind.value, scope.name), data)


def _amount(limit: Limit, amount: int) -> str | int:
    """Dollars as an exact decimal string, other metrics as integers."""
    if limit.metric is Metric.COST_USD:
        return nano_to_decimal_str(amount)
    return amount


def refusal_alert(rule: Rule, scope: str, requests: int, refused: int, now: float) -> Alert | None:
    """The refusal-rate alert of `scope` when `refused` of `requests` (over the rule's
    last minutes) is above its percent; once per span of `minutes`."""
    if requests < rule.min_requests or refused * 100 <= rule.percent * requests:
        return None
    span = rule.minutes * 60
    start = math.floor(now / span) * span
    share = round(100 * refused / requests, 1)
    who = "all traffic" if scope == ALL else scope
    text = (
        f"{who}: {share}% of requests refused in the last {rule.minutes} min "
        f"({refused} of {requests}; the rule says above {rule.percent:g}%)"
    )
    data = {"requests": requests, "refused": refused, "percent": share, "minutes": rule.minutes}
    key = f"refusal_rate:{scope}:{rule.id}:{start}"
    return Alert(key, start + 2 * span, "refusal_rate", text, _scope_pair(scope), data)


def spend_alert(rule: Rule, scope: str, last_hour: int, week: int, now: float) -> Alert | None:
    """The spend-rate alert of `scope` when the last hour's spend is above `factor` x
    the average hour of the last 7 days (`week`: their spend) and at least the floor."""
    average = week / (7 * 24)
    if last_hour < rule.floor_nano or last_hour <= rule.factor * average:
        return None
    hour = math.floor(now / 3600) * 3600
    who = "all traffic" if scope == ALL else scope
    text = (
        f"{who}: spent {format_usd(last_hour)} in the last hour, over {rule.factor:g}x "
        f"the average hour of the last 7 days ({format_usd(int(average))})"
    )
    data = {
        "last_hour_usd": nano_to_decimal_str(last_hour),
        "average_hour_usd": nano_to_decimal_str(int(average)),
        "factor": rule.factor,
    }
    key = f"spend_rate:{scope}:{rule.id}:{hour}"
    return Alert(key, hour + 7200, "spend_rate", text, _scope_pair(scope), data)


def provider_alerts(
    rules: Sequence[Rule], state: Iterable[Mapping[str, Any]], now: float
) -> list[Alert]:
    """A provider whose breaker is open (`Breakers.state()`), once per `every_minutes`."""
    out = []
    for health in state:
        if health["state"] != "cooling":
            continue
        name = str(health["provider"])
        for rule in rules:
            if rule.type != "provider_down" or rule.provider not in (None, name):
                continue
            span = rule.every_minutes * 60
            start = math.floor(now / span) * span
            text = (
                f'provider "{name}" is down: its circuit breaker is open after '
                f"{health['failures_in_a_row']} failures in a row ({health['last_error']})"
            )
            data = {
                "provider": name,
                "failures_in_a_row": health["failures_in_a_row"],
                "last_error": health["last_error"],
            }
            key = f"provider_down:{name}:{rule.id}:{start}"
            out.append(
                Alert(key, start + 2 * span, "provider_down", text, ("provider", name), data)
            )
    return out


def _scope_pair(scope: str) -> tuple[str, str] | None:
    if scope == ALL:
        return None
    kind, _, name = scope.partition(":")
    return kind, name


def scope_kind(scope: str) -> ScopeKind | None:
    pair = _scope_pair(scope)
    return None if pair is None else ScopeKind(pair[0])
