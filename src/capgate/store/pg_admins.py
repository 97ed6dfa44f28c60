"""Named admins and their API tokens on PostgreSQL (`AdminStore`, mixed into
`PostgresStore`). Every change is one transaction with its audit entry."""

from __future__ import annotations

from typing import Any

import orjson

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store import pg_queries as q
from capgate.store.admin_accounts import (
    ADMIN_COLUMNS,
    GRANT_COLUMNS,
    Admin,
    AdminToken,
    TokenMatch,
    admin_json,
    token_json,
)
from capgate.store.pg_admin import PgHost


def _admin(row: Any) -> Admin:
    return Admin(
        row["name"], row["role"], tuple(orjson.loads(row["teams"])), row["status"],
        row["password_hash"], row["created_at"], row["updated_at"],
    )  # fmt: skip


def _token(row: Any) -> AdminToken:
    return AdminToken(*(row[c.strip()] for c in GRANT_COLUMNS.split(",")))


async def _admin_row(conn: q.Conn, name: str) -> Admin | None:
    row = await conn.fetchrow(f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = $1", name)  # noqa: S608 - constant columns
    return None if row is None else _admin(row)


async def _admin_of(conn: q.Conn, name: str) -> Admin:
    found = await _admin_row(conn, name)
    if found is None:
        raise NotFound(f'no admin named "{name}"')
    return found


async def _admin_token(conn: q.Conn, admin: str, token_id: str) -> AdminToken:
    row = await conn.fetchrow(
        f"SELECT {GRANT_COLUMNS} FROM admin_tokens WHERE admin = $1 AND id = $2",  # noqa: S608
        admin,
        token_id,
    )
    if row is None:
        raise NotFound(f'admin "{admin}" has no token "{token_id}"')
    return _token(row)


class PgAdmins(PgHost):
    """Mixed into PostgresStore."""

    async def _admin_audit(
        self,
        conn: q.Conn,
        actor: str,
        action: str,
        name: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        await q.insert_audit(conn, self._clock(), actor, action, f"admin:{name}", before, after)

    async def create_admin(
        self,
        name: str,
        role: str,
        teams: tuple[str, ...],
        password_hash: str | None,
        actor: str = "admin",
    ) -> Admin:
        async def op(conn: q.Conn) -> Admin:
            now = self._clock()
            inserted = await conn.fetchval(
                f"INSERT INTO admins ({ADMIN_COLUMNS}) VALUES ($1, $2, $3, 'active', $4, $5, $6) "  # noqa: S608 - constant columns
                "ON CONFLICT DO NOTHING RETURNING 1",
                name, role, orjson.dumps(list(teams)).decode(), password_hash, now, now,
            )  # fmt: skip
            if inserted is None:
                raise Conflict(f'an admin named "{name}" already exists')
            made = await _admin_of(conn, name)
            await self._admin_audit(conn, actor, "admin-create", name, None, admin_json(made))
            return made

        return await self._write(op)

    async def get_admin(self, name: str) -> Admin | None:
        return await self._read(lambda conn: _admin_row(conn, name))

    async def list_admins(self) -> list[Admin]:
        async def op(conn: q.Conn) -> list[Admin]:
            rows = await conn.fetch(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name")  # noqa: S608 - constant columns
            return [_admin(row) for row in rows]

        return await self._read(op)

    async def update_admin(
        self,
        name: str,
        *,
        role: str | None = None,
        teams: tuple[str, ...] | None = None,
        status: str | None = None,
        password_hash: str | None = None,
        actor: str = "admin",
    ) -> Admin:
        async def op(conn: q.Conn) -> Admin:
            before = await _admin_of(conn, name)
            await conn.execute(
                "UPDATE admins SET role = $1, teams = $2, status = $3, password_hash = $4, "
                "updated_at = $5 WHERE name = $6",
                role or before.role,
                orjson.dumps(list(before.teams if teams is None else teams)).decode(),
                status or before.status,
                password_hash or before.password_hash,
                self._clock(),
                name,
            )
            after = await _admin_of(conn, name)
            if password_hash is not None or after.status != "active":
                await conn.execute("DELETE FROM sessions WHERE actor = $1", name)
            only_password = password_hash is not None and (role, teams, status) == (None,) * 3
            action = "admin-password" if only_password else "admin-update"
            await self._admin_audit(
                conn, actor, action, name, admin_json(before), admin_json(after)
            )
            return after

        return await self._write(op)

    async def delete_admin(self, name: str, actor: str = "admin") -> None:
        async def op(conn: q.Conn) -> None:
            before = await _admin_of(conn, name)
            await conn.execute("DELETE FROM admin_tokens WHERE admin = $1", name)
            await conn.execute("DELETE FROM sessions WHERE actor = $1", name)
            await conn.execute("DELETE FROM admins WHERE name = $1", name)
            await self._admin_audit(conn, actor, "admin-delete", name, admin_json(before), None)

        await self._write(op)

    # -- tokens ------------------------------------------------------------------------

    async def create_admin_token(
        self,
        admin: str,
        token_id: str,
        token_hash: bytes,
        prefix: str,
        label: str,
        expires_at: float | None,
        actor: str = "admin",
    ) -> AdminToken:
        async def op(conn: q.Conn) -> AdminToken:
            await _admin_of(conn, admin)
            await conn.execute(
                "INSERT INTO admin_tokens (id, admin, label, prefix, token_hash, created_at, "
                "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                token_id, admin, label, prefix, token_hash, self._clock(), expires_at,
            )  # fmt: skip
            made = await _admin_token(conn, admin, token_id)
            await self._admin_audit(conn, actor, "admin-token", admin, None, token_json(made))
            return made

        return await self._write(op)

    async def list_admin_tokens(self, admin: str) -> list[AdminToken]:
        async def op(conn: q.Conn) -> list[AdminToken]:
            rows = await conn.fetch(
                f"SELECT {GRANT_COLUMNS} FROM admin_tokens WHERE admin = $1 "  # noqa: S608 - constant columns
                "ORDER BY created_at DESC, id",
                admin,
            )
            return [_token(row) for row in rows]

        return await self._read(op)

    async def find_admin_token(self, token_hash: bytes) -> TokenMatch | None:
        async def op(conn: q.Conn) -> TokenMatch | None:
            row = await conn.fetchrow(
                f"SELECT {GRANT_COLUMNS}, token_hash = $1 AS current FROM admin_tokens "  # noqa: S608 - constant columns
                "WHERE token_hash = $1 OR old_hash = $1",
                token_hash,
            )
            return None if row is None else TokenMatch(_token(row), not row["current"])

        return await self._read(op)

    async def revoke_admin_token(
        self, admin: str, token_id: str, actor: str = "admin"
    ) -> AdminToken:
        async def op(conn: q.Conn) -> AdminToken:
            before = await _admin_token(conn, admin, token_id)
            await conn.execute(
                "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                self._clock(), token_id,
            )  # fmt: skip
            after = await _admin_token(conn, admin, token_id)
            await self._admin_audit(
                conn, actor, "admin-token-revoke", admin, token_json(before), token_json(after)
            )
            return after

        return await self._write(op)

    async def rotate_admin_token(
        self,
        admin: str,
        token_id: str,
        token_hash: bytes,
        prefix: str,
        grace_s: float,
        actor: str = "admin",
    ) -> AdminToken:
        async def op(conn: q.Conn) -> AdminToken:
            before = await _admin_token(conn, admin, token_id)
            if before.revoked_at is not None:
                raise InvalidRequest(f'token "{token_id}" is revoked; make a new one')
            now = self._clock()
            await conn.execute(
                "UPDATE admin_tokens SET old_hash = token_hash, old_until = $1, token_hash = $2, "
                "prefix = $3, rotated_at = $4 WHERE id = $5",
                now + grace_s, token_hash, prefix, now, token_id,
            )  # fmt: skip
            after = await _admin_token(conn, admin, token_id)
            await self._admin_audit(
                conn, actor, "admin-token-rotate", admin, token_json(before), token_json(after)
            )
            return after

        return await self._write(op)
