"""Logged bodies on PostgreSQL (`BodyStore`, mixed into `PostgresStore`): one short
transaction each; retention deletes in bounded batches."""

from __future__ import annotations

from capgate.store import pg_queries as q
from capgate.store.bodies import BodyRecord, body_from_row
from capgate.store.pg_admin import PgHost


class PgBodies(PgHost):
    """Mixed into PostgresStore."""

    async def write_body(self, body: BodyRecord) -> None:
        async def op(conn: q.Conn) -> None:
            await conn.execute(
                "INSERT INTO request_bodies "
                "(request_id, created_at, request, answer, request_bytes, answer_bytes, truncated) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT DO NOTHING",
                *body.values(),
            )

        await self._write(op)

    async def read_body(self, request_id: str) -> BodyRecord | None:
        async def op(conn: q.Conn) -> BodyRecord | None:
            row = await conn.fetchrow(
                "SELECT request_id, created_at, request, answer, request_bytes, answer_bytes, "
                "truncated "
                "FROM request_bodies WHERE request_id = $1",
                request_id,
            )
            return None if row is None else body_from_row(row)

        return await self._read(op)

    async def delete_bodies(self, before: float, limit: int) -> int:
        async def op(conn: q.Conn) -> int:
            status = await conn.execute(
                "DELETE FROM request_bodies WHERE request_id IN (SELECT request_id FROM "
                "request_bodies WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                float(before), limit,
            )  # fmt: skip
            return int(status.split()[-1])

        return await self._write(op)
