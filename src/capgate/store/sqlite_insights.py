"""Read-only SQL for the dashboard: totals and latency percentiles of a period, raw rows
for charts, and the ledger and audit rows after a cursor for the live feed."""

from __future__ import annotations

import sqlite3
from typing import Any

from capgate.core.limits import Limit, Scope, nano_to_decimal_str
from capgate.core.windows import is_rate_window, parse_window, window_at
from capgate.store import sqlite_queries as q
from capgate.store.base import RequestQuery

_FILTERS = ("key", "team", "user", "model", "provider", "since", "until")


def summary(conn: sqlite3.Connection, query: RequestQuery) -> dict[str, Any]:
    """Totals of the entries `query` selects, the error rate of admitted requests and the
    nearest-rank p50 / p95 latency of successful ones."""
    where, params = q.where_clause(query, _FILTERS)
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(outcome = 'refused'), 0), "  # noqa: S608 - fixed clauses
        "COALESCE(SUM(outcome IN ('error', 'lease_expired')), 0), "
        "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
        "COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), "
        f"COALESCE(SUM(cost_nano), 0), COUNT(DISTINCT key_name) FROM requests{where}",
        params,
    ).fetchone()
    requests, refused, errors = row[0], row[1], row[2]
    admitted = requests - refused
    ok_where = (where + " AND " if where else " WHERE ") + "outcome = 'ok'"
    return {
        "requests": requests,
        "refused": refused,
        "errors": errors,
        "error_rate": round(errors / admitted, 6) if admitted else 0.0,
        "input_tokens": row[3],
        "output_tokens": row[4],
        "cache_read_tokens": row[5],
        "cache_write_tokens": row[6],
        "cost_usd": nano_to_decimal_str(row[7]),
        "keys": row[8],
        "refusals_by_reason": refusals_by_reason(conn, where, params),
        "latency_ms": {
            "p50": _percentile(conn, ok_where, params, 50),
            "p95": _percentile(conn, ok_where, params, 95),
        },
    }


def refusals_by_reason(conn: sqlite3.Connection, where: str, params: list[Any]) -> dict[str, int]:
    """Refusals counted by why, most first: `budget` and `rate_limit` (a limit reached:
    a short window or a concurrency cap is a rate limit, any other a budget), or the
    refusal's code (`paused`, `revoked`, `expired`, `model_not_allowed`,
    `outside_schedule`, ...)."""
    refused_where = (where + " AND " if where else " WHERE ") + "outcome = 'refused'"
    rows = conn.execute(
        "SELECT json_extract(refusal, '$.code'), json_extract(refusal, '$.limit.metric'), "  # noqa: S608
        f"json_extract(refusal, '$.limit.window'), COUNT(*) FROM requests{refused_where} "
        "GROUP BY 1, 2, 3",
        params,
    )
    counts: dict[str, int] = {}
    for code, metric, window, count in rows:
        reason = _reason(code, metric, window)
        counts[reason] = counts.get(reason, 0) + count
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _reason(code: str | None, metric: str | None, window: str | None) -> str:
    if code != "limit_exceeded":
        return code or "other"
    if metric == "concurrent":
        return "rate_limit"
    try:
        return "rate_limit" if window and is_rate_window(parse_window(window)) else "budget"
    except ValueError:
        return "budget"


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
) -> list[tuple[int, str | None, int, int, int, int, int]]:
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
    return [tuple(row) for row in rows]


def key_activity(
    conn: sqlite3.Connection, day_start: float, month_start: float
) -> dict[str, tuple[int, int, float | None]]:
    """Per key id: spend since `day_start` and since `month_start` (nano-dollars), and when
    its last request was made. One grouped pass over the month's entries (the created_at
    index), and one index lookup per key (requests_key) for its last request."""
    out: dict[str, tuple[int, int, float | None]] = {}
    for key_id, last in conn.execute(
        "SELECT id, (SELECT created_at FROM requests WHERE key_name = scopes.name "
        "ORDER BY id DESC LIMIT 1) FROM scopes WHERE kind = 'key'"
    ):
        out[key_id] = (0, 0, last)
    rows = conn.execute(
        "SELECT key_id, SUM(CASE WHEN created_at >= ? THEN cost_nano ELSE 0 END), "
        "SUM(cost_nano) FROM requests WHERE created_at >= ? GROUP BY key_id",
        (day_start, month_start),
    )
    for key_id, today, month in rows:
        last = out.get(key_id, (0, 0, None))[2]
        out[key_id] = (int(today), int(month), last)
    return out


def latest_ids(conn: sqlite3.Connection) -> tuple[int, int]:
    requests = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]
    audit = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
    return int(requests), int(audit)


def events_after(
    conn: sqlite3.Connection, request_id: int, audit_id: int, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ledger entries and audit entries with ids above the cursor, oldest first. Ids grow
    in commit order (every write holds SQLite's one write lock), so nothing committed
    later can appear below a cursor already read."""
    entries = [
        q.entry_json(row)
        for row in conn.execute(
            "SELECT * FROM requests WHERE id > ? ORDER BY id LIMIT ?", (request_id, limit)
        )
    ]
    rows = conn.execute("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?", (audit_id, limit))
    return entries, [q.audit_json(row) for row in rows]


# -- GET /metrics: what every process reads the same ------------------------------------


def scope_limits(conn: sqlite3.Connection, now: float) -> list[tuple[Scope, Limit, int, int]]:
    """Every scope with limits, each limit with its current window's settled and reserved
    amounts (nano-dollars for cost): one read of all counter instances."""
    scopes = [q.scope_from_row(r) for r in conn.execute(q.SELECT_SCOPES + " ORDER BY kind, name")]
    wanted: list[tuple[Scope, Limit, str, int, int | None]] = []
    for scope in scopes:
        for limit in scope.limits:
            window = window_at(limit.window, now, scope.timezone)
            wanted.append((scope, limit, scope.counter_id(limit), window.start, window.read_from))
    states = q.read_counters(conn, [(c, start, frm) for _, _, c, start, frm in wanted])
    out = []
    for scope, limit, counter, start, _ in wanted:
        state = states.get((counter, start))
        out.append((scope, limit, state.settled if state else 0, state.reserved if state else 0))
    return out


def ledger_totals(conn: sqlite3.Connection) -> dict[str, Any]:
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
    return {
        "requests": outcomes,
        "cost_nano": int(row[0]),
        "tokens": {"input": row[1], "output": row[2], "cache_read": row[3], "cache_write": row[4]},
        "refusals": refusals_by_reason(conn, "", []),
        "flagged": flagged,
    }


def reservations_held(conn: sqlite3.Connection) -> int:
    """Reservations held now, by every process."""
    return int(conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0])
