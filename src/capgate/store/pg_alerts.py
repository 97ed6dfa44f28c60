"""Alert claims, deliveries and the alerts' configuration on PostgreSQL (`AlertStore`,
mixed into `PostgresStore`). A claim is one INSERT ... ON CONFLICT DO NOTHING: of
several nodes racing, the one whose row went in fires. Deliveries are taken with
FOR UPDATE SKIP LOCKED, so two nodes never lease the same one."""

from __future__ import annotations

from typing import Any

import orjson

from capgate.errors import Conflict
from capgate.store import pg_queries as q
from capgate.store.alerting import (
    ALERTS_ROW,
    CHANGED,
    DELIVERY_COLUMNS,
    AlertChange,
    AlertClaim,
    AlertDelivery,
    DeliveryAttempt,
    delivery_from_row,
)
from capgate.store.pg_admin import PgHost


class PgAlerts(PgHost):
    """Mixed into PostgresStore."""

    async def claim_alert(self, claim: AlertClaim, now: float) -> bool:
        async def op(conn: q.Conn) -> bool:
            won = await conn.fetchval(
                "INSERT INTO alert_claims (key, claimed_at, expires_at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING true",
                claim.key, now, claim.expires_at,
            )  # fmt: skip
            if not won:
                return False
            await conn.executemany(
                "INSERT INTO alert_deliveries (claim, webhook, body, created_at, next_at, "
                "locked_by, locked_until) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (claim.key, d.webhook, d.body, now, now, claim.owner, claim.lease_until)
                    for d in claim.deliveries
                ],
            )
            return True

        return await self._write(op)

    async def take_deliveries(
        self, owner: str, now: float, lease_until: float, limit: int = 20
    ) -> list[AlertDelivery]:
        async def due(conn: q.Conn) -> bool:  # a read first: most ticks find nothing
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM alert_deliveries WHERE status = 'pending' "
                    "AND next_at <= $1 AND (locked_by = $2 OR locked_until <= $1))",
                    now, owner,
                )
            )  # fmt: skip

        if not await self._read(due):
            return []

        async def op(conn: q.Conn) -> list[AlertDelivery]:
            rows = await conn.fetch(
                f"UPDATE alert_deliveries SET locked_by = $1, locked_until = $2 "  # noqa: S608
                f"WHERE id IN (SELECT id FROM alert_deliveries WHERE status = 'pending' "
                f"AND next_at <= $3 AND (locked_by = $1 OR locked_until <= $3) "
                f"ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY_COLUMNS}",
                owner, lease_until, now, limit,
            )  # fmt: skip
            return sorted((delivery_from_row(r) for r in rows), key=lambda d: d.id)

        return await self._write(op)

    async def record_attempt(self, attempt: DeliveryAttempt) -> None:
        delivered = attempt.at if attempt.status == "delivered" else None

        async def op(conn: q.Conn) -> None:
            await conn.execute(
                "UPDATE alert_deliveries SET status = $1, attempts = $2, next_at = $3, "
                "last_status = $4, last_error = $5, delivered_at = $6, locked_by = NULL, "
                "locked_until = 0 WHERE id = $7",
                attempt.status, attempt.attempts, attempt.next_at, attempt.last_status,
                attempt.last_error, delivered, attempt.id,
            )  # fmt: skip

        await self._write(op)

    async def alert_deliveries(
        self, limit: int = 100, status: str | None = None
    ) -> list[AlertDelivery]:
        async def op(conn: q.Conn) -> list[AlertDelivery]:
            rows = await conn.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries "  # noqa: S608 - constants
                "WHERE $1::text IS NULL OR status = $1 ORDER BY id DESC LIMIT $2",
                status, limit,
            )  # fmt: skip
            return [delivery_from_row(r) for r in rows]

        return await self._read(op)

    async def prune_alerts(self, now: float, keep_s: float) -> None:
        async def op(conn: q.Conn) -> None:
            await conn.execute("DELETE FROM alert_claims WHERE expires_at < $1", now)
            await conn.execute(
                "DELETE FROM alert_deliveries WHERE status <> 'pending' AND created_at < $1",
                now - keep_s,
            )

        await self._write(op)

    async def get_alert_config(self) -> dict[str, Any]:
        async def op(conn: q.Conn) -> dict[str, Any]:
            value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", ALERTS_ROW)
            return {} if value is None else dict(orjson.loads(value))

        return await self._read(op)

    async def put_alert_config(
        self,
        config: dict[str, Any],
        expected: dict[str, Any],
        change: AlertChange,
        actor: str = "admin",
    ) -> None:
        async def op(conn: q.Conn) -> None:
            # Under the configuration lock (`config=True`): one change at a time.
            value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", ALERTS_ROW)
            if ({} if value is None else orjson.loads(value)) != expected:
                raise Conflict(CHANGED)
            await conn.execute(
                "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                ALERTS_ROW, orjson.dumps(config).decode(),
            )  # fmt: skip
            await q.insert_audit(
                conn, self._clock(), actor, change.action, change.target, change.before,
                change.after,
            )  # fmt: skip

        await self._write(op, config=True)
