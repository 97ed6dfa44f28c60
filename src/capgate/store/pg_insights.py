"""Read-only SQL of the PostgreSQL store for the dashboard and /metrics: totals and latency
percentiles of a period, sums for charts, spend per key, the live feed's rows above a
cursor, and every scope's limits as they stand. Same numbers as `sqlite_insights` for the
same rows (see `pg_queries` for what keeps them equal)."""

from __future__ import annotations

from typing import Any

from capgate.core.limits import Limit, Scope
from capgate.core.windows import window_at
from capgate.store import pg_daily
from capgate.store import pg_queries as q
from capgate.store.base import RequestQuery
from capgate.store.ledger_daily import add_summary, add_totals
from capgate.store.records import (
    KeyActivity,
    LedgerTotals,
    LimitUsage,
    SeriesRow,
    Summary,
    count_reasons,
)
from capgate.store.rows import scope_from_row

_FILTERS = ("key", "team", "teams", "user", "model", "provider", "since", "until")


async def summary(conn: q.Conn, query: RequestQuery) -> Summary:
    """Totals of the entries `query` selects and the nearest-rank p50 / p95 latency of the
    successful ones."""
    where, params = q.where_clause(query, _FILTERS)
    row = await conn.fetchrow(
        f"SELECT COUNT(*), {q.REFUSED}, {q.ERRORS}, "  # noqa: S608 - fixed clauses
        "COALESCE(SUM(input_tokens), 0)::bigint, COALESCE(SUM(output_tokens), 0)::bigint, "
        "COALESCE(SUM(cache_read_tokens), 0)::bigint, "
        "COALESCE(SUM(cache_write_tokens), 0)::bigint, COALESCE(SUM(cost_nano), 0)::bigint, "
        f"COUNT(DISTINCT key_name), {q.CACHE_SUMS} FROM requests{where}",
        *params,
    )
    assert row is not None
    ok_where = (where + " AND " if where else " WHERE ") + "outcome = 'ok'"
    kept = Summary(
        requests=row[0],
        refused=row[1],
        errors=row[2],
        input_tokens=row[3],
        output_tokens=row[4],
        cache_read_tokens=row[5],
        cache_write_tokens=row[6],
        cost_nano=row[7],
        keys=row[8],
        cache_hits=row["cache_hits"],
        saved_nano=row["saved_nano"],
        refusals_by_reason=await refusals_by_reason(conn, where, params),
        latency_p50_ms=await _percentile(conn, ok_where, params, 50),
        latency_p95_ms=await _percentile(conn, ok_where, params, 95),
    )
    folded, reasons = await pg_daily.sums(conn, where, params)  # days pruned from the ledger
    names = len(await pg_daily.key_names(conn, where, params)) if folded.requests else None
    return add_summary(kept, folded, reasons, names)


async def refusals_by_reason(conn: q.Conn, where: str, params: list[Any]) -> dict[str, int]:
    """Refusals counted by why (`records.refusal_reason`), most first."""
    refused_where = (where + " AND " if where else " WHERE ") + "outcome = 'refused'"
    rows = await conn.fetch(
        "SELECT refusal::json ->> 'code', refusal::json -> 'limit' ->> 'metric', "  # noqa: S608
        f"refusal::json -> 'limit' ->> 'window', COUNT(*) FROM requests{refused_where} "
        "GROUP BY 1, 2, 3",
        *params,
    )
    return count_reasons([(r[0], r[1], r[2], r[3]) for r in rows])


