"""The PostgreSQL store's reads and small writes besides scopes, mixed into PostgresStore:
the ledger and the audit log read back, the dashboard's insights, /metrics, the live
feed, login sessions and the login throttle (shared by every node), the runtime settings
and `meta`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from capgate.store import pg_daily, pg_feed, pg_insights
from capgate.store import pg_queries as q
from capgate.store.base import (
    LOGIN_MAX_FAILURES,
    LOGIN_WINDOW_S,
    SETTINGS_ROW,
    RequestQuery,
    SettingsChanged,
)
from capgate.store.pg_admin import PgHost
from capgate.store.records import (
    AuditEntry,
    EventBatch,
    KeyActivity,
    LedgerEntry,
    MetricsSnapshot,
    SeriesRow,
    Session,
    Summary,
    UsageRow,
)

FEED_START_WAIT_S = 3.0  # latest_ids waits this long at most for the feed's final mark


class PgDashboard(PgHost):
    """Mixed into PostgresStore."""

    _feed_horizon: pg_feed.FeedHorizon | None = None

    # -- the ledger and the audit log --------------------------------------------------

    async def query_requests(self, query: RequestQuery) -> list[LedgerEntry]:
        await self.flush()  # see every entry this process submitted before this call
        return await self._read(lambda conn: q.select_requests(conn, query))

    async def usage(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[UsageRow]:
        if group_by not in q.GROUPS:
            raise KeyError(group_by)  # before any I/O, as the port says
        await self.flush()
        return await self._read(lambda conn: pg_daily.usage_by(conn, group_by, since, until))

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        return await self._read(lambda conn: q.select_audit(conn, limit))

    async def summary(self, query: RequestQuery) -> Summary:
        await self.flush()
        return await self._read(lambda conn: pg_insights.summary(conn, query))

    async def series_rows(
        self, query: RequestQuery, group_by: str | None, grain: int
    ) -> list[SeriesRow]:
        await self.flush()
        return await self._read(lambda conn: pg_insights.series_rows(conn, query, group_by, grain))

    async def key_activity(self, day_start: float, month_start: float) -> dict[str, KeyActivity]:
        await self.flush()
        return await self._read(lambda conn: pg_insights.key_activity(conn, day_start, month_start))

    async def metrics_snapshot(self, now: float, ledger: bool) -> MetricsSnapshot:
        await self.flush()

        async def op(conn: q.Conn) -> MetricsSnapshot:
            limits = await pg_insights.scope_limits(conn, now)
            held = await pg_insights.reservations_held(conn)
            totals = await pg_insights.ledger_totals(conn) if ledger else None
            return MetricsSnapshot(tuple(limits), held, totals)

        return await self._read(op)

    # -- the live feed -----------------------------------------------------------------

    @property
    def _horizon(self) -> pg_feed.FeedHorizon:
        if self._feed_horizon is None:
            self._feed_horizon = pg_feed.FeedHorizon(time.monotonic)
        return self._feed_horizon

    async def latest_ids(self) -> tuple[int, int]:
        """A cursor from which the feed misses nothing (see pg_feed). The first call of a
        process waits for the final mark (about half a second)."""
        horizon = self._horizon
        deadline = asyncio.get_running_loop().time() + FEED_START_WAIT_S
        while True:
            found = await self._read(lambda conn: pg_feed.latest_ids(conn, horizon))
            if found is not None:
                return found
            if asyncio.get_running_loop().time() >= deadline:
                return horizon.highest  # a transaction runs for long: start at the top
            await asyncio.sleep(pg_feed.GRACE_S / 5)

    async def events_after(self, request_id: int, audit_id: int, limit: int = 500) -> EventBatch:
        horizon = self._horizon
        return await self._read(
            lambda conn: pg_feed.events_after(conn, horizon, request_id, audit_id, limit)
        )

    # -- sessions and the login throttle -----------------------------------------------

    async def create_session(
        self, token_hash: bytes, actor: str, key_tag: str, ttl_seconds: float
    ) -> Session:
        async def op(conn: q.Conn) -> Session:
            now = self._clock()
            await conn.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
            session = Session(actor, key_tag, now, now + ttl_seconds)
            await conn.execute(
                "INSERT INTO sessions (token_hash, actor, key_tag, created_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                token_hash, actor, key_tag, now, session.expires_at,
            )  # fmt: skip
            return session

        return await self._write(op)

    async def get_session(self, token_hash: bytes) -> Session | None:
        """The live session with this token hash, or None (unknown or expired)."""

        async def op(conn: q.Conn) -> Session | None:
            row = await conn.fetchrow(
                "SELECT actor, key_tag, created_at, expires_at FROM sessions "
                "WHERE token_hash = $1 AND expires_at > $2",
                token_hash,
                self._clock(),
            )
            return None if row is None else Session(*row)

        return await self._read(op)

    async def delete_session(self, token_hash: bytes) -> None:
        async def op(conn: q.Conn) -> None:
            await conn.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash)

        await self._write(op)

    async def login_blocked(self, client: str, now: float) -> float | None:
        async def op(conn: q.Conn) -> float | None:
            row = await conn.fetchrow(
                "SELECT COUNT(*), MIN(failed_at) FROM login_failures "
                "WHERE client = $1 AND failed_at > $2 AND failed_at <= $3",
                client,
                now - LOGIN_WINDOW_S,
                float(now),
            )
            if row is None or row[0] < LOGIN_MAX_FAILURES:
                return None
            return max(float(row[1]) + LOGIN_WINDOW_S - now, 0.001)

        return await self._read(op)

    async def login_failed(self, client: str, now: float) -> None:
        async def op(conn: q.Conn) -> None:
            await conn.execute(
                "INSERT INTO login_failures (client, failed_at) VALUES ($1, $2)", client, float(now)
            )
            await conn.execute(
                "DELETE FROM login_failures WHERE failed_at <= $1", now - LOGIN_WINDOW_S
            )

        await self._write(op)

    async def login_succeeded(self, client: str) -> None:
        async def op(conn: q.Conn) -> None:
            await conn.execute("DELETE FROM login_failures WHERE client = $1", client)

        await self._write(op)

    # -- runtime settings and meta -----------------------------------------------------

    async def get_settings(self) -> dict[str, Any]:
        value = await self.get_meta(SETTINGS_ROW)
        return {} if value is None else dict(orjson.loads(value))

    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Store the overrides, bump the config version (every node reloads) and write the
        audit entry, in one transaction (under the configuration lock: with `expected`,
        no other change comes between its check and its write)."""

        async def op(conn: q.Conn) -> None:
            if expected is not None:
                value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", SETTINGS_ROW)
                if ({} if value is None else orjson.loads(value)) != expected:
                    raise SettingsChanged
            await _upsert_meta(conn, SETTINGS_ROW, orjson.dumps(settings).decode())
            await q.insert_audit(conn, self._clock(), actor, "settings", "settings", before, after)

        await self._write(op, config=True)

    async def get_meta(self, name: str) -> str | None:
        async def op(conn: q.Conn) -> str | None:
            value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", name)
            return None if value is None else str(value)

        return await self._read(op)

    async def set_meta(self, name: str, value: str) -> None:
        await self._write(lambda conn: _upsert_meta(conn, name, value))


async def _upsert_meta(conn: q.Conn, name: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        name,
        value,
    )
