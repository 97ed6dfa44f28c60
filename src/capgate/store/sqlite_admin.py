"""Admin changes to scopes (keys, users, teams, orgs, providers) in the SQLite store.

Every change is one write op: it bumps `meta.config_version` (so every process reloads
its cache before its next reservation), reloads this process's cache at once, and writes
an audit entry with the scope before and after.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from capgate.core.limits import Scope, ScopeKind, Status
from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.rotation import dump_retired, load_retired, retire
from capgate.store import sqlite_insights as insights
from capgate.store import sqlite_queries as q
from capgate.store.base import ScopeFields, refuse_if_named, refuse_revoked
from capgate.store.records import LimitUsage, scope_json
from capgate.store.rows import dumps, scope_from_row
from capgate.store.sqlite_writer import SQLitePart

_ACTIONS = {Status.ACTIVE: "resume", Status.PAUSED: "pause", Status.REVOKED: "revoke"}
_PLURAL = {ScopeKind.USER: "users", ScopeKind.TEAM: "teams", ScopeKind.ORG: "orgs"}


def check_references(conn: sqlite3.Connection, fields: ScopeFields) -> None:
    """A key's team and user and a team's org must exist: a typo (`--team reserach`)
    would otherwise bind the key to no budget at all, silently."""
    for kind, name in (
        (ScopeKind.TEAM, fields.team),
        (ScopeKind.USER, fields.user),
        (ScopeKind.ORG, fields.org),
    ):
        if name is not None and q.get_scope(conn, kind.value, name) is None:
            what = kind.value
            raise InvalidRequest(
                f'{what}: no {what} named "{name}"; create it first '
                f"(capgate {_PLURAL[kind]} create {name}, or POST /admin/{_PLURAL[kind]}), "
                f"or check the spelling"
            )


class ScopeAdmin(SQLitePart):
    """Mixed into SQLiteStore."""

    async def create_scope(
        self,
        kind: ScopeKind,
        name: str,
        fields: ScopeFields,
        *,
        scope_id: str | None = None,
        secret_hash: bytes | None = None,
        prefix: str | None = None,
        actor: str = "admin",
    ) -> Scope:
        def op(conn: sqlite3.Connection) -> Scope:
            now = self._clock()
            if q.get_scope(conn, kind.value, name) is not None:
                raise Conflict(f'a {kind.value} named "{name}" already exists')
            check_references(conn, fields)
            conn.execute(
                "INSERT INTO scopes (kind, id, name, secret_hash, prefix, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind.value, scope_id or secrets.token_hex(6), name, secret_hash, prefix, now, now),
            )
            created = self._existing(conn, kind, name)
            q.update_scope_row(conn, kind.value, created.id, fields, now)
            return self._changed(conn, kind, name, "create", None, actor)

        return await self._write(op)

    def _changed(
        self,
        conn: sqlite3.Connection,
        kind: ScopeKind,
        name: str,
        action: str,
        before: dict[str, Any] | None,
        actor: str,
    ) -> Scope:
        """After an admin change: bump the version, reload, write the audit entry."""
        conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
        scope = q.get_scope(conn, kind.value, name)
        after = scope_json(scope) if scope is not None else None
        conn.execute(
            "INSERT INTO audit (created_at, actor, action, target, before, after) VALUES (?,?,?,?,?,?)",
            (self._clock(), actor, action, f"{kind.value}:{name}", dumps(before), dumps(after)),
        )
        self._load(conn)
        if scope is None:
            raise NotFound(f'no {kind.value} named "{name}"')
        return scope

    def _existing(self, conn: sqlite3.Connection, kind: ScopeKind, name: str) -> Scope:
        scope = q.get_scope(conn, kind.value, name)
        if scope is None:
            raise NotFound(f'no {kind.value} named "{name}"')
        return scope

    async def update_scope(
        self, kind: ScopeKind, name: str, fields: ScopeFields, actor: str = "admin"
    ) -> Scope:
        def op(conn: sqlite3.Connection) -> Scope:
            before = self._existing(conn, kind, name)
            check_references(conn, fields)
            q.update_scope_row(conn, kind.value, before.id, fields, self._clock())
            return self._changed(conn, kind, name, "update", scope_json(before), actor)

        return await self._write(op)

    async def set_status(
        self, kind: ScopeKind, name: str, status: Status, actor: str = "admin"
    ) -> Scope:
        def op(conn: sqlite3.Connection) -> Scope:
            before = self._existing(conn, kind, name)
            if before.status is Status.REVOKED and status is not Status.REVOKED:
                raise InvalidRequest(f'{kind.value} "{name}" is revoked; revocation is final')
            conn.execute(
                "UPDATE scopes SET status=?, updated_at=? WHERE kind=? AND id=?",
                (status.value, self._clock(), kind.value, before.id),
            )
            return self._changed(conn, kind, name, _ACTIONS[status], scope_json(before), actor)

        return await self._write(op)

    async def rotate_key(
        self, name: str, secret_hash: bytes, grace_s: float, actor: str = "admin"
    ) -> Scope:
        def op(conn: sqlite3.Connection) -> Scope:
            before = self._existing(conn, ScopeKind.KEY, name)
            refuse_revoked(before)
            now = self._clock()
            row = conn.execute(
                "SELECT secret_hash, retired_secrets FROM scopes WHERE kind='key' AND id=?",
                (before.id,),
            ).fetchone()
            retired = retire(row[0], load_retired(row[1]), now, grace_s)
            conn.execute(
                "UPDATE scopes SET secret_hash=?, retired_secrets=?, rotated_at=?, updated_at=? "
                "WHERE kind='key' AND id=?",
                (secret_hash, dump_retired(retired), now, now, before.id),
            )
            return self._changed(conn, ScopeKind.KEY, name, "rotate", scope_json(before), actor)

        return await self._write(op)

    async def reset_usage(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        def op(conn: sqlite3.Connection) -> None:
            scope = self._existing(conn, kind, name)
            # Settled usage goes; what requests in flight hold stays reserved.
            conn.execute(
                "UPDATE counters SET settled=0 WHERE counter >= ? AND counter < ?",
                (f"{kind.value}:{scope.id}:", f"{kind.value}:{scope.id};"),
            )
            self._changed(conn, kind, name, "reset-usage", scope_json(scope), actor)

        await self._write(op)

    async def delete_scope(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        def op(conn: sqlite3.Connection) -> None:
            scope = self._existing(conn, kind, name)
            _refuse_if_named(conn, kind, name)
            conn.execute("DELETE FROM scopes WHERE kind=? AND id=?", (kind.value, scope.id))
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before) VALUES (?,?,?,?,?)",
                (
                    self._clock(),
                    actor,
                    "delete",
                    f"{kind.value}:{name}",
                    dumps(scope_json(scope)),
                ),
            )
            self._load(conn)

        await self._write(op)

    async def list_scopes(self, kind: ScopeKind) -> list[Scope]:
        def op(conn: sqlite3.Connection) -> list[Scope]:
            rows = conn.execute(q.SELECT_SCOPES + " WHERE kind=? ORDER BY name", (kind.value,))
            return [scope_from_row(r) for r in rows]

        return await self._read(op)

    async def get_scope(self, kind: ScopeKind, name: str) -> Scope:
        return await self._read(lambda conn: self._existing(conn, kind, name))

    async def counters(self, scope: Scope, now: float) -> list[LimitUsage]:
        await self.flush()  # include every settlement queued before this call
        rows = await self._read(lambda conn: insights.limit_usage(conn, [scope], now))
        return [usage for _, usage in rows]

    async def members(self, kind: ScopeKind, name: str) -> dict[str, list[str]]:
        """Who names a scope: a team's keys and their users, a user's keys, an org's
        teams (empty for keys and providers)."""

        def op(conn: sqlite3.Connection) -> dict[str, list[str]]:
            self._existing(conn, kind, name)
            return {
                group: [row[0] for row in conn.execute(sql, (name,))]
                for group, sql in _MEMBERS.get(kind, {}).items()
            }

        return await self._read(op)


def _refuse_if_named(conn: sqlite3.Connection, kind: ScopeKind, name: str) -> None:
    """A team, user or org that keys (or teams) still name cannot be deleted: those keys
    would keep a dangling name, bound to no budget, and a new scope of the same name would
    silently take them over."""
    group = "teams" if kind is ScopeKind.ORG else "keys"
    sql = _MEMBERS.get(kind, {}).get(group)
    if sql is None:
        return
    refuse_if_named(kind, name, group, [row[0] for row in conn.execute(sql, (name,))])


_MEMBERS = {
    ScopeKind.TEAM: {
        "keys": "SELECT name FROM scopes WHERE kind='key' AND team=? ORDER BY name",
        "users": "SELECT DISTINCT user FROM scopes WHERE kind='key' AND team=? "
        "AND user IS NOT NULL ORDER BY user",
    },
    ScopeKind.USER: {"keys": "SELECT name FROM scopes WHERE kind='key' AND user=? ORDER BY name"},
    ScopeKind.ORG: {"teams": "SELECT name FROM scopes WHERE kind='team' AND org=? ORDER BY name"},
}
