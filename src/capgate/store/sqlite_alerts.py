"""Alert claims, deliveries and the alerts' configuration on SQLite (`AlertStore`,
mixed into `SQLiteStore`). Every write is one transaction of the process's writer."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from capgate.errors import Conflict
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
from capgate.store.rows import dumps
from capgate.store.sqlite_writer import SQLitePart


class AlertStoreSQLite(SQLitePart):
    """Mixed into SQLiteStore."""

    async def claim_alert(self, claim: AlertClaim, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO alert_claims (key, claimed_at, expires_at) VALUES (?, ?, ?)",
                (claim.key, now, claim.expires_at),
            ).rowcount
            if inserted != 1:
                return False
            conn.executemany(
                "INSERT INTO alert_deliveries (claim, webhook, body, created_at, next_at, "
                "locked_by, locked_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        # Read first: a write transaction every few seconds per process would take the
        # write lock from requests (and drop the writer's counter cache) for nothing.
        due = await self._read(
            lambda conn: conn.execute(
                "SELECT 1 FROM alert_deliveries WHERE status = 'pending' AND next_at <= ? "
                "AND (locked_by = ? OR locked_until <= ?) LIMIT 1",
                (now, owner, now),
            ).fetchone()
        )
        if due is None:
            return []

        def op(conn: sqlite3.Connection) -> list[AlertDelivery]:
            rows = conn.execute(
                f"UPDATE alert_deliveries SET locked_by = ?, locked_until = ? "  # noqa: S608
                f"WHERE id IN (SELECT id FROM alert_deliveries WHERE status = 'pending' "
                f"AND next_at <= ? AND (locked_by = ? OR locked_until <= ?) "
                f"ORDER BY id LIMIT ?) RETURNING {DELIVERY_COLUMNS}",
                (owner, lease_until, now, owner, now, limit),
            ).fetchall()
            return sorted((delivery_from_row(r) for r in rows), key=lambda d: d.id)

        return await self._write(op)

    async def record_attempt(self, attempt: DeliveryAttempt) -> None:
        delivered = attempt.at if attempt.status == "delivered" else None
        await self._write(
            lambda conn: conn.execute(
                "UPDATE alert_deliveries SET status = ?, attempts = ?, next_at = ?, "
                "last_status = ?, last_error = ?, delivered_at = ?, locked_by = NULL, "
                "locked_until = 0 WHERE id = ?",
                (
                    attempt.status, attempt.attempts, attempt.next_at, attempt.last_status,
                    attempt.last_error, delivered, attempt.id,
                ),
            )
        )  # fmt: skip

    async def alert_deliveries(
        self, limit: int = 100, status: str | None = None
    ) -> list[AlertDelivery]:
        def op(conn: sqlite3.Connection) -> list[AlertDelivery]:
            where, args = ("WHERE status = ?", (status,)) if status else ("", ())
            rows = conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM alert_deliveries {where} "  # noqa: S608 - constants
                "ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [delivery_from_row(r) for r in rows]

        await self.flush()
        return await self._read(op)

    async def prune_alerts(self, now: float, keep_s: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM alert_claims WHERE expires_at < ?", (now,))
            conn.execute(
                "DELETE FROM alert_deliveries WHERE status <> 'pending' AND created_at < ?",
                (now - keep_s,),
            )

        await self._write(op)

    async def get_alert_config(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (ALERTS_ROW,)).fetchone()
            return {} if row is None else dict(orjson.loads(row[0]))

        return await self._read(op)

    async def put_alert_config(
        self,
        config: dict[str, Any],
        expected: dict[str, Any],
        change: AlertChange,
        actor: str = "admin",
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (ALERTS_ROW,)).fetchone()
            if ({} if row is None else orjson.loads(row[0])) != expected:
                raise Conflict(CHANGED)
            conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                (ALERTS_ROW, orjson.dumps(config).decode()),
            )
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before, after) "
                "VALUES (?,?,?,?,?,?)",
                (
                    self._clock(), actor, change.action, change.target, dumps(change.before),
                    dumps(change.after),
                ),
            )  # fmt: skip

        await self._write(op)
