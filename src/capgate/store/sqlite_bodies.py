"""Logged bodies on SQLite (`BodyStore`, mixed into `SQLiteStore`): one write of the
process's writer each; retention deletes in bounded batches so that no transaction
holds the write lock for long."""

from __future__ import annotations

import sqlite3

from capgate.store.bodies import BodyRecord, body_from_row
from capgate.store.sqlite_writer import SQLitePart


class BodiesSQLite(SQLitePart):
    """Mixed into SQLiteStore."""

    async def write_body(self, body: BodyRecord) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO request_bodies "
                "(request_id, created_at, request, answer, request_bytes, answer_bytes, truncated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                body.values(),
            )
        )

    async def read_body(self, request_id: str) -> BodyRecord | None:
        def op(conn: sqlite3.Connection) -> BodyRecord | None:
            row = conn.execute(
                "SELECT request_id, created_at, request, answer, request_bytes, answer_bytes, "
                "truncated "
                "FROM request_bodies WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            return None if row is None else body_from_row(row)

        return await self._read(op)

    async def delete_bodies(self, before: float, limit: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM request_bodies WHERE rowid IN (SELECT rowid FROM request_bodies "
                "WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                (before, limit),
            ).rowcount

        return await self._write(op)
