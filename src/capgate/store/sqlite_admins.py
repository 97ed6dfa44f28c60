"""Named admins and their API tokens on SQLite (`AdminStore`, mixed into `SQLiteStore`).
Every change is one transaction of the process's writer, with its audit entry."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store.admin_accounts import (
    ADMIN_COLUMNS,
    GRANT_COLUMNS,
    Admin,
    AdminToken,
    TokenMatch,
    admin_json,
    token_json,
)
from capgate.store.rows import dumps
from capgate.store.sqlite_writer import SQLitePart


def _admin(row: Any) -> Admin:
    name, role, teams, status, password_hash, created, updated = row
    return Admin(name, role, tuple(orjson.loads(teams)), status, password_hash, created, updated)


def _token(row: Any) -> AdminToken:
    return AdminToken(*row)


class AdminsSQLite(SQLitePart):
    """Mixed into SQLiteStore."""

    def _admin_audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        name: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (created_at, actor, action, target, before, after) VALUES (?,?,?,?,?,?)",
            (self._clock(), actor, action, f"admin:{name}", dumps(before), dumps(after)),
        )

    @staticmethod
    def _admin_row(conn: sqlite3.Connection, name: str) -> Admin | None:
        row = conn.execute(f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = ?", (name,)).fetchone()  # noqa: S608 - constant columns
        return None if row is None else _admin(row)

    def _admin_of(self, conn: sqlite3.Connection, name: str) -> Admin:
        found = self._admin_row(conn, name)
        if found is None:
            raise NotFound(f'no admin named "{name}"')
        return found

    async def create_admin(
        self,
        name: str,
        role: str,
        teams: tuple[str, ...],
        password_hash: str | None,
        actor: str = "admin",
    ) -> Admin:
        def op(conn: sqlite3.Connection) -> Admin:
            if self._admin_row(conn, name) is not None:
                raise Conflict(f'an admin named "{name}" already exists')
            now = self._clock()
            conn.execute(
                f"INSERT INTO admins ({ADMIN_COLUMNS}) VALUES (?, ?, ?, 'active', ?, ?, ?)",  # noqa: S608 - constant columns
                (name, role, orjson.dumps(list(teams)).decode(), password_hash, now, now),
            )
            made = self._admin_of(conn, name)
            self._admin_audit(conn, actor, "admin-create", name, None, admin_json(made))
            return made

        return await self._write(op)

    async def get_admin(self, name: str) -> Admin | None:
        return await self._read(lambda conn: self._admin_row(conn, name))

    async def list_admins(self) -> list[Admin]:
        return await self._read(
            lambda conn: [
                _admin(row)
                for row in conn.execute(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name")  # noqa: S608 - constant columns
            ]
        )

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
        def op(conn: sqlite3.Connection) -> Admin:
            before = self._admin_of(conn, name)
            conn.execute(
                "UPDATE admins SET role = ?, teams = ?, status = ?, password_hash = ?, "
                "updated_at = ? WHERE name = ?",
                (
                    role or before.role,
                    orjson.dumps(list(before.teams if teams is None else teams)).decode(),
                    status or before.status,
                    password_hash or before.password_hash,
                    self._clock(),
                    name,
                ),
            )
            after = self._admin_of(conn, name)
            if password_hash is not None or after.status != "active":
                conn.execute("DELETE FROM sessions WHERE actor = ?", (name,))
            only_password = password_hash is not None and (role, teams, status) == (None,) * 3
            action = "admin-password" if only_password else "admin-update"
            self._admin_audit(conn, actor, action, name, admin_json(before), admin_json(after))
            return after

        return await self._write(op)

    async def delete_admin(self, name: str, actor: str = "admin") -> None:
        def op(conn: sqlite3.Connection) -> None:
            before = self._admin_of(conn, name)
            conn.execute("DELETE FROM admin_tokens WHERE admin = ?", (name,))
            conn.execute("DELETE FROM sessions WHERE actor = ?", (name,))
            conn.execute("DELETE FROM admins WHERE name = ?", (name,))
            self._admin_audit(conn, actor, "admin-delete", name, admin_json(before), None)

        await self._write(op)

    # -- tokens ------------------------------------------------------------------------

    @staticmethod
    def _admin_token(conn: sqlite3.Connection, admin: str, token_id: str) -> AdminToken:
        row = conn.execute(
            f"SELECT {GRANT_COLUMNS} FROM admin_tokens WHERE admin = ? AND id = ?",  # noqa: S608 - constant columns
            (admin, token_id),
        ).fetchone()
        if row is None:
            raise NotFound(f'admin "{admin}" has no token "{token_id}"')
        return _token(row)

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
        def op(conn: sqlite3.Connection) -> AdminToken:
            self._admin_of(conn, admin)
            conn.execute(
                "INSERT INTO admin_tokens (id, admin, label, prefix, token_hash, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, admin, label, prefix, token_hash, self._clock(), expires_at),
            )
            made = self._admin_token(conn, admin, token_id)
            self._admin_audit(conn, actor, "admin-token", admin, None, token_json(made))
            return made

        return await self._write(op)

    async def list_admin_tokens(self, admin: str) -> list[AdminToken]:
        return await self._read(
            lambda conn: [
                _token(row)
                for row in conn.execute(
                    f"SELECT {GRANT_COLUMNS} FROM admin_tokens WHERE admin = ? "  # noqa: S608 - constant columns
                    "ORDER BY created_at DESC, id",
                    (admin,),
                )
            ]
        )

    async def find_admin_token(self, token_hash: bytes) -> TokenMatch | None:
        def op(conn: sqlite3.Connection) -> TokenMatch | None:
            row = conn.execute(
                f"SELECT {GRANT_COLUMNS}, token_hash = ? FROM admin_tokens "  # noqa: S608 - constant columns
                "WHERE token_hash = ? OR old_hash = ?",
                (token_hash, token_hash, token_hash),
            ).fetchone()
            return None if row is None else TokenMatch(_token(row[:-1]), not row[-1])

        return await self._read(op)

    async def revoke_admin_token(
        self, admin: str, token_id: str, actor: str = "admin"
    ) -> AdminToken:
        def op(conn: sqlite3.Connection) -> AdminToken:
            before = self._admin_token(conn, admin, token_id)
            conn.execute(
                "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (self._clock(), token_id),
            )
            after = self._admin_token(conn, admin, token_id)
            self._admin_audit(
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
        def op(conn: sqlite3.Connection) -> AdminToken:
            before = self._admin_token(conn, admin, token_id)
            if before.revoked_at is not None:
                raise InvalidRequest(f'token "{token_id}" is revoked; make a new one')
            now = self._clock()
            conn.execute(
                "UPDATE admin_tokens SET old_hash = token_hash, old_until = ?, token_hash = ?, "
                "prefix = ?, rotated_at = ? WHERE id = ?",
                (now + grace_s, token_hash, prefix, now, token_id),
            )
            after = self._admin_token(conn, admin, token_id)
            self._admin_audit(
                conn, actor, "admin-token-rotate", admin, token_json(before), token_json(after)
            )
            return after

        return await self._write(op)
