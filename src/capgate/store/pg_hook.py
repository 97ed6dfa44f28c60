"""Hook mode in the PostgreSQL store (a mixin of PostgresStore): install codes, enrolled
machines, prompt leases settled by id, the calls machines report (`HookStore` in
base.py). The same rules as `sqlite_hook`; each method is one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from capgate.core.engine import plan_settle
from capgate.core.limits import Scope, ScopeKind, Status
from capgate.errors import NotFound
from capgate.store import pg_queries as q
from capgate.store import pg_settlement as settlement
from capgate.store.base import HOOK_LEASE_PREFIX, Enrolment, Outcome, Reservation, ScopeFields
from capgate.store.hook_rows import (
    code_json,
    hook_code_from_row,
    hook_machine_from_row,
    machine_base,
    machine_metadata,
    machine_name,
    one_code,
    switched_metadata,
)
from capgate.store.pg_admin import PgHost
from capgate.store.records import HookCode, HookMachine, scope_json
from capgate.store.sqlite_hook import TOUCH_EVERY_S
from capgate.store.sqlite_queries import load_charges
from capgate.store.sqlite_settlement import lease_amounts, stored_reservation


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


class PgHook(PgHost):
    """Mixed into PostgresStore."""

    async def _audit(
        self, conn: q.Conn, actor: str, action: str, target: str, after: object
    ) -> None:
        await conn.execute(
            "INSERT INTO audit (created_at, actor, action, target, before, after) "
            "VALUES ($1, $2, $3, $4, NULL, $5)",
            self._clock(), actor, action, target, _json(after),
        )  # fmt: skip

    async def create_hook_code(
        self,
        code_hash: bytes,
        user: str,
        expires_at: float,
        agents: tuple[str, ...],
        actor: str = "admin",
    ) -> HookCode:
        async def op(conn: q.Conn) -> HookCode:
            if await q.get_scope(conn, ScopeKind.USER.value, user) is None:
                raise NotFound(f'no user named "{user}"')
            now = self._clock()
            await conn.execute(
                'INSERT INTO hook_codes (code_hash, "user", created_at, expires_at, actor, agents) '
                "VALUES ($1, $2, $3, $4, $5, $6)",
                code_hash, user, now, expires_at, actor, _json(list(agents)),
            )  # fmt: skip
            code = HookCode(code_hash.hex()[:8], user, now, expires_at, None, None, actor, agents)
            await self._audit(conn, actor, "hook-code", f"user:{user}", code_json(code))
            return code

        return await self._write(op)

    async def list_hook_codes(self) -> list[HookCode]:
        async def op(conn: q.Conn) -> list[HookCode]:
            rows = await conn.fetch("SELECT * FROM hook_codes ORDER BY created_at DESC, code_hash")
            return [hook_code_from_row(row) for row in rows]

        return await self._read(op)

    async def delete_hook_code(self, code_id: str, actor: str = "admin") -> None:
        async def op(conn: q.Conn) -> None:
            rows = await conn.fetch("SELECT * FROM hook_codes FOR UPDATE")
            found = [row for row in rows if bytes(row["code_hash"]).hex().startswith(code_id)]
            one_code(code_id, len(found))
            await conn.execute("DELETE FROM hook_codes WHERE code_hash=$1", found[0]["code_hash"])
            code = hook_code_from_row(found[0])
            await self._audit(conn, actor, "hook-code-delete", f"user:{code.user}", code_json(code))

        await self._write(op)

    async def enrol_hook_machine(
        self, code_hash: bytes, enrolment: Enrolment
    ) -> tuple[Scope, HookCode] | None:
        async def op(conn: q.Conn) -> tuple[Scope, HookCode] | None:
            now = self._clock()
            row = await conn.fetchrow(
                "UPDATE hook_codes SET used_at=$1, machine=$2 "
                "WHERE code_hash=$3 AND used_at IS NULL AND expires_at > $1 RETURNING *",
                now, enrolment.key_id, code_hash,
            )  # fmt: skip
            if row is None:
                return None
            code = hook_code_from_row(row)
            names = await conn.fetch(
                "SELECT name FROM scopes WHERE kind='key' AND starts_with(name, $1)",
                machine_base(code.user, enrolment.hostname),
            )
            name = machine_name(code.user, enrolment.hostname, {r["name"] for r in names})
            await conn.execute(
                'INSERT INTO scopes (kind, id, name, "user", metadata, secret_hash, prefix, '
                "created_at, updated_at) VALUES ('key', $1, $2, $3, $4, $5, $6, $7, $7)",
                enrolment.key_id, name, code.user, _json(machine_metadata(enrolment, now)),
                enrolment.secret_hash, enrolment.prefix, now,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO hook_machines (key_id, last_seen, hook_version) VALUES ($1, $2, $3)",
                enrolment.key_id, now, enrolment.hook_version,
            )  # fmt: skip
            scope = await q.get_scope(conn, ScopeKind.KEY.value, name)
            assert scope is not None
            await self._audit(conn, "hook", "hook-enrol", f"key:{name}", scope_json(scope))
            return scope, code

        return await self._write(op, config=True, plans=False)  # a new key only

    async def touch_hook_machine(self, key_id: str, hook_version: str | None) -> None:
        async def op(conn: q.Conn) -> None:
            now = self._clock()
            await conn.execute(
                "UPDATE hook_machines SET last_seen=$1, hook_version=coalesce($2, hook_version) "
                "WHERE key_id=$3 AND (last_seen IS NULL OR last_seen < $4 "
                "OR ($2::text IS NOT NULL AND hook_version IS DISTINCT FROM $2))",
                now, hook_version, key_id, now - TOUCH_EVERY_S,
            )  # fmt: skip

        await self._write(op)

    async def mark_hook_tampered(self, key_id: str, files: tuple[str, ...]) -> None:
        async def op(conn: q.Conn) -> None:
            changed = await conn.fetchval(
                "UPDATE hook_machines SET tampered_at=$1, tamper_files=$2 WHERE key_id=$3 "
                "RETURNING 1",
                self._clock(), _json(list(files)), key_id,
            )  # fmt: skip
            name = await conn.fetchval("SELECT name FROM scopes WHERE kind='key' AND id=$1", key_id)
            if changed is None or name is None:
                raise NotFound(f'no hook machine with key id "{key_id}"')
            await self._audit(conn, "hook", "hook-tamper", f"key:{name}", {"files": list(files)})

        await self._write(op)

    async def list_hook_machines(self) -> list[HookMachine]:
        async def op(conn: q.Conn) -> list[HookMachine]:
            rows = await conn.fetch("SELECT * FROM hook_machines ORDER BY key_id")
            return [hook_machine_from_row(row) for row in rows]

        return await self._read(op)

    async def kill_user(self, name: str, logout: bool, actor: str = "admin") -> Scope:
        return await self._switch_user(name, Status.PAUSED, logout, "kill", actor)

    async def resume_user(self, name: str, actor: str = "admin") -> Scope:
        return await self._switch_user(name, Status.ACTIVE, None, "resume", actor)

    async def _switch_user(
        self, name: str, status: Status, logout: bool | None, action: str, actor: str
    ) -> Scope:
        """The status and the logout mark together, with one audit entry."""

        async def op(conn: q.Conn) -> Scope:
            before = await q.get_scope(conn, ScopeKind.USER.value, name)
            if before is None:
                raise NotFound(f'no user named "{name}"')
            metadata = switched_metadata(before, logout)
            now = self._clock()
            await q.update_scope_row(conn, "user", before.id, ScopeFields(metadata=metadata), now)
            await conn.execute(
                "UPDATE scopes SET status = $1 WHERE kind = 'user' AND id = $2",
                status.value, before.id,
            )  # fmt: skip
            after = await q.get_scope(conn, ScopeKind.USER.value, name)
            assert after is not None
            await q.insert_audit(
                conn, now, actor, action, f"user:{name}", scope_json(before), scope_json(after)
            )
            return after

        return await self._write(op, config=True)

    async def settle_lease(self, lease_id: str, outcome: Outcome) -> bool:
        async def op(conn: q.Conn) -> bool:
            # The reservation row first, then the counters: the lock order of every settle.
            row = await conn.fetchrow(
                "DELETE FROM reservations WHERE id=$1 RETURNING charges, info", lease_id
            )
            if row is None:
                return False
            info, key, worst = stored_reservation(row["info"])
            actual = lease_amounts(outcome, worst)
            entry = settlement.entry_row(info, key, outcome, actual)
            await conn.execute(settlement.INSERT_ENTRY, entry)
            deltas = plan_settle(load_charges(row["charges"]), actual)
            await conn.execute(settlement.ADD_COUNTERS, *settlement.delta_arrays(deltas))
            return True

        return await self._write(op)

    async def lease_held(self, lease_id: str) -> bool:
        await self.flush()
        return bool(
            await self._read(
                lambda c: c.fetchval("SELECT 1 FROM reservations WHERE id=$1", lease_id)
            )
        )

    async def leases_before(self, before: float) -> list[str]:
        async def op(conn: q.Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM reservations WHERE starts_with(id, $1) AND created_at < $2 "
                "ORDER BY id",
                HOOK_LEASE_PREFIX, before,
            )  # fmt: skip
            return [row["id"] for row in rows]

        return await self._read(op)

    async def session_leases(self, key_id: str, session: str) -> list[str]:
        async def op(conn: q.Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM reservations WHERE starts_with(id, $1) "
                "AND (info::jsonb) ->> 'key_id' = $2 AND (info::jsonb) ->> 'session' = $3 "
                "ORDER BY id",
                HOOK_LEASE_PREFIX, key_id, session,
            )  # fmt: skip
            return [row["id"] for row in rows]

        return await self._read(op)

    async def record_unheld(self, items: Sequence[tuple[Reservation, Outcome]]) -> list[bool]:
        async def op(conn: q.Conn) -> list[bool]:
            now = self._clock()
            done = []
            for res, outcome in items:
                result = await settlement.settle(conn, res, outcome, now)  # type: ignore[arg-type]
                done.append(result == settlement.SETTLED)
            return done

        return await self._write(op)