async def _percentile(conn: q.Conn, where: str, params: list[Any], percent: int) -> float | None:
    """Nearest rank (ceil(n * p), 1-based) in SQLite's order: NULL latencies first."""
    count = await conn.fetchval(f"SELECT COUNT(*) FROM requests{where}", *params)  # noqa: S608
    if not count:
        return None
    rank = -(-count * percent // 100) - 1
    value = await conn.fetchval(
        f"SELECT latency_ms FROM requests{where} ORDER BY latency_ms NULLS FIRST "  # noqa: S608
        f"LIMIT 1 OFFSET ${len(params) + 1}",
        *params,
        rank,
    )
    return None if value is None else round(value, 3)


async def series_rows(
    conn: q.Conn, query: RequestQuery, group_by: str | None, grain: int
) -> list[SeriesRow]:
    """Entries summed per `grain` seconds (UTC-aligned: SQLite's CAST truncates, so does
    trunc) and group."""
    column = q.GROUPS[group_by] if group_by else "NULL::text"
    where, params = q.where_clause(query, _FILTERS, first=3)
    rows = await conn.fetch(
        f"SELECT trunc(created_at / $1)::bigint * $2 AS b, {column} AS grp, COUNT(*), "  # noqa: S608 - column from GROUPS
        "SUM(cost_nano)::bigint, SUM(input_tokens + output_tokens + cache_read_tokens + "
        f"cache_write_tokens)::bigint, {q.REFUSED}, {q.ERRORS} "
        f"FROM requests{where} GROUP BY b, grp",
        float(grain),
        grain,
        *params,
    )
    folded = await pg_daily.series(conn, query, _FILTERS, group_by, grain)
    return [SeriesRow(*row) for row in rows] + folded


async def key_activity(
    conn: q.Conn, day_start: float, month_start: float
) -> dict[str, KeyActivity]:
    """Per key id: spend since `day_start` and since `month_start` (nano-dollars), and when
    its last request was made."""
    out: dict[str, KeyActivity] = {}
    for key_id, last in await conn.fetch(
        "SELECT id, COALESCE((SELECT created_at FROM requests WHERE key_name = scopes.name "
        "ORDER BY id DESC LIMIT 1), (SELECT MAX(created_at) FROM ledger_daily "
        "WHERE key_name = scopes.name)) FROM scopes WHERE kind = 'key'"
    ):
        out[key_id] = KeyActivity(0, 0, last)
    rows = await conn.fetch(
        "SELECT key_id, SUM(CASE WHEN created_at >= $1 THEN cost_nano ELSE 0 END)::bigint, "
        "SUM(cost_nano)::bigint FROM requests WHERE created_at >= $2 GROUP BY key_id",
        float(day_start),
        float(month_start),
    )
    for key_id, today, month in rows:
        last = out[key_id].last_used_at if key_id in out else None
        out[key_id] = KeyActivity(int(today), int(month), last)
    return out


# -- GET /metrics ------------------------------------------------------------------------


async def scope_limits(conn: q.Conn, now: float) -> list[tuple[Scope, LimitUsage]]:
    """Every scope with limits, each limit in its current window: one read of all the
    counter instances."""
    rows = await conn.fetch(q.SELECT_SCOPES + ' ORDER BY kind COLLATE "C", name COLLATE "C"')
    wanted: list[tuple[Scope, Limit, str, Any]] = []
    for scope in (scope_from_row(r) for r in rows):
        for limit in scope.limits:
            window = window_at(limit.window, now, scope.timezone)
            wanted.append((scope, limit, scope.counter_id(limit), window))
    if not wanted:
        return []
    states = await conn.fetchrow(
        "SELECT settled, reserved FROM capgate_states($1, $2, $3)",
        [w[2] for w in wanted],
        [w[3].start for w in wanted],
        [w[3].read_from for w in wanted],
    )
    assert states is not None
    return [
        (scope, LimitUsage(limit, settled, reserved, window.resets_at))
        for (scope, limit, _, window), settled, reserved in zip(
            wanted, states["settled"], states["reserved"], strict=True
        )
    ]


async def ledger_totals(conn: q.Conn) -> LedgerTotals:
    """The whole ledger's totals: requests by outcome, cost, tokens by kind, refusals by
    reason, flagged entries by flag."""
    outcomes = {
        row[0]: row[1]
        for row in await conn.fetch("SELECT outcome, COUNT(*) FROM requests GROUP BY outcome")
    }
    row = await conn.fetchrow(
        "SELECT COALESCE(SUM(cost_nano), 0)::bigint, COALESCE(SUM(input_tokens), 0)::bigint, "
        "COALESCE(SUM(output_tokens), 0)::bigint, COALESCE(SUM(cache_read_tokens), 0)::bigint, "
        "COALESCE(SUM(cache_write_tokens), 0)::bigint FROM requests"
    )
    assert row is not None
    flagged: dict[str, int] = {}
    for flags, count in await conn.fetch(
        "SELECT flags, COUNT(*) FROM requests WHERE flags IS NOT NULL GROUP BY flags"
    ):
        for flag in flags.split(","):
            flagged[flag] = flagged.get(flag, 0) + count
    kept = LedgerTotals(
        requests=outcomes,
        cost_nano=row[0],
        input_tokens=row[1],
        output_tokens=row[2],
        cache_read_tokens=row[3],
        cache_write_tokens=row[4],
        refusals=await refusals_by_reason(conn, "", []),
        flagged=flagged,
    )
    folded, reasons = await pg_daily.sums(conn, "", [])  # days pruned from the ledger
    return add_totals(kept, await pg_daily.outcomes(conn), folded, reasons)


async def reservations_held(conn: q.Conn) -> int:
    """Reservations held now, by every process of every node."""
    return int(await conn.fetchval("SELECT COUNT(*) FROM reservations"))
