"""The store's records as the admin API, the live feed and `/v1/me` show them (JSON).

One place for each shape: money as decimal strings of dollars, times as ISO 8601 UTC,
latencies rounded to microseconds.
"""

from __future__ import annotations

from typing import Any

from capgate.core.limits import Metric, nano_to_decimal_str
from capgate.store.records import AuditEntry, LedgerEntry, LimitUsage, Summary, UsageRow, iso


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    """One ledger entry (`GET /admin/requests`, the live feed's `request` events)."""
    return {
        "id": entry.id,
        "request_id": entry.request_id,
        "created_at": iso(entry.created_at),
        "key": entry.key_name,
        "user": entry.user,
        "team": entry.team,
        "model": entry.model,
        "provider": entry.provider,
        "upstream_model": entry.upstream_model,
        "endpoint": entry.endpoint,
        "stream": entry.stream,
        "status": entry.status,
        "outcome": entry.outcome,
        "input_tokens": entry.input_tokens,
        "output_tokens": entry.output_tokens,
        "cache_read_tokens": entry.cache_read_tokens,
        "cache_write_tokens": entry.cache_write_tokens,
        "cost_usd": nano_to_decimal_str(entry.cost_nano),
        "latency_ms": _ms(entry.latency_ms),
        "ttft_ms": _ms(entry.ttft_ms),
        "attempts": entry.attempts,
        "refusal": entry.refusal,
        "error": entry.error,
        "max_tokens_clamped": entry.max_tokens_clamped,
        "flags": list(entry.flags),
        "session": entry.session,
        "prompt": entry.prompt,
        "rule": entry.rule,
        "cache": entry.cache,
        "saved_usd": nano_to_decimal_str(entry.saved_nano),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "created_at": iso(entry.created_at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }


def limit_usage_json(usage: LimitUsage) -> dict[str, Any]:
    """A limit with its window's used, reserved and remaining, and `resets_at`."""
    out = usage.limit.to_json()
    if usage.limit.metric is Metric.COST_USD:
        out["used"] = nano_to_decimal_str(usage.used)
        out["reserved"] = nano_to_decimal_str(usage.reserved)
        out["remaining"] = nano_to_decimal_str(usage.remaining)
    else:
        out.update(used=usage.used, reserved=usage.reserved, remaining=usage.remaining)
    out["resets_at"] = usage.resets_at
    return out


def usage_json(row: UsageRow, group_by: str) -> dict[str, Any]:
    """One group of `GET /admin/usage`, named by the grouping (`{"key": ..., ...}`)."""
    return {
        group_by: row.group,
        "requests": row.requests,
        "refused": row.refused,
        "errors": row.errors,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "cost_usd": nano_to_decimal_str(row.cost_nano),
        "cache_hits": row.cache_hits,
        "saved_usd": nano_to_decimal_str(row.saved_nano),
    }


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "requests": summary.requests,
        "refused": summary.refused,
        "errors": summary.errors,
        "error_rate": summary.error_rate,
        "input_tokens": summary.input_tokens,
        "output_tokens": summary.output_tokens,
        "cache_read_tokens": summary.cache_read_tokens,
        "cache_write_tokens": summary.cache_write_tokens,
        "cost_usd": nano_to_decimal_str(summary.cost_nano),
        "cache_hits": summary.cache_hits,
        "saved_usd": nano_to_decimal_str(summary.saved_nano),
        "keys": summary.keys,
        "refusals_by_reason": summary.refusals_by_reason,
        "latency_ms": {"p50": _ms(summary.latency_p50_ms), "p95": _ms(summary.latency_p95_ms)},
    }
