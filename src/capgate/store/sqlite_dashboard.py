"""What the dashboard needs from the SQLite store, mixed into `SQLiteStore`: login sessions
(shared by every process on the file), the runtime settings row, and the read-only queries
behind the overview, the charts and the live feed."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from capgate.core.limits import Limit, Scope
from capgate.store import sqlite_insights as insights
from capgate.store import sqlite_queries as q
from capgate.store.base import SETTINGS_ROW, RequestQuery
from capgate.store.records import Session


class DashboardStore:
    """Mixed into SQLiteStore, which provides these."""

    _clock: Callable[[], float]
    _write: Callable[..., Any]
    _read: Callable[..., Any]
    flush: Callable[[], Awaitable[None]]

    # -- sessions ----------------------------------------------------------------------

    async def create_session(
        self, token_hash: bytes, actor: str, key_tag: str, ttl_seconds: float
    ) -> Session:
        def op(conn: sqlite3.Connection) -> Session:
            now = self._clock()
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            session = Session(actor, key_tag, now, now + ttl_seconds)
            conn.execute(
                "INSERT INTO sessions (token_hash, actor, key_tag, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_hash, actor, key_tag, now, session.expires_at),
            )
            return session

        return await self._write(op)  # type: ignore[no-any-return]

    async def get_session(self, token_hash: bytes) -> Session | None:
        """The live session with this token hash, or None (unknown or expired)."""

        def op(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT actor, key_tag, created_at, expires_at FROM sessions "
                "WHERE token_hash = ? AND expires_at > ?",
                (token_hash, self._clock()),
            ).fetchone()
            return None if row is None else Session(*row)

        return await self._read(op)  # type: ignore[no-any-return]

    async def delete_session(self, token_hash: bytes) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        )

    # -- runtime settings --------------------------------------------------------------

    async def get_settings(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (SETTINGS_ROW,)).fetchone()
            return {} if row is None else dict(orjson.loads(row[0]))

        return await self._read(op)  # type: ignore[no-any-return]

    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
    ) -> None:
        """Store the overrides, bump the config version and write the audit entry
        (`before` and `after` are the effective settings the admin saw change)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                (SETTINGS_ROW, orjson.dumps(settings).decode()),
            )
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before, after) "
                "VALUES (?,?,?,?,?,?)",
                (self._clock(), actor, "settings", "settings", q.dumps(before), q.dumps(after)),
            )

        await self._write(op)

    # -- insights ----------------------------------------------------------------------

    async def summary(self, query: RequestQuery) -> dict[str, Any]:
        await self.flush()  # include every settlement queued before this call
        return await self._read(lambda conn: insights.summary(conn, query))  # type: ignore[no-any-return]

    async def series_rows(
        self, query: RequestQuery, group_by: str | None, grain: int
    ) -> list[tuple[int, str | None, int, int, int, int, int]]:
        await self.flush()
        return await self._read(  # type: ignore[no-any-return]
            lambda conn: insights.series_rows(conn, query, group_by, grain)
        )

    async def key_activity(
        self, day_start: float, month_start: float
    ) -> dict[str, tuple[int, int, float | None]]:
        """Per key id: spend today and this month (nano-dollars) and its last request."""
        await self.flush()
        return await self._read(  # type: ignore[no-any-return]
            lambda conn: insights.key_activity(conn, day_start, month_start)
        )

    async def metrics_rows(
        self, now: float, ledger: bool
    ) -> tuple[list[tuple[Scope, Limit, int, int]], int, dict[str, Any] | None]:
        """For GET /metrics: every scope's limits as used now, the reservations held, and
        (when asked) the ledger's totals."""
        await self.flush()

        def op(conn: sqlite3.Connection) -> Any:
            totals = insights.ledger_totals(conn) if ledger else None
            return insights.scope_limits(conn, now), insights.reservations_held(conn), totals

        return await self._read(op)  # type: ignore[no-any-return]

    async def latest_ids(self) -> tuple[int, int]:
        return await self._read(insights.latest_ids)  # type: ignore[no-any-return]

    async def events_after(
        self, request_id: int, audit_id: int, limit: int = 500
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await self._read(  # type: ignore[no-any-return]
            lambda conn: insights.events_after(conn, request_id, audit_id, limit)
        )
