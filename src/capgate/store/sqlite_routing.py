"""Runtime providers and routes on SQLite (`RoutingStore`, mixed into `SQLiteStore`).
Every change is one transaction of the process's writer and bumps `routing_version`."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store.routing_rows import (
    PROVIDER_COLUMNS,
    ROUTE_COLUMNS,
    RULES_ROW,
    VERSION_ROW,
    Reseal,
    RuntimeRouting,
    StoredProvider,
    StoredRoute,
    StoredRules,
    in_use,
    missing_providers,
    no_such_provider,
    provider_from_row,
    provider_values,
    route_from_row,
    routes_using,
)
from capgate.store.rows import dumps
from capgate.store.sqlite_writer import SQLitePart

_BUMP = (
    "INSERT INTO meta (k, v) VALUES (?, '1') "
    "ON CONFLICT(k) DO UPDATE SET v = CAST(v AS INTEGER) + 1"
)


def _routes(conn: sqlite3.Connection) -> list[StoredRoute]:
    rows = conn.execute(f"SELECT {ROUTE_COLUMNS} FROM runtime_routes ORDER BY created_at, match")  # noqa: S608
    return [route_from_row(r) for r in rows]


def _rules(conn: sqlite3.Connection) -> StoredRules | None:
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (RULES_ROW,)).fetchone()
    return StoredRules.from_json(None if row is None else row[0])


def _provider(conn: sqlite3.Connection, name: str) -> StoredProvider | None:
    row = conn.execute(
        f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers WHERE name = ?",  # noqa: S608
        (name,),
    ).fetchone()
    return None if row is None else provider_from_row(row)


def _route(conn: sqlite3.Connection, match: str) -> StoredRoute | None:
    row = conn.execute(
        f"SELECT {ROUTE_COLUMNS} FROM runtime_routes WHERE match = ?",  # noqa: S608
        (match,),
    ).fetchone()
    return None if row is None else route_from_row(row)


class SQLiteRouting(SQLitePart):
    """Mixed into SQLiteStore."""

    def _routing_changed(
        self, conn: sqlite3.Connection, actor: str, action: str, target: str,
        before: object, after: object,
    ) -> None:  # fmt: skip
        conn.execute(
            "INSERT INTO audit (created_at, actor, action, target, before, after) "
            "VALUES (?,?,?,?,?,?)",
            (self._clock(), actor, action, target, dumps(before), dumps(after)),
        )
        conn.execute(_BUMP, (VERSION_ROW,))

    async def routing_version(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (VERSION_ROW,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(op)

    async def runtime_routing(self) -> RuntimeRouting:
        def op(conn: sqlite3.Connection) -> RuntimeRouting:
            conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                row = conn.execute("SELECT v FROM meta WHERE k = ?", (VERSION_ROW,)).fetchone()
                providers = conn.execute(
                    f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers ORDER BY created_at, name"  # noqa: S608
                )
                found = tuple(provider_from_row(p) for p in providers)
                version = int(row[0]) if row else 0
                return RuntimeRouting(version, found, tuple(_routes(conn)), _rules(conn))
            finally:
                conn.execute("COMMIT")

        return await self._read(op)

    async def put_provider(self, provider: StoredProvider, *, create: bool, actor: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock()
            before = _provider(conn, provider.name)
            if create and before is not None:
                raise Conflict(f"a runtime provider named {provider.name!r} exists already")
            if not create and before is None:
                raise NotFound(f"no runtime provider named {provider.name!r}")
            values = provider_values(provider, now)
            if before is None:
                conn.execute(
                    f"INSERT INTO runtime_providers ({PROVIDER_COLUMNS}) "  # noqa: S608
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    values,
                )
            else:
                conn.execute(
                    "UPDATE runtime_providers SET type=?, settings=?, secret=?, nonce=?, "
                    "key_id=?, fingerprint=?, updated_at=? WHERE name=?",
                    (*values[1:7], now, provider.name),
                )
            action = "provider-create" if before is None else "provider-update"
            after = provider.audit_json()
            self._routing_changed(conn, actor, action, f"provider:{provider.name}",
                        before.audit_json() if before else None, after)  # fmt: skip

        await self._write(op)

    async def delete_provider(self, name: str, actor: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            before = _provider(conn, name)
            if before is None:
                raise NotFound(f"no runtime provider named {name!r}")
            users = routes_using(_routes(conn), name)
            if users:
                raise Conflict(in_use(name, users))
            conn.execute("DELETE FROM runtime_providers WHERE name = ?", (name,))
            self._routing_changed(conn, actor, "provider-delete", f"provider:{name}",
                        before.audit_json(), None)  # fmt: skip

        await self._write(op)

    async def put_route(
        self, route: StoredRoute, *, create: bool, config_providers: Collection[str], actor: str
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            before = _route(conn, route.match)
            if create and before is not None:
                raise Conflict(f"a runtime route for {route.match!r} exists already")
            if not create and before is None:
                raise NotFound(f"no runtime route for {route.match!r}")
            runtime = {r[0] for r in conn.execute("SELECT name FROM runtime_providers")}
            missing = missing_providers(route, config_providers, runtime)
            if missing:
                raise InvalidRequest(no_such_provider(missing))
            now, settings = self._clock(), dumps(route.settings)
            if before is None:
                conn.execute(
                    f"INSERT INTO runtime_routes ({ROUTE_COLUMNS}) VALUES (?,?,?,?)",  # noqa: S608
                    (route.match, settings, now, now),
                )
            else:
                conn.execute(
                    "UPDATE runtime_routes SET settings=?, updated_at=? WHERE match=?",
                    (settings, now, route.match),
                )
            action = "route-create" if before is None else "route-update"
            self._routing_changed(conn, actor, action, f"route:{route.match}",
                        before.audit_json() if before else None, route.audit_json())  # fmt: skip

        await self._write(op)

    async def delete_route(self, match: str, actor: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            before = _route(conn, match)
            if before is None:
                raise NotFound(f"no runtime route for {match!r}")
            conn.execute("DELETE FROM runtime_routes WHERE match = ?", (match,))
            self._routing_changed(
                conn, actor, "route-delete", f"route:{match}", before.audit_json(), None
            )

        await self._write(op)

    async def put_rules(self, rules: list[Any] | None, actor: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            before = _rules(conn)
            if rules is None:
                if before is None:
                    return
                conn.execute("DELETE FROM meta WHERE k = ?", (RULES_ROW,))
            else:
                stored = StoredRules(rules, actor, self._clock())
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                    (RULES_ROW, stored.to_json()),
                )
            action = "rules-reset" if rules is None else "rules-set"
            self._routing_changed(conn, actor, action, "rules",
                        None if before is None else {"rules": before.rules},
                        None if rules is None else {"rules": rules})  # fmt: skip

        await self._write(op)

    async def reseal_provider_secrets(self, reseal: Reseal, actor: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers WHERE secret IS NOT NULL"  # noqa: S608
            ).fetchall()
            providers = [provider_from_row(r) for r in rows]
            for provider in providers:
                sealed = reseal(provider)  # raises (rolling all back) if one does not open
                conn.execute(
                    "UPDATE runtime_providers SET secret=?, nonce=?, key_id=? WHERE name=?",
                    (sealed.ciphertext, sealed.nonce, sealed.key_id, provider.name),
                )
            names = [p.name for p in providers]
            # No version bump: running processes keep the keys they opened; restarted with
            # the new key, they open the new ciphertexts.
            conn.execute(
                "INSERT INTO audit (created_at, actor, action, target, before, after) "
                "VALUES (?,?,?,?,?,?)",
                (self._clock(), actor, "secret-key-rotate", "providers", None,
                 dumps({"providers": names})),
            )  # fmt: skip
            return len(providers)

        return await self._write(op)
