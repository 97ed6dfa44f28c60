"""Admin changes to scopes (keys, users, teams, orgs, providers) in the PostgreSQL store.

Every change is one transaction run by `PostgresStore._write(op, config=True)`: it takes
the configuration lock first (so admin changes of every node happen one at a time, each
seeing those committed before it: a reference check cannot race a delete), bumps
`meta.config_version` (its trigger tells every node to reload) and reloads this node's
cache once committed. Each change writes an audit entry with the scope before and after.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

from capgate.core.limits import Scope, ScopeKind, Status
from capgate.core.windows import window_at
from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.rotation import dump_retired, load_retired, retire
from capgate.store import pg_queries as q
from capgate.store.base import ScopeFields, refuse_if_named, refuse_revoked
from capgate.store.records import LimitUsage, scope_json
from capgate.store.rows import scope_from_row

T = TypeVar("T")

_ACTIONS = {Status.ACTIVE: "resume", Status.PAUSED: "pause", Status.REVOKED: "revoke"}
_PLURAL = {ScopeKind.USER: "users", ScopeKind.TEAM: "teams", ScopeKind.ORG: "orgs"}


class PgHost:
    """What PostgresStore gives the admin and dashboard mixins (it overrides these)."""

    _clock: Callable[[], float]

    async def _write(
        self, op: Callable[[q.Conn], Awaitable[T]], config: bool = False, plans: bool = True
    ) -> T:
        """Run `op` in one transaction on a pooled connection; a database error becomes
        StoreUnavailable (rolled back). `config`: a configuration change (see above);
        `plans=False`: one that alters no reservation's plan (PostgresStore._write)."""
        raise NotImplementedError

    async def _read(self, op: Callable[[q.Conn], Awaitable[T]]) -> T:
        """Run `op` in a read-only transaction that sees one snapshot."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait until every settlement this process submitted is committed."""
        raise NotImplementedError


async def check_references(conn: q.Conn, fields: ScopeFields) -> None:
    """A key's team and user and a team's org must exist: a typo (`--team reserach`)
    would otherwise bind the key to no budget at all, silently."""
    for kind, name in (
        (ScopeKind.TEAM, fields.team),
        (ScopeKind.USER, fields.user),
        (ScopeKind.ORG, fields.org),
    ):
        if name is not None and await q.get_scope(conn, kind.value, name) is None:
            what = kind.value
            raise InvalidRequest(
                f'{what}: no {what} named "{name}"; create it first '
                f"(capgate {_PLURAL[kind]} create {name}, or POST /admin/{_PLURAL[kind]}), "
                f"or check the spelling"
            )


async def _existing(conn: q.Conn, kind: ScopeKind, name: str) -> Scope:
    scope = await q.get_scope(conn, kind.value, name)
    if scope is None:
        raise NotFound(f'no {kind.value} named "{name}"')
    return scope


