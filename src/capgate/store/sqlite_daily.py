"""Ledger pruning's SQL on SQLite (store/ledger_daily.py): the folded days' sums for the
reads that sum the ledger, and one fold batch (entries deleted and summed in one write
transaction, so a batch is folded exactly once whichever process runs it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from capgate.store import sqlite_queries as q
from capgate.store.base import RequestQuery
from capgate.store.ledger_daily import DAILY_COLUMNS, fold, merge_usage
from capgate.store.records import LedgerEntry, SeriesRow, UsageRow
from capgate.store.rows import entry_from_row
from capgate.store.sqlite_writer import SQLitePart

_SUMS = (
    "COALESCE(SUM(requests), 0), "
    "COALESCE(SUM(CASE WHEN outcome = 'refused' THEN requests ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN outcome IN ('error', 'lease_expired') THEN requests ELSE 0 END), 0), "
    "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
    "COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), "
    "COALESCE(SUM(cost_nano), 0), COALESCE(SUM(cache_hits), 0), COALESCE(SUM(saved_nano), 0)"
)


def usage_by(
    conn: sqlite3.Connection, group_by: str, since: float | None, until: float | None
) -> list[UsageRow]:
    """`GET /admin/usage`: the kept entries' usage plus the folded days'."""
    return merge_usage(
        q.usage_by(conn, group_by, since, until), usage(conn, group_by, since, until)
    )


def usage(
    conn: sqlite3.Connection, group_by: str, since: float | None, until: float | None
) -> list[UsageRow]:
    column = q.GROUPS[group_by]
    where, params = q.where_clause(RequestQuery(since=since, until=until), ("since", "until"))
    rows = conn.execute(
        f"SELECT {column}, {_SUMS} FROM ledger_daily{where} GROUP BY 1",  # noqa: S608 - fixed clauses
        params,
    )
    return [UsageRow(*row) for row in rows]


def sums(
    conn: sqlite3.Connection, where: str, params: list[Any]
) -> tuple[UsageRow, dict[str, int]]:
    """The folded days' totals and refusals by reason, under `where` (requests' filters)."""
    row = conn.execute(f"SELECT NULL, {_SUMS} FROM ledger_daily{where}", params).fetchone()  # noqa: S608
    refused = (where + " AND " if where else " WHERE ") + "outcome = 'refused'"
    reasons = dict(
        conn.execute(
            f"SELECT reason, SUM(requests) FROM ledger_daily{refused} GROUP BY reason",  # noqa: S608
            params,
        ).fetchall()
    )
    return UsageRow(*row), reasons


def key_names(conn: sqlite3.Connection, where: str, params: list[Any]) -> set[str]:
    """Distinct key names of the kept entries and the folded days under `where`."""
    names: set[str] = set()
    for table in ("requests", "ledger_daily"):
        rows = conn.execute(f"SELECT DISTINCT key_name FROM {table}{where}", params)  # noqa: S608 - fixed names
        names.update(name for (name,) in rows if name is not None)
    return names


def series(
    conn: sqlite3.Connection, where: str, params: list[Any], group_by: str | None, grain: int
) -> list[SeriesRow]:
    column = q.GROUPS[group_by] if group_by else "NULL"
    rows = conn.execute(
        f"SELECT CAST(created_at / ? AS INTEGER) * ? AS b, {column} AS grp, SUM(requests), "  # noqa: S608 - column from GROUPS
        "SUM(cost_nano), SUM(input_tokens + output_tokens + cache_read_tokens + "
        "cache_write_tokens), SUM(CASE WHEN outcome = 'refused' THEN requests ELSE 0 END), "
        "SUM(CASE WHEN outcome IN ('error', 'lease_expired') THEN requests ELSE 0 END) "
        f"FROM ledger_daily{where} GROUP BY b, grp",
        (grain, grain, *params),
    )
    return [SeriesRow(*row) for row in rows]


def outcomes(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT outcome, SUM(requests) FROM ledger_daily GROUP BY outcome"))


class DailySQLite(SQLitePart):
    """Mixed into SQLiteStore (`LedgerPruning`)."""

    async def old_entries(self, before: float, limit: int) -> list[LedgerEntry]:
        def op(conn: sqlite3.Connection) -> list[LedgerEntry]:
            rows = conn.execute(
                "SELECT * FROM requests WHERE created_at < ? ORDER BY id LIMIT ?", (before, limit)
            )
            return [entry_from_row(row) for row in rows]

        return await self._read(op)

    async def fold_entries(self, ids: Sequence[int], before: float) -> int:
        return len(await self._write(lambda conn: fold_batch(conn, ids, before)))


def fold_batch(conn: sqlite3.Connection, ids: Sequence[int], before: float) -> list[LedgerEntry]:
    """Delete the entries of `ids` still there and older than `before`, add their sums to
    ledger_daily; the entries deleted. Run inside one write transaction."""
    rows = conn.execute(
        f"DELETE FROM requests WHERE id IN ({', '.join('?' * len(ids))}) AND created_at < ? "  # noqa: S608 - placeholders
        "RETURNING *",
        (*ids, before),
    ).fetchall()
    entries = sorted((entry_from_row(row) for row in rows), key=lambda e: e.id)
    marks = ", ".join("?" * len(DAILY_COLUMNS))
    conn.executemany(
        f"INSERT INTO ledger_daily ({', '.join(DAILY_COLUMNS)}) VALUES ({marks})",  # noqa: S608 - fixed names
        fold(entries),
    )
    return entries
