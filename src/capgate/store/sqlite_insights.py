"""Read-only SQL for the dashboard: totals and latency percentiles of a period, raw rows
for charts, and the ledger and audit rows after a cursor for the live feed."""

from __future__ import annotations

import sqlite3
from typing import Any

from capgate.core.limits import Scope
from capgate.core.windows import window_at
from capgate.store import sqlite_daily as daily
from capgate.store import sqlite_queries as q
from capgate.store.base import RequestQuery
from capgate.store.ledger_daily import add_summary, add_totals
from capgate.store.records import (
    EventBatch,
    KeyActivity,
    LedgerTotals,
    LimitUsage,
    SeriesRow,
    Summary,
    count_reasons,
)
from capgate.store.rows import audit_from_row, entry_from_row, scope_from_row

_FILTERS = ("key", "team", "teams", "user", "model", "provider", "since", "until")


def summary(conn: sqlite3.Connection, query: RequestQuery) -> Summary:
    """Totals of the entries `query` selects, the error rate of admitted requests and the
    nearest-rank p50 / p95 latency of successful ones."""
    where, params = q.where_clause(query, _FILTERS)
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(outcome = 'refused'), 0), "  # noqa: S608 - fixed clauses
        "COALESCE(SUM(outcome IN ('error', 'lease_expired')), 0), "
        "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
        "COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), "
        f"COALESCE(SUM(cost_nano), 0), COUNT(DISTINCT key_name), {q.CACHE_SUMS} "
        f"FROM requests{where}",
        params,
    ).fetchone()
    ok_where = (where + " AND " if where else " WHERE ") + "outcome = 'ok'"
    requests, refused, errors, input_tokens, output_tokens, cache_read, cache_write, cost, keys = (
        row[:9]
    )
    kept = Summary(
        requests, refused, errors, input_tokens, output_tokens, cache_read, cache_write, cost, keys,
        cache_hits=row["cache_hits"], saved_nano=row["saved_nano"],
        refusals_by_reason=refusals_by_reason(conn, where, params),
        latency_p50_ms=_percentile(conn, ok_where, params, 50),
        latency_p95_ms=_percentile(conn, ok_where, params, 95),
    )  # fmt: skip
    folded, reasons = daily.sums(conn, where, params)  # days pruned from the ledger
    names = len(daily.key_names(conn, where, params)) if folded.requests else None
    return add_summary(kept, folded, reasons, names)


def refusals_by_reason(conn: sqlite3.Connection, where: str, params: list[Any]) -> dict[str, int]:
    """Refusals counted by `records.refusal_reason`, most first."""
    refused_where = (where + " AND " if where else " WHERE ") + "outcome = 'refused'"
    rows = conn.execute(
        "SELECT json_extract(refusal, '$.code'), json_extract(refusal, '$.limit.metric'), "  # noqa: S608
        f"json_extract(refusal, '$.limit.window'), COUNT(*) FROM requests{refused_where} "
        "GROUP BY 1, 2, 3",
        params,
    )
    return count_reasons(list(rows))


def _percentile(
    conn: sqlite3.Connection, where: str, params: list[Any], percent: int
) -> float | None:
    count = conn.execute(f"SELECT COUNT(*) FROM requests{where}", params).fetchone()[0]  # noqa: S608
    if not count:
        return None
    rank = -(-count * percent // 100) - 1  # nearest rank (ceil(n * p)), 0-based
    row = conn.execute(
        f"SELECT latency_ms FROM requests{where} ORDER BY latency_ms LIMIT 1 OFFSET ?",  # noqa: S608
        (*params, rank),
    ).fetchone()
    return None if row is None or row[0] is None else round(row[0], 3)


def series_rows(
    conn: sqlite3.Connection, query: RequestQuery, group_by: str | None, grain: int
) -> list[SeriesRow]:
    """Entries summed per `grain` seconds (UTC-aligned) and group: (bucket start, group,
    requests, cost in nano-dollars, tokens, refused, errors)."""
    column = q.GROUPS[group_by] if group_by else "NULL"
    where, params = q.where_clause(query, _FILTERS)
    rows = conn.execute(
        f"SELECT CAST(created_at / ? AS INTEGER) * ? AS b, {column} AS grp, COUNT(*), "  # noqa: S608 - column from GROUPS
        "SUM(cost_nano), SUM(input_tokens + output_tokens + cache_read_tokens + "
        "cache_write_tokens), SUM(outcome = 'refused'), SUM(outcome IN ('error', 'lease_expired')) "
        f"FROM requests{where} GROUP BY b, grp",
        (grain, grain, *params),
    )
    return [SeriesRow(*row) for row in rows] + daily.series(conn, where, params, group_by, grain)


def key_activity(
    conn: sqlite3.Connection, day_start: float, month_start: float
) -> dict[str, KeyActivity]:
    """Per key id: spend since `day_start` and since `month_start` (nano-dollars), and when
    its last request was made. One grouped pass over the month's entries (the created_at
    index), and one index lookup per key (requests_key) for its last request."""
    out: dict[str, KeyActivity] = {}
    for key_id, last in conn.execute(
        "SELECT id, COALESCE((SELECT created_at FROM requests WHERE key_name = scopes.name "
        "ORDER BY id DESC LIMIT 1), (SELECT MAX(created_at) FROM ledger_daily "
        "WHERE key_name = scopes.name)) FROM scopes WHERE kind = 'key'"
    ):
        out[key_id] = KeyActivity(last_used_at=last)
    rows = conn.execute(
        "SELECT key_id, SUM(CASE WHEN created_at >= ? THEN cost_nano ELSE 0 END), "
        "SUM(cost_nano) FROM requests WHERE created_at >= ? GROUP BY key_id",
        (day_start, month_start),
    )
    for key_id, today, month in rows:
        last = out.get(key_id, KeyActivity()).last_used_at
        out[key_id] = KeyActivity(int(today), int(month), last)
    return out


def latest_ids(conn: sqlite3.Connection) -> tuple[int, int]:
    requests = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]
    audit = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
    return int(requests), int(audit)


