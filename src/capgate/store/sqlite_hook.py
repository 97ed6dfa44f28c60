"""Hook mode in the SQLite store (a mixin of SQLiteStore): install codes, enrolled
machines, prompt leases settled by id, the calls machines report (`HookStore` in
base.py). Each method is one write op (one transaction) or one read."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from capgate.core.limits import Scope, ScopeKind, Status
from capgate.errors import NotFound
from capgate.store import sqlite_queries as q
from capgate.store import sqlite_settlement as settlement
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
from capgate.store.records import HookCode, HookMachine, scope_json
from capgate.store.rows import dumps
from capgate.store.sqlite_counters import CounterCache
from capgate.store.sqlite_writer import SQLitePart

# last_seen is written at most this often per machine (unless its hook version changed).
TOUCH_EVERY_S = 60.0


class SQLiteHook(SQLitePart):
    """Mixed into SQLiteStore."""

    _counters: CounterCache

    def _audit(
        self, conn: sqlite3.Connection, actor: str, action: str, target: str, after: object
    ) -> None:
        conn.execute(
            "INSERT INTO audit (created_at, actor, action, target, before, after) "
            "VALUES (?,?,?,?,?,?)",
            (self._clock(), actor, action, target, None, dumps(after)),
        )

    async def create_hook_code(
        self,
        code_hash: bytes,
        user: str,
        expires_at: float,
        agents: tuple[str, ...],
        actor: str = "admin",
    ) -> HookCode:
        def op(conn: sqlite3.Connection) -> HookCode:
            if q.get_scope(conn, ScopeKind.USER.value, user) is None:
                raise NotFound(f'no user named "{user}"')
            now = self._clock()
            conn.execute(
                "INSERT INTO hook_codes (code_hash, user, created_at, expires_at, actor, agents) "
                "VALUES (?,?,?,?,?,?)",
                (code_hash, user, now, expires_at, actor, dumps(list(agents))),
            )
            code = HookCode(code_hash.hex()[:8], user, now, expires_at, None, None, actor, agents)
            self._audit(conn, actor, "hook-code", f"user:{user}", code_json(code))
            return code

        return await self._write(op)

    async def list_hook_codes(self) -> list[HookCode]:
        def op(conn: sqlite3.Connection) -> list[HookCode]:
            rows = conn.execute("SELECT * FROM hook_codes ORDER BY created_at DESC, code_hash")
            return [hook_code_from_row(row) for row in rows]

        await self.flush()
        return await self._read(op)

    async def delete_hook_code(self, code_id: str, actor: str = "admin") -> None:
        def op(conn: sqlite3.Connection) -> None:
            rows = conn.execute("SELECT * FROM hook_codes").fetchall()
            found = [row for row in rows if bytes(row["code_hash"]).hex().startswith(code_id)]
            one_code(code_id, len(found))
            conn.execute("DELETE FROM hook_codes WHERE code_hash=?", (found[0]["code_hash"],))
            code = hook_code_from_row(found[0])
            self._audit(conn, actor, "hook-code-delete", f"user:{code.user}", code_json(code))

        await self._write(op)

    async def enrol_hook_machine(
        self, code_hash: bytes, enrolment: Enrolment
    ) -> tuple[Scope, HookCode] | None:
        def op(conn: sqlite3.Connection) -> tuple[Scope, HookCode] | None:
            now = self._clock()
            claimed = conn.execute(
                "UPDATE hook_codes SET used_at=?, machine=? "
                "WHERE code_hash=? AND used_at IS NULL AND expires_at > ?",
                (now, enrolment.key_id, code_hash, now),
            ).rowcount
            if claimed == 0:
                return None
            row = conn.execute("SELECT * FROM hook_codes WHERE code_hash=?", (code_hash,))
            code = hook_code_from_row(row.fetchone())
            taken = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM scopes WHERE kind='key' AND name LIKE ?",
                    (machine_base(code.user, enrolment.hostname) + "%",),
                )
            }
            name = machine_name(code.user, enrolment.hostname, taken)
            metadata = machine_metadata(enrolment, now)
            conn.execute(
                "INSERT INTO scopes (kind, id, name, user, metadata, secret_hash, prefix, "
                "created_at, updated_at) VALUES ('key', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    enrolment.key_id, name, code.user, dumps(metadata), enrolment.secret_hash,
                    enrolment.prefix, now, now,
                ),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO hook_machines (key_id, last_seen, hook_version) VALUES (?,?,?)",
                (enrolment.key_id, now, enrolment.hook_version),
            )
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
            scope = q.get_scope(conn, ScopeKind.KEY.value, name)
            assert scope is not None
            self._audit(conn, "hook", "hook-enrol", f"key:{name}", scope_json(scope))
            self._load(conn)
            return scope, code

        return await self._write(op)

    async def touch_hook_machine(self, key_id: str, hook_version: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute(
                "UPDATE hook_machines SET last_seen=?, hook_version=coalesce(?, hook_version) "
                "WHERE key_id=? AND (last_seen IS NULL OR last_seen < ? "
                "OR (? IS NOT NULL AND hook_version IS NOT ?))",
                (now, hook_version, key_id, now - TOUCH_EVERY_S, hook_version, hook_version),
            )

        await self._write(op)

    async def mark_hook_tampered(self, key_id: str, files: tuple[str, ...]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock()
            changed = conn.execute(
                "UPDATE hook_machines SET tampered_at=?, tamper_files=? WHERE key_id=?",
                (now, dumps(list(files)), key_id),
            ).rowcount
            name = conn.execute(
                "SELECT name FROM scopes WHERE kind='key' AND id=?", (key_id,)
            ).fetchone()
            if not changed or name is None:
                raise NotFound(f'no hook machine with key id "{key_id}"')
            self._audit(conn, "hook", "hook-tamper", f"key:{name[0]}", {"files": list(files)})

        await self._write(op)

    async def list_hook_machines(self) -> list[HookMachine]:
        def op(conn: sqlite3.Connection) -> list[HookMachine]:
            rows = conn.execute("SELECT * FROM hook_machines ORDER BY key_id")
            return [hook_machine_from_row(row) for row in rows]

        await self.flush()
        return await self._read(op)

    async def kill_user(self, name: str, logout: bool, actor: str = "admin") -> Scope:
        return await self._switch_user(name, Status.PAUSED, logout, "kill", actor)

    async def resume_user(self, name: str, actor: str = "admin") -> Scope:
        return await self._switch_user(name, Status.ACTIVE, None, "resume", actor)

    async def _switch_user(
        self, name: str, status: Status, logout: bool | None, action: str, actor: str
    ) -> Scope:
        """The status and the logout mark together, with one audit entry."""

        def op(conn: sqlite3.Connection) -> Scope:
            before = q.get_scope(conn, ScopeKind.USER.value, name)
            if before is None:
                raise NotFound(f'no user named "{name}"')
            metadata = switched_metadata(before, logout)
            now = self._clock()
            q.update_scope_row(conn, "user", before.id, ScopeFields(metadata=metadata), now)
            conn.execute(
                "UPDATE scopes SET status=? WHERE kind='user' AND id=?", (status.value, before.id)
            )
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
            after = q.get_scope(conn, ScopeKind.USER.value, name)
            assert after is not None
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before, after) "
                "VALUES (?,?,?,?,?,?)",
                (now, actor, action, f"user:{name}", dumps(scope_json(before)),
                 dumps(scope_json(after))),
            )  # fmt: skip
            self._load(conn)
            return after

        return await self._write(op)

    async def settle_lease(self, lease_id: str, outcome: Outcome) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return settlement.settle_by_id(
                conn, self._counters.add, lease_id, outcome, self._clock()
            )

        return await self._write(op)

    async def lease_held(self, lease_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT 1 FROM reservations WHERE id=?", (lease_id,)).fetchone()
            return row is not None

        await self.flush()
        return await self._read(op)

    async def leases_before(self, before: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM reservations WHERE id LIKE ? AND created_at < ? ORDER BY id",
                (HOOK_LEASE_PREFIX + "%", before),
            )
            return [row[0] for row in rows]

        await self.flush()
        return await self._read(op)

    async def session_leases(self, key_id: str, session: str) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM reservations WHERE id LIKE ? "
                "AND json_extract(info, '$.key_id') = ? AND json_extract(info, '$.session') = ? "
                "ORDER BY id",
                (HOOK_LEASE_PREFIX + "%", key_id, session),
            )
            return [row[0] for row in rows]

        await self.flush()
        return await self._read(op)

    async def record_unheld(self, items: Sequence[tuple[Reservation, Outcome]]) -> list[bool]:
        def op(conn: sqlite3.Connection) -> list[bool]:
            now = self._clock()
            return [
                settlement.settle(conn, self._counters.add, res, outcome, now) == settlement.SETTLED
                for res, outcome in items
            ]

        return await self._write(op)
