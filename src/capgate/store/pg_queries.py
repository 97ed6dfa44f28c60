"""SQL and row mapping for the PostgreSQL store's admin side: scopes, the ledger and the
audit log read back. Each function runs on a connection its caller holds (inside the
caller's transaction when it writes).

What keeps the answers equal to SQLite's for the same rows:
- text is ordered by code point (`COLLATE "C"`, SQLite's BINARY), whatever the database's
  locale, and NULL first in ascending order (SQLite's rule);
- sums are cast back to BIGINT (PostgreSQL sums BIGINT into NUMERIC);
- the `day` of an entry is computed from its created_at as SQLite's `'unixepoch'` does
  (rounded to the millisecond first; see `DAY`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from capgate.core.limits import Scope
from capgate.store.base import RequestQuery, ScopeFields
from capgate.store.records import AuditEntry, LedgerEntry, UsageRow
from capgate.store.rows import audit_from_row, dumps, entry_from_row, scope_from_row, scope_sets

# A connection of the pool, or one opened alone (tests, `db copy`).
Conn = asyncpg.Connection | PoolConnectionProxy

SELECT_SCOPES = (
    'SELECT kind, id, name, status, limits, models, team, "user", timezone, expires_at, '
    "metadata, secret_hash, prefix, created_at, updated_at, clamp, org, schedules, "
    "unbounded_hold_nano, fail_open, log_bodies, rotated_at, retired_secrets, rotate_every, "
    "cache FROM scopes"
)

# SQLite's `strftime('%Y-%m-%d', created_at, 'unixepoch')`: SQLite turns the seconds into
# a Julian day number in milliseconds, `(int)(s * 1000.0 + 210866760000000.0 + 0.5)`, in
# double precision; the same arithmetic here gives the same day also within half a
# millisecond of midnight.
DAY = (
    "to_char(DATE '1970-01-01' + ((floor(created_at * 1000.0::float8 + 210866760000000.0::float8 "
    "+ 0.5::float8)::bigint - 210866760000000) / 86400000)::int, 'YYYY-MM-DD')"
)

GROUPS = {
    "key": "key_name",
    "user": '"user"',
    "team": "team",
    "model": "model",
    "upstream_model": "upstream_model",
    "provider": "provider",
    "outcome": "outcome",
    "day": DAY,
}

# Counts as SQLite's `SUM(outcome = 'refused')` gives them (integers, 0 when none match).
# What the response cache saved (docs/cache.md): hits, and what they would have cost.
CACHE_SUMS = (
    "COALESCE(SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END), 0)::bigint AS cache_hits, "
    "COALESCE(SUM(saved_nano), 0)::bigint AS saved_nano"
)
REFUSED = "COALESCE(SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END), 0)::bigint"
ERRORS = (
    "COALESCE(SUM(CASE WHEN outcome IN ('error', 'lease_expired') THEN 1 ELSE 0 END), 0)::bigint"
)


async def get_scope(conn: Conn, kind: str, name: str, lock: bool = False) -> Scope | None:
    """The scope, or None. `lock`: hold its row until the transaction ends (an admin
    change reads, checks and writes it with no other change in between)."""
    sql = SELECT_SCOPES + " WHERE kind = $1 AND name = $2" + (" FOR UPDATE" if lock else "")
    row = await conn.fetchrow(sql, kind, name)
    return None if row is None else scope_from_row(row)


async def update_scope_row(
    conn: Conn, kind: str, scope_id: str, fields: ScopeFields, now: float
) -> None:
    sets = scope_sets(fields, now)
    # Column names are ours, not input; values go as parameters.
    assignments = ", ".join(f'"{column}" = ${n}' for n, column in enumerate(sets, start=1))
    n = len(sets)
    await conn.execute(
        f"UPDATE scopes SET {assignments} WHERE kind = ${n + 1} AND id = ${n + 2}",  # noqa: S608
        *sets.values(),
        kind,
        scope_id,
    )


async def insert_audit(
    conn: Conn,
    now: float,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await conn.execute(
        "INSERT INTO audit (created_at, actor, action, target, before, after) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        now,
        actor,
        action,
        target,
        dumps(before),
        dumps(after),
    )


_FILTERS = {
    "key": "key_name = ",
    "team": "team = ",
    "teams": "team = ANY",
    "user": '"user" = ',
    "model": "model = ",
    "provider": "provider = ",
    "status": "status = ",
    "outcome": "outcome = ",
    "request_id": "request_id = ",
    "since": "created_at >= ",
    "until": "created_at < ",
    "cursor": "id < ",
}


def where_clause(
    query: RequestQuery, names: Iterable[str], first: int = 1
) -> tuple[str, list[Any]]:
    """` WHERE ...` for the filters of `query` among `names` that are set, with their
    parameters numbered from `$first`."""
    clauses: list[str] = []
    params: list[Any] = []
    for name in names:
        value = getattr(query, name)
        if value is not None:
            if name == "teams":
                value, number = sorted(value), f"(${first + len(clauses)}::text[])"
            else:
                number = f"${first + len(clauses)}"
            params.append(float(value) if name in ("since", "until") else value)
            clauses.append(f"{_FILTERS[name]}{number}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


async def select_requests(conn: Conn, query: RequestQuery) -> list[LedgerEntry]:
    where, params = where_clause(query, _FILTERS)
    rows = await conn.fetch(
        f"SELECT * FROM requests{where} ORDER BY id DESC LIMIT ${len(params) + 1}",  # noqa: S608
        *params,
        query.limit,
    )
    return [entry_from_row(row) for row in rows]


async def usage_by(
    conn: Conn, group_by: str, since: float | None, until: float | None
) -> list[UsageRow]:
    column = GROUPS[group_by]
    where, params = where_clause(RequestQuery(since=since, until=until), ("since", "until"))
    rows = await conn.fetch(
        f"SELECT {column} AS grp, COUNT(*) AS requests, {REFUSED} AS refused, "  # noqa: S608 - column from GROUPS
        f"{ERRORS} AS errors, SUM(input_tokens)::bigint AS input_tokens, "
        "SUM(output_tokens)::bigint AS output_tokens, "
        "SUM(cache_read_tokens)::bigint AS cache_read_tokens, "
        "SUM(cache_write_tokens)::bigint AS cache_write_tokens, "
        f"SUM(cost_nano)::bigint AS cost_nano, {CACHE_SUMS} FROM requests{where} GROUP BY grp "
        f'ORDER BY cost_nano DESC, ({column}) COLLATE "C" NULLS FIRST',
        *params,
    )
    return [
        UsageRow(
            group=row["grp"],
            requests=row["requests"],
            refused=row["refused"],
            errors=row["errors"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_read_tokens=row["cache_read_tokens"],
            cache_write_tokens=row["cache_write_tokens"],
            cost_nano=row["cost_nano"],
            cache_hits=row["cache_hits"],
            saved_nano=row["saved_nano"],
        )
        for row in rows
    ]


async def select_audit(conn: Conn, limit: int) -> list[AuditEntry]:
    rows = await conn.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT $1", limit)
    return [audit_from_row(row) for row in rows]