def events_after(
    conn: sqlite3.Connection, request_id: int, audit_id: int, limit: int
) -> EventBatch:
    """Ledger entries and audit entries with ids above the cursor, oldest first. Ids grow
    in commit order (every write holds SQLite's one write lock), so nothing committed
    later can appear below a cursor already read."""
    entries = conn.execute(
        "SELECT * FROM requests WHERE id > ? ORDER BY id LIMIT ?", (request_id, limit)
    )
    audits = conn.execute("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", (audit_id, limit))
    return EventBatch(
        tuple(entry_from_row(row) for row in entries),
        tuple(audit_from_row(row) for row in audits),
    )


# -- GET /metrics: what every process reads the same ------------------------------------


def scope_limits(conn: sqlite3.Connection, now: float) -> list[tuple[Scope, LimitUsage]]:
    """Every scope's limits as they stand in their current windows (see `limit_usage`)."""
    scopes = [scope_from_row(r) for r in conn.execute(q.SELECT_SCOPES + " ORDER BY kind, name")]
    return limit_usage(conn, scopes, now)


def limit_usage(
    conn: sqlite3.Connection, scopes: list[Scope], now: float
) -> list[tuple[Scope, LimitUsage]]:
    """Each limit of each scope with its current window's settled and reserved amounts
    (nano-dollars for cost) and reset time: one read of all the counter instances."""
    wanted = []
    for scope in scopes:
        for limit in scope.limits:
            window = window_at(limit.window, now, scope.timezone)
            wanted.append((scope, limit, scope.counter_id(limit), window))
    states = q.read_counters(conn, [(c, w.start, w.read_from) for _, _, c, w in wanted])
    out = []
    for scope, limit, counter, window in wanted:
        state = states.get((counter, window.start))
        used, reserved = (state.settled, state.reserved) if state else (0, 0)
        out.append((scope, LimitUsage(limit, used, reserved, window.resets_at)))
    return out


def ledger_totals(conn: sqlite3.Connection) -> LedgerTotals:
    """The whole ledger's totals: requests by outcome, cost (nano-dollars), tokens by kind,
    refusals by reason."""
    outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM requests GROUP BY outcome"))
    row = conn.execute(
        "SELECT COALESCE(SUM(cost_nano), 0), COALESCE(SUM(input_tokens), 0), "
        "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), "
        "COALESCE(SUM(cache_write_tokens), 0) FROM requests"
    ).fetchone()
    flagged: dict[str, int] = {}
    for flags, count in conn.execute(
        "SELECT flags, COUNT(*) FROM requests WHERE flags IS NOT NULL GROUP BY flags"
    ):
        for flag in flags.split(","):
            flagged[flag] = flagged.get(flag, 0) + count
    kept = LedgerTotals(
        requests=outcomes,
        cost_nano=int(row[0]),
        input_tokens=int(row[1]),
        output_tokens=int(row[2]),
        cache_read_tokens=int(row[3]),
        cache_write_tokens=int(row[4]),
        refusals=refusals_by_reason(conn, "", []),
        flagged=flagged,
    )
    folded, reasons = daily.sums(conn, "", [])  # days pruned from the ledger
    return add_totals(kept, daily.outcomes(conn), folded, reasons)


def reservations_held(conn: sqlite3.Connection) -> int:
    """Reservations held now, by every process."""
    return int(conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0])
