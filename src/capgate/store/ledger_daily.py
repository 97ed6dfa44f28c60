"""Ledger pruning (`server.ledger_retention_days`): entries older than N days are folded
into `ledger_daily` and deleted; the reads that sum the ledger add the folded rows, so
their totals stay what they were. Shared by both engines (the SQL is each engine's).

`ledger_daily` has the ledger's own column names for what it keeps (so the same
`where_clause` filters it): `created_at` is the UTC day's start, then key_id, key_name,
user, team, model, upstream_model, provider, outcome, `reason` (a refusal's
`refusal_reason`, else ''), and the sums: requests, input_tokens, output_tokens,
cache_read_tokens, cache_write_tokens, cost_nano, and the response cache's cache_hits and
saved_nano (SQLite migration 19 / PostgreSQL 14; days folded before it count 0 there). A
group may have several rows (one per fold batch): every read sums them.

What a folded day no longer has: the entries themselves (`GET /admin/requests`, exports;
archive them with `server.ledger_archive_dir`), latencies (p50/p95 cover kept entries),
flags (`capgate_ledger_flagged_total` counts kept entries), and the time of day (a folded
day counts whole, at its UTC midnight: in a chart by hour, in the bucket of 00:00 UTC).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from capgate.store.records import (
    LedgerEntry,
    LedgerTotals,
    Summary,
    UsageRow,
    refusal_reason,
)

DAY_S = 86_400
DAILY_COLUMNS = (
    "created_at", "key_id", "key_name", "user", "team", "model", "upstream_model", "provider",
    "outcome", "reason", "requests", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_nano", "cache_hits", "saved_nano",
)  # fmt: skip

DailyRow = tuple[object, ...]


def day_start(ts: float) -> float:
    return float(int(ts // DAY_S) * DAY_S)


def fold(entries: Iterable[LedgerEntry]) -> list[DailyRow]:
    """Ledger entries summed per UTC day and group: rows of DAILY_COLUMNS."""
    sums: dict[tuple[object, ...], list[int]] = {}
    for e in entries:
        reason = ""
        if e.outcome == "refused":
            refusal = e.refusal or {}
            limit = refusal.get("limit") or {}
            reason = refusal_reason(refusal.get("code"), limit.get("metric"), limit.get("window"))
        group = (
            day_start(e.created_at), e.key_id, e.key_name, e.user, e.team, e.model,
            e.upstream_model, e.provider, e.outcome, reason,
        )  # fmt: skip
        row = sums.setdefault(group, [0, 0, 0, 0, 0, 0, 0, 0])
        for i, value in enumerate(
            (1, e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
             e.cost_nano, int(e.cache == "hit"), e.saved_nano)
        ):  # fmt: skip
            row[i] += value
    return [(*group, *values) for group, values in sums.items()]


def merge_usage(kept: list[UsageRow], folded: list[UsageRow]) -> list[UsageRow]:
    """Usage rows of the kept entries plus the folded days', in the order of `usage`:
    cost descending, then the group (None first, then by code point)."""
    if not folded:
        return kept
    by_group = {row.group: row for row in kept}
    for row in folded:
        old = by_group.get(row.group)
        by_group[row.group] = row if old is None else _add_usage(old, row)
    return sorted(
        by_group.values(), key=lambda r: (-r.cost_nano, r.group is not None, r.group or "")
    )


def _add_usage(a: UsageRow, b: UsageRow) -> UsageRow:
    return UsageRow(
        a.group, a.requests + b.requests, a.refused + b.refused, a.errors + b.errors,
        a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens,
        a.cache_read_tokens + b.cache_read_tokens, a.cache_write_tokens + b.cache_write_tokens,
        a.cost_nano + b.cost_nano, a.cache_hits + b.cache_hits, a.saved_nano + b.saved_nano,
    )  # fmt: skip


def add_reasons(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Refusal counts by reason, most first then by name (as `count_reasons`)."""
    if not b:
        return a
    counts = dict(a)
    for reason, n in b.items():
        counts[reason] = counts.get(reason, 0) + n
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def add_summary(
    kept: Summary, folded: UsageRow, reasons: dict[str, int], keys: int | None
) -> Summary:
    """`kept` plus the folded days' sums (`folded.group` unused); `keys`: the distinct
    key names of both, when folded days count."""
    if not folded.requests:
        return kept
    return replace(
        kept,
        requests=kept.requests + folded.requests,
        refused=kept.refused + folded.refused,
        errors=kept.errors + folded.errors,
        input_tokens=kept.input_tokens + folded.input_tokens,
        output_tokens=kept.output_tokens + folded.output_tokens,
        cache_read_tokens=kept.cache_read_tokens + folded.cache_read_tokens,
        cache_write_tokens=kept.cache_write_tokens + folded.cache_write_tokens,
        cost_nano=kept.cost_nano + folded.cost_nano,
        cache_hits=kept.cache_hits + folded.cache_hits,
        saved_nano=kept.saved_nano + folded.saved_nano,
        keys=kept.keys if keys is None else keys,
        refusals_by_reason=add_reasons(kept.refusals_by_reason, reasons),
    )


def add_totals(
    kept: LedgerTotals, outcomes: dict[str, int], folded: UsageRow, reasons: dict[str, int]
) -> LedgerTotals:
    if not outcomes:
        return kept
    requests = dict(kept.requests)
    for outcome, n in outcomes.items():
        requests[outcome] = requests.get(outcome, 0) + n
    return replace(
        kept,
        requests=requests,
        cost_nano=kept.cost_nano + folded.cost_nano,
        input_tokens=kept.input_tokens + folded.input_tokens,
        output_tokens=kept.output_tokens + folded.output_tokens,
        cache_read_tokens=kept.cache_read_tokens + folded.cache_read_tokens,
        cache_write_tokens=kept.cache_write_tokens + folded.cache_write_tokens,
        refusals=add_reasons(kept.refusals, reasons),
    )


class LedgerPruning(Protocol):
    """The store's part of ledger pruning (part of `base.Store`)."""

    async def old_entries(self, before: float, limit: int) -> list[LedgerEntry]:
        """Up to `limit` ledger entries made before `before`, oldest (lowest id) first."""
        ...

    async def fold_entries(self, ids: Sequence[int], before: float) -> int:
        """In one transaction: delete the entries of `ids` still there and made before
        `before`, and add their sums to ledger_daily; how many. An entry is folded once
        even when several processes or nodes fold the same ids at once."""
        ...