class PgScopeAdmin(PgHost):
    """Mixed into PostgresStore."""

    async def _audited(
        self,
        conn: q.Conn,
        kind: ScopeKind,
        name: str,
        action: str,
        before: Scope | None,
        actor: str,
    ) -> Scope:
        """After a change: the scope as it is now, and the audit entry."""
        scope = await q.get_scope(conn, kind.value, name)
        after = scope_json(scope) if scope is not None else None
        shown = scope_json(before) if before is not None else None
        await q.insert_audit(
            conn, self._clock(), actor, action, f"{kind.value}:{name}", shown, after
        )
        if scope is None:
            raise NotFound(f'no {kind.value} named "{name}"')
        return scope

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
        async def op(conn: q.Conn) -> Scope:
            now = self._clock()
            if await q.get_scope(conn, kind.value, name) is not None:
                raise Conflict(f'a {kind.value} named "{name}" already exists')
            await check_references(conn, fields)
            new_id = scope_id or secrets.token_hex(6)
            inserted = await conn.fetchval(
                "INSERT INTO scopes (kind, id, name, secret_hash, prefix, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1",
                kind.value, new_id, name, secret_hash, prefix, now, now,
            )  # fmt: skip
            if inserted is None:
                raise Conflict(f'a {kind.value} with the id "{new_id}" already exists')
            await q.update_scope_row(conn, kind.value, new_id, fields, now)
            return await self._audited(conn, kind, name, "create", None, actor)

        # A new key is in no other key's plan; a new user, team, org or provider scope
        # may be (a key naming it counts against it from now on).
        return await self._write(op, config=True, plans=kind is not ScopeKind.KEY)

    async def update_scope(
        self, kind: ScopeKind, name: str, fields: ScopeFields, actor: str = "admin"
    ) -> Scope:
        async def op(conn: q.Conn) -> Scope:
            before = await _existing(conn, kind, name)
            await check_references(conn, fields)
            await q.update_scope_row(conn, kind.value, before.id, fields, self._clock())
            return await self._audited(conn, kind, name, "update", before, actor)

        return await self._write(op, config=True)

    async def set_status(
        self, kind: ScopeKind, name: str, status: Status, actor: str = "admin"
    ) -> Scope:
        async def op(conn: q.Conn) -> Scope:
            before = await _existing(conn, kind, name)
            if before.status is Status.REVOKED and status is not Status.REVOKED:
                raise InvalidRequest(f'{kind.value} "{name}" is revoked; revocation is final')
            await conn.execute(
                "UPDATE scopes SET status = $1, updated_at = $2 WHERE kind = $3 AND id = $4",
                status.value, self._clock(), kind.value, before.id,
            )  # fmt: skip
            return await self._audited(conn, kind, name, _ACTIONS[status], before, actor)

        return await self._write(op, config=True)

    async def rotate_key(
        self, name: str, secret_hash: bytes, grace_s: float, actor: str = "admin"
    ) -> Scope:
        async def op(conn: q.Conn) -> Scope:
            before = await _existing(conn, ScopeKind.KEY, name)
            refuse_revoked(before)
            now = self._clock()
            row = await conn.fetchrow(
                "SELECT secret_hash, retired_secrets FROM scopes "
                "WHERE kind = 'key' AND id = $1 FOR UPDATE",
                before.id,
            )
            if row is None:  # deleted since: the configuration lock makes this unlikely
                raise NotFound(f'no key named "{name}"')
            retired = retire(row["secret_hash"], load_retired(row["retired_secrets"]), now, grace_s)
            await conn.execute(
                "UPDATE scopes SET secret_hash = $1, retired_secrets = $2, rotated_at = $3, "
                "updated_at = $3 WHERE kind = 'key' AND id = $4",
                secret_hash, dump_retired(retired), now, before.id,
            )  # fmt: skip
            return await self._audited(conn, ScopeKind.KEY, name, "rotate", before, actor)

        return await self._write(op, config=True, plans=False)  # a secret is in no plan

    async def reset_usage(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        async def op(conn: q.Conn) -> None:
            scope = await _existing(conn, kind, name)
            # Settled usage goes; what requests in flight hold stays reserved. Rows are
            # locked in the hot path's order (counter, window_start): no deadlock.
            await conn.execute(
                "UPDATE counters c SET settled = 0 FROM (SELECT counter, window_start "
                "FROM counters WHERE starts_with(counter, $1) "
                "ORDER BY counter, window_start FOR UPDATE) s "
                "WHERE c.counter = s.counter AND c.window_start = s.window_start",
                f"{kind.value}:{scope.id}:",
            )
            await self._audited(conn, kind, name, "reset-usage", scope, actor)

        await self._write(op, config=True)

    async def delete_scope(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        async def op(conn: q.Conn) -> None:
            scope = await _existing(conn, kind, name)
            await _refuse_if_named(conn, kind, name)
            await conn.execute(
                "DELETE FROM scopes WHERE kind = $1 AND id = $2", kind.value, scope.id
            )
            target = f"{kind.value}:{name}"
            await q.insert_audit(
                conn, self._clock(), actor, "delete", target, scope_json(scope), None
            )

        await self._write(op, config=True)

    async def list_scopes(self, kind: ScopeKind) -> list[Scope]:
        async def op(conn: q.Conn) -> list[Scope]:
            rows = await conn.fetch(
                q.SELECT_SCOPES + ' WHERE kind = $1 ORDER BY name COLLATE "C"', kind.value
            )
            return [scope_from_row(r) for r in rows]

        return await self._read(op)

    async def get_scope(self, kind: ScopeKind, name: str) -> Scope:
        return await self._read(lambda conn: _existing(conn, kind, name))

    async def members(self, kind: ScopeKind, name: str) -> dict[str, list[str]]:
        """Who names a scope: a team's keys and their users, a user's keys, an org's
        teams (empty for keys and providers)."""

        async def op(conn: q.Conn) -> dict[str, list[str]]:
            await _existing(conn, kind, name)
            return {
                group: [row[0] for row in await conn.fetch(sql, name)]
                for group, sql in _MEMBERS.get(kind, {}).items()
            }

        return await self._read(op)

    async def counters(self, scope: Scope, now: float) -> list[LimitUsage]:
        """Each limit of `scope` with its current window's used, reserved and reset."""
        await self.flush()  # include every settlement queued before this call
        windows = [window_at(limit.window, now, scope.timezone) for limit in scope.limits]
        if not windows:
            return []

        async def op(conn: q.Conn) -> list[LimitUsage]:
            row = await conn.fetchrow(
                "SELECT settled, reserved FROM capgate_states($1, $2, $3)",
                [scope.counter_id(limit) for limit in scope.limits],
                [window.start for window in windows],
                [window.read_from for window in windows],
            )
            assert row is not None
            return [
                LimitUsage(limit, settled, reserved, window.resets_at)
                for limit, window, settled, reserved in zip(
                    scope.limits, windows, row["settled"], row["reserved"], strict=True
                )
            ]

        return await self._read(op)


async def _refuse_if_named(conn: q.Conn, kind: ScopeKind, name: str) -> None:
    """A team, user or org that keys (or teams) still name cannot be deleted: those keys
    would keep a dangling name, bound to no budget, and a new scope of the same name would
    silently take them over."""
    group = "teams" if kind is ScopeKind.ORG else "keys"
    sql = _MEMBERS.get(kind, {}).get(group)
    if sql is None:
        return
    refuse_if_named(kind, name, group, [row[0] for row in await conn.fetch(sql, name)])


_MEMBERS = {
    ScopeKind.TEAM: {
        "keys": "SELECT name FROM scopes WHERE kind = 'key' AND team = $1 "
        'ORDER BY name COLLATE "C"',
        "users": 'SELECT DISTINCT "user" COLLATE "C" FROM scopes WHERE kind = \'key\' '
        'AND team = $1 AND "user" IS NOT NULL ORDER BY 1',
    },
    ScopeKind.USER: {
        "keys": "SELECT name FROM scopes WHERE kind = 'key' AND \"user\" = $1 "
        'ORDER BY name COLLATE "C"'
    },
    ScopeKind.ORG: {
        "teams": "SELECT name FROM scopes WHERE kind = 'team' AND org = $1 "
        'ORDER BY name COLLATE "C"'
    },
}
