"""What the dashboard needs from the SQLite store, mixed into `SQLiteStore`: login sessions
and the login throttle (shared by every process on the file), the runtime settings row,
and the read-only queries behind the overview, the charts, /metrics and the live feed."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from capgate.store import sqlite_insights as insights
from capgate.store.base import (
    LOGIN_MAX_FAILURES,
    LOGIN_WINDOW_S,
    SETTINGS_ROW,
    RequestQuery,
    SettingsChanged,
)
from capgate.store.records import (
    EventBatch,
    KeyActivity,
    MetricsSnapshot,
    SeriesRow,
    Session,
    Summary,
)
from capgate.store.rows import dumps
from capgate.store.sqlite_writer import SQLitePart


class DashboardStore(SQLitePart):
    """Mixed into SQLiteStore."""

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

        return await self._write(op)

    async def get_session(self, token_hash: bytes) -> Session | None:
        """The live session with this token hash, or None (unknown or expired)."""

        def op(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT actor, key_tag, created_at, expires_at FROM sessions "
                "WHERE token_hash = ? AND expires_at > ?",
                (token_hash, self._clock()),
            ).fetchone()
            return None if row is None else Session(*row)

        return await self._read(op)

    async def delete_session(self, token_hash: bytes) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        )

    # -- login throttle (see base.SessionStore) ----------------------------------------

    async def login_blocked(self, client: str, now: float) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(failed_at) FROM login_failures "
                "WHERE client = ? AND failed_at > ? AND failed_at <= ?",
                (client, now - LOGIN_WINDOW_S, now),
            ).fetchone()
            if count < LOGIN_MAX_FAILURES:
                return None
            return max(float(oldest) + LOGIN_WINDOW_S - now, 0.001)

        return await self._read(op)

    async def login_failed(self, client: str, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM login_failures WHERE failed_at <= ?", (now - LOGIN_WINDOW_S,))
            conn.execute(
                "INSERT INTO login_failures (client, failed_at) VALUES (?, ?)", (client, now)
            )

        await self._write(op)

    async def login_succeeded(self, client: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM login_failures WHERE client = ?", (client,))
        )

    # -- runtime settings --------------------------------------------------------------

    async def get_settings(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (SETTINGS_ROW,)).fetchone()
            return {} if row is None else dict(orjson.loads(row[0]))

        return await self._read(op)

    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Store the overrides, bump the config version and write the audit entry
        (`before` and `after` are the effective settings the admin saw change)."""

        def op(conn: sqlite3.Connection) -> None:
            if expected is not None:  # in the write transaction: no other writer between
                row = conn.execute("SELECT v FROM meta WHERE k = ?", (SETTINGS_ROW,)).fetchone()
                if ({} if row is None else orjson.loads(row[0])) != expected:
                    raise SettingsChanged
            conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                (SETTINGS_ROW, orjson.dumps(settings).decode()),
            )
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before, after) "
                "VALUES (?,?,?,?,?,?)",
                (self._clock(), actor, "settings", "settings", dumps(before), dumps(after)),
            )

        await self._write(op)

    # -- insights ----------------------------------------------------------------------

    async def summary(self, query: RequestQuery) -> Summary:
        await self.flush()  # include every settlement queued before this call
        return await self._read(lambda conn: insights.summary(conn, query))

    async def series_rows(
        self, query: RequestQuery, group_by: str | None, grain: int
    ) -> list[SeriesRow]:
        await self.flush()
        return await self._read(lambda conn: insights.series_rows(conn, query, group_by, grain))

    async def key_activity(self, day_start: float, month_start: float) -> dict[str, KeyActivity]:
        await self.flush()
        return await self._read(lambda conn: insights.key_activity(conn, day_start, month_start))

    async def metrics_snapshot(self, now: float, ledger: bool) -> MetricsSnapshot:
        await self.flush()

        def op(conn: sqlite3.Connection) -> MetricsSnapshot:
            totals = insights.ledger_totals(conn) if ledger else None
            limits = tuple(insights.scope_limits(conn, now))
            return MetricsSnapshot(limits, insights.reservations_held(conn), totals)

        return await self._read(op)

    async def latest_ids(self) -> tuple[int, int]:
        return await self._read(insights.latest_ids)

    async def events_after(self, request_id: int, audit_id: int, limit: int = 500) -> EventBatch:
        return await self._read(
            lambda conn: insights.events_after(conn, request_id, audit_id, limit)
        )
