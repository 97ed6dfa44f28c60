"""Runtime providers and routes on PostgreSQL (`RoutingStore`, mixed into
`PostgresStore`). Each change is one transaction that bumps `routing_version`. A route
locks the runtime providers it names (FOR SHARE) and a provider's deletion locks its row
(FOR UPDATE) before reading the routes, so a route can never be left naming a provider
deleted at the same moment on another node."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store import pg_queries as q
from capgate.store.pg_admin import PgHost
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

_BUMP = (
    "INSERT INTO meta (k, v) VALUES ($1, '1') "
    "ON CONFLICT (k) DO UPDATE SET v = (meta.v::BIGINT + 1)::TEXT"
)
_ROUTES = f"SELECT {ROUTE_COLUMNS} FROM runtime_routes ORDER BY created_at, match"  # noqa: S608


async def _routes(conn: q.Conn) -> list[StoredRoute]:
    return [route_from_row(r) for r in await conn.fetch(_ROUTES)]


async def _rules(conn: q.Conn, lock: str = "") -> StoredRules | None:
    text = await conn.fetchval(f"SELECT v FROM meta WHERE k = $1 {lock}", RULES_ROW)  # noqa: S608
    return StoredRules.from_json(text)


async def _provider(conn: q.Conn, name: str, lock: str = "") -> StoredProvider | None:
    row = await conn.fetchrow(
        f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers WHERE name = $1 {lock}",  # noqa: S608
        name,
    )
    return None if row is None else provider_from_row(row)


async def _route(conn: q.Conn, match: str) -> StoredRoute | None:
    row = await conn.fetchrow(
        f"SELECT {ROUTE_COLUMNS} FROM runtime_routes WHERE match = $1 FOR UPDATE",  # noqa: S608
        match,
    )
    return None if row is None else route_from_row(row)


class PgRouting(PgHost):
    """Mixed into PostgresStore."""

    async def _routing_changed(
        self, conn: q.Conn, actor: str, action: str, target: str,
        before: dict[str, Any] | None, after: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        await q.insert_audit(conn, self._clock(), actor, action, target, before, after)
        await conn.execute(_BUMP, VERSION_ROW)

    async def routing_version(self) -> int:
        async def op(conn: q.Conn) -> int:
            value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", VERSION_ROW)
            return 0 if value is None else int(value)

        return await self._read(op)

    async def runtime_routing(self) -> RuntimeRouting:
        async def op(conn: q.Conn) -> RuntimeRouting:
            value = await conn.fetchval("SELECT v FROM meta WHERE k = $1", VERSION_ROW)
            rows = await conn.fetch(
                f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers ORDER BY created_at, name"  # noqa: S608
            )
            providers = tuple(provider_from_row(r) for r in rows)
            routes, rules = tuple(await _routes(conn)), await _rules(conn)
            return RuntimeRouting(int(value or 0), providers, routes, rules)

        return await self._read(op)

    async def put_provider(self, provider: StoredProvider, *, create: bool, actor: str) -> None:
        async def op(conn: q.Conn) -> None:
            now = self._clock()
            values = provider_values(provider, now)
            before = await _provider(conn, provider.name, "FOR UPDATE")
            if create:
                inserted = await conn.fetchval(
                    f"INSERT INTO runtime_providers ({PROVIDER_COLUMNS}) VALUES "  # noqa: S608
                    "($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING RETURNING true",
                    *values,
                )
                if not inserted:
                    raise Conflict(f"a runtime provider named {provider.name!r} exists already")
            elif before is None:
                raise NotFound(f"no runtime provider named {provider.name!r}")
            else:
                await conn.execute(
                    "UPDATE runtime_providers SET type=$2, settings=$3, secret=$4, nonce=$5, "
                    "key_id=$6, fingerprint=$7, updated_at=$8 WHERE name=$1",
                    *values[:7], now,
                )  # fmt: skip
            action = "provider-create" if create else "provider-update"
            await self._routing_changed(conn, actor, action, f"provider:{provider.name}",
                                before.audit_json() if before else None, provider.audit_json())  # fmt: skip

        await self._write(op)

    async def delete_provider(self, name: str, actor: str) -> None:
        async def op(conn: q.Conn) -> None:
            before = await _provider(conn, name, "FOR UPDATE")
            if before is None:
                raise NotFound(f"no runtime provider named {name!r}")
            users = routes_using(await _routes(conn), name)
            if users:
                raise Conflict(in_use(name, users))
            await conn.execute("DELETE FROM runtime_providers WHERE name = $1", name)
            await self._routing_changed(conn, actor, "provider-delete", f"provider:{name}",
                                before.audit_json(), None)  # fmt: skip

        await self._write(op)

    async def put_route(
        self, route: StoredRoute, *, create: bool, config_providers: Collection[str], actor: str
    ) -> None:
        async def op(conn: q.Conn) -> None:
            before = await _route(conn, route.match)
            if not create and before is None:
                raise NotFound(f"no runtime route for {route.match!r}")
            named = sorted(route.providers())
            rows = await conn.fetch(
                "SELECT name FROM runtime_providers WHERE name = ANY($1::text[]) FOR SHARE", named
            )
            missing = missing_providers(route, config_providers, {r["name"] for r in rows})
            if missing:
                raise InvalidRequest(no_such_provider(missing))
            now, settings = self._clock(), dumps(route.settings)
            if create:
                inserted = await conn.fetchval(
                    f"INSERT INTO runtime_routes ({ROUTE_COLUMNS}) VALUES ($1,$2,$3,$4) "  # noqa: S608
                    "ON CONFLICT DO NOTHING RETURNING true",
                    route.match, settings, now, now,
                )  # fmt: skip
                if not inserted:
                    raise Conflict(f"a runtime route for {route.match!r} exists already")
            else:
                await conn.execute(
                    "UPDATE runtime_routes SET settings=$2, updated_at=$3 WHERE match=$1",
                    route.match, settings, now,
                )  # fmt: skip
            action = "route-create" if create else "route-update"
            await self._routing_changed(conn, actor, action, f"route:{route.match}",
                                before.audit_json() if before else None, route.audit_json())  # fmt: skip

        await self._write(op)

    async def delete_route(self, match: str, actor: str) -> None:
        async def op(conn: q.Conn) -> None:
            before = await _route(conn, match)
            if before is None:
                raise NotFound(f"no runtime route for {match!r}")
            await conn.execute("DELETE FROM runtime_routes WHERE match = $1", match)
            await self._routing_changed(conn, actor, "route-delete", f"route:{match}",
                                before.audit_json(), None)  # fmt: skip

        await self._write(op)

    async def put_rules(self, rules: list[Any] | None, actor: str) -> None:
        async def op(conn: q.Conn) -> None:
            # The version row first: two nodes setting rules at once take turns on it.
            await conn.execute(_BUMP, VERSION_ROW)
            before = await _rules(conn, "FOR UPDATE")
            if rules is None:
                if before is None:
                    return
                await conn.execute("DELETE FROM meta WHERE k = $1", RULES_ROW)
            else:
                stored = StoredRules(rules, actor, self._clock())
                await conn.execute(
                    "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $2",
                    RULES_ROW, stored.to_json(),
                )  # fmt: skip
            action = "rules-reset" if rules is None else "rules-set"
            await q.insert_audit(conn, self._clock(), actor, action, "rules",
                                 None if before is None else {"rules": before.rules},
                                 None if rules is None else {"rules": rules})  # fmt: skip

        await self._write(op)

    async def reseal_provider_secrets(self, reseal: Reseal, actor: str) -> int:
        async def op(conn: q.Conn) -> int:
            rows = await conn.fetch(
                f"SELECT {PROVIDER_COLUMNS} FROM runtime_providers WHERE secret IS NOT NULL "  # noqa: S608
                "ORDER BY name FOR UPDATE"
            )
            providers = [provider_from_row(r) for r in rows]
            for provider in providers:
                sealed = reseal(provider)  # raises (rolling all back) if one does not open
                await conn.execute(
                    "UPDATE runtime_providers SET secret=$2, nonce=$3, key_id=$4 WHERE name=$1",
                    provider.name, sealed.ciphertext, sealed.nonce, sealed.key_id,
                )  # fmt: skip
            names = [p.name for p in providers]
            # No version bump: running nodes keep the keys they opened (see SQLite's).
            await q.insert_audit(conn, self._clock(), actor, "secret-key-rotate", "providers",
                                 None, {"providers": names})  # fmt: skip
            return len(providers)

        return await self._write(op)
