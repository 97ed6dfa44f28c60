"""What a hook machine is shown of its limits: the status rows (`GET /hook/v1/status`,
`capgate status` with a machine token) and the cache it enforces offline (`<cache>` in
every gate and check answer). Pure: the HTTP layer reads the counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from capgate.core.money import Price
from capgate.core.windows import NEVER
from capgate.hook.gate import Standing, amount_text
from capgate.store.records import LimitUsage


def resets_at(usage: LimitUsage) -> float | None:
    return None if usage.resets_at >= NEVER else float(usage.resets_at)


def limit_row(standing: Standing) -> dict[str, Any]:
    """One limit as `capgate status` shows it: amounts in the metric's unit (nano-dollars
    for cost) and as text."""
    u, metric = standing.usage, standing.usage.limit.metric
    left = u.remaining
    return {
        "scope": standing.scope,
        "metric": metric.value,
        "window": u.limit.window.value,
        "model": u.limit.model,
        "max": u.limit.max,
        "used": u.used,
        "held": u.reserved,
        "left": left,
        "resets_at": resets_at(u),
        "max_text": amount_text(metric, u.limit.max),
        "used_text": amount_text(metric, u.used),
        "left_text": amount_text(metric, left),
    }


def per_million(pico: int) -> str:
    """Pico-dollars per token as dollars per million tokens, exact (`3`, `0.3`, `18.75`)."""
    return format(Decimal(pico).scaleb(-6).normalize(), "f")


def prices_json(prices: Mapping[str, Price]) -> dict[str, dict[str, str]]:
    return {
        model: {
            "input": per_million(p.input),
            "output": per_million(p.output),
            "cache_read": per_million(p.cache_read),
            "cache_write": per_million(p.cache_write),
            "cache_write_1h": per_million(p.cache_write_1h),
        }
        for model, p in sorted(prices.items())
    }


def cache_document(
    *,
    now: float,
    offline_s: float,
    status: str,
    logout: bool,
    timezone: str,
    default_model: str | None,
    weights: Mapping[str, int],
    estimate: tuple[int, int],
    prices: Mapping[str, Price],
    models: Sequence[str],
    blocked: Mapping[str, str],
    standing: Sequence[Standing],
) -> dict[str, Any]:
    """What the hook enforces while the server cannot be reached, until `valid_until`:
    the limits with what was used (settled and held) when it was issued."""
    return {
        "issued_at": now,
        "valid_until": now + offline_s,
        "status": status,
        "logout": logout,
        "timezone": timezone,
        "default_model": default_model,
        "weights": dict(weights),
        "estimate": {"input": estimate[0], "output": estimate[1]},
        "prices": prices_json(prices),
        "models": list(models),
        "blocked_models": dict(blocked),
        "limits": [
            {
                "label": f"{s.scope} {s.usage.limit.metric.value}/{s.usage.limit.window.value}"
                + (f" {s.usage.limit.model}" if s.usage.limit.model else ""),
                "metric": s.usage.limit.metric.value,
                "window": s.usage.limit.window.value,
                "model": s.usage.limit.model,
                "max": s.usage.limit.max,
                "used": s.usage.used + s.usage.reserved,
                "resets_at": resets_at(s.usage),
            }
            for s in standing
        ],
    }
