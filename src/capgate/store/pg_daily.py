"""Ledger pruning's SQL on PostgreSQL (store/ledger_daily.py): the folded days' sums for
the reads that sum the ledger, and one fold batch. A batch's entries are deleted in the
transaction that adds their sums, and only what DELETE ... RETURNING gave back is summed,
so two nodes folding at once never fold an entry twice (FOR UPDATE SKIP LOCKED only
spares one the wait for the other's rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capgate.store import pg_queries as q
from capgate.store.base import RequestQuery
from capgate.store.ledger_daily import DAILY_COLUMNS, fold, merge_usage
from capgate.store.pg_admin import PgHost
from capgate.store.records import LedgerEntry, SeriesRow, UsageRow
from capgate.store.rows import entry_from_row

_SUMS = (
    "COALESCE(SUM(requests), 0)::bigint, "
    "COALESCE(SUM(CASE WHEN outcome = 'refused' THEN requests ELSE 0 END), 0)::bigint, "
    "COALESCE(SUM(CASE WHEN outcome IN ('error', 'lease_expired') THEN requests ELSE 0 END), "
    "0)::bigint, COALESCE(SUM(input_tokens), 0)::bigint, COALESCE(SUM(output_tokens), 0)::bigint, "
    "COALESCE(SUM(cache_read_tokens), 0)::bigint, COALESCE(SUM(cache_write_tokens), 0)::bigint, "
    "COALESCE(SUM(cost_nano), 0)::bigint, COALESCE(SUM(cache_hits), 0)::bigint, "
    "COALESCE(SUM(saved_nano), 0)::bigint"
)


async def usage_by(
    conn: q.Conn, group_by: str, since: float | None, until: float | None
) -> list[UsageRow]:
    """`GET /admin/usage`: the kept entries' usage plus the folded days'."""
    kept = await q.usage_by(conn, group_by, since, until)
    column = q.GROUPS[group_by]
    where, params = q.where_clause(RequestQuery(since=since, until=until), ("since", "until"))
    rows = await conn.fetch(
        f"SELECT {column}, {_SUMS} FROM ledger_daily{where} GROUP BY 1",  # noqa: S608 - fixed clauses
        *params,
    )
    return merge_usage(kept, [UsageRow(*row) for row in rows])


async def sums(conn: q.Conn, where: str, params: list[Any]) -> tuple[UsageRow, dict[str, int]]:
    """The folded days' totals and refusals by reason, under `where` (requests' filters)."""
    row = await conn.fetchrow(f"SELECT NULL::text, {_SUMS} FROM ledger_daily{where}", *params)  # noqa: S608
    assert row is not None
    refused = (where + " AND " if where else " WHERE ") + "outcome = 'refused'"
    reasons = await conn.fetch(
        f"SELECT reason, SUM(requests)::bigint FROM ledger_daily{refused} GROUP BY reason",  # noqa: S608
        *params,
    )
    return UsageRow(*row), {r[0]: r[1] for r in reasons}


async def key_names(conn: q.Conn, where: str, params: list[Any]) -> set[str]:
    """Distinct key names of the kept entries and the folded days under `where`."""
    names: set[str] = set()
    for table in ("requests", "ledger_daily"):
        rows = await conn.fetch(f"SELECT DISTINCT key_name FROM {table}{where}", *params)  # noqa: S608 - fixed names
        names.update(r[0] for r in rows if r[0] is not None)
    return names


async def series(
    conn: q.Conn, query: RequestQuery, filters: tuple[str, ...], group_by: str | None, grain: int
) -> list[SeriesRow]:
    column = q.GROUPS[group_by] if group_by else "NULL::text"
    where, params = q.where_clause(query, filters, first=3)
    rows = await conn.fetch(
        f"SELECT trunc(created_at / $1)::bigint * $2 AS b, {column} AS grp, "  # noqa: S608 - column from GROUPS
        "SUM(requests)::bigint, SUM(cost_nano)::bigint, SUM(input_tokens + output_tokens + "
        "cache_read_tokens + cache_write_tokens)::bigint, "
        "SUM(CASE WHEN outcome = 'refused' THEN requests ELSE 0 END)::bigint, "
        "SUM(CASE WHEN outcome IN ('error', 'lease_expired') THEN requests ELSE 0 END)::bigint "
        f"FROM ledger_daily{where} GROUP BY b, grp",
        float(grain),
        grain,
        *params,
    )
    return [SeriesRow(*row) for row in rows]


async def outcomes(conn: q.Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT outcome, SUM(requests)::bigint FROM ledger_daily GROUP BY 1")
    return {r[0]: r[1] for r in rows}


_INSERT = "INSERT INTO ledger_daily ({}) VALUES ({})".format(  # noqa: S608 - fixed names
    ", ".join('"user"' if c == "user" else c for c in DAILY_COLUMNS),
    ", ".join(f"${i}" for i in range(1, len(DAILY_COLUMNS) + 1)),
)


class PgDaily(PgHost):
    """Mixed into PostgresStore (`LedgerPruning`)."""

    async def old_entries(self, before: float, limit: int) -> list[LedgerEntry]:
        async def op(conn: q.Conn) -> list[LedgerEntry]:
            rows = await conn.fetch(
                "SELECT * FROM requests WHERE created_at < $1 ORDER BY id LIMIT $2",
                float(before),
                limit,
            )
            return [entry_from_row(row) for row in rows]

        return await self._read(op)

    async def fold_entries(self, ids: Sequence[int], before: float) -> int:
        async def op(conn: q.Conn) -> int:
            return len(await fold_batch(conn, ids, before))

        return await self._write(op)


async def fold_batch(conn: q.Conn, ids: Sequence[int], before: float) -> list[LedgerEntry]:
    """Delete the entries of `ids` still there, older than `before` and held by no other
    transaction; add their sums to ledger_daily; the entries deleted."""
    rows = await conn.fetch(
        "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE id = ANY($1::bigint[]) "
        "AND created_at < $2 FOR UPDATE SKIP LOCKED) RETURNING *",
        list(ids),
        float(before),
    )
    entries = sorted((entry_from_row(row) for row in rows), key=lambda e: e.id)
    await conn.executemany(_INSERT, fold(entries))
    return entries
