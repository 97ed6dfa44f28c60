"""Providers and routes defined at runtime: their part of the store port (`RoutingStore`,
part of `base.Store`), their records and the row mapping both engines share.

Tables (SQLite migration 15, PostgreSQL 9): `runtime_providers` (name, type, settings
JSON, the API key as AES-GCM ciphertext + nonce + key id, its fingerprint) and
`runtime_routes` (match, settings JSON), in creation order. Every change bumps the meta
row `routing_version` in the same transaction: each process polls that one value and
rebuilds its router when it moves (`capgate.live_routing`). The store never sees a secret
in clear: sealing and opening happen in `capgate.secret_box`.

Routing rules set at runtime (docs/routing.md) are one document, the meta row
`routing_rules` (JSON: the ordered list as given, who set it, when), replaced whole in
the transaction that bumps `routing_version`; no row: the config file's rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from capgate.secret_box import Sealed

VERSION_ROW = "routing_version"
RULES_ROW = "routing_rules"
PROVIDER_COLUMNS = (
    "name, type, settings, secret, nonce, key_id, fingerprint, created_at, updated_at"
)
ROUTE_COLUMNS = "match, settings, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class StoredProvider:
    name: str
    type: str
    settings: dict[str, Any]  # the ProviderConfig fields but name, type and api_key
    secret: Sealed | None = None
    fingerprint: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def audit_json(self) -> dict[str, Any]:
        """What the audit log keeps: never the secret, its fingerprint."""
        return {
            "name": self.name, "type": self.type, **self.settings,
            "api_key_fingerprint": self.fingerprint,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredRoute:
    match: str
    settings: dict[str, Any]  # the RouteConfig fields but match
    created_at: float = 0.0
    updated_at: float = 0.0

    def audit_json(self) -> dict[str, Any]:
        return {"match": self.match, **self.settings}

    def providers(self) -> set[str]:
        targets = [*self.settings.get("targets", []), *self.settings.get("fallbacks", [])]
        return {str(t["provider"]) for t in targets}


@dataclass(frozen=True, slots=True)
class StoredRules:
    """The rules an admin set at runtime: the list as given (checked before it was
    stored), who set it and when."""

    rules: list[Any]
    actor: str
    updated_at: float

    def to_json(self) -> str:
        data = {"rules": self.rules, "actor": self.actor, "updated_at": self.updated_at}
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str | None) -> StoredRules | None:
        if text is None:
            return None
        data = orjson.loads(text)
        return cls(list(data["rules"]), str(data["actor"]), float(data["updated_at"]))


@dataclass(frozen=True, slots=True)
class RuntimeRouting:
    version: int
    providers: tuple[StoredProvider, ...]
    routes: tuple[StoredRoute, ...]  # in creation order
    rules: StoredRules | None = None  # None: the config file's


Reseal = Callable[[StoredProvider], Sealed]


class RoutingStore(Protocol):
    """Providers and routes an admin defined at runtime, shared by every process and node."""

    async def routing_version(self) -> int:
        """The `routing_version` meta row: moves on every change below (cheap to poll)."""

    async def runtime_routing(self) -> RuntimeRouting:
        """Every runtime provider and route, and the version they are at, in one read."""

    async def put_provider(self, provider: StoredProvider, *, create: bool, actor: str) -> None:
        """Create (Conflict: the name is taken) or replace (NotFound: no such runtime
        provider) one provider; audit `provider-create` / `provider-update`, target
        `provider:<name>`, with the fingerprint, never the secret."""

    async def delete_provider(self, name: str, actor: str) -> None:
        """NotFound; Conflict naming the runtime route(s) that still use it."""

    async def put_route(
        self, route: StoredRoute, *, create: bool, config_providers: Collection[str], actor: str
    ) -> None:
        """Create (Conflict: a route with this match exists) or replace (NotFound) one
        route; InvalidRequest when a target names neither one of `config_providers` nor a
        runtime provider (checked in the same transaction). Audit `route-create` /
        `route-update`, target `route:<match>`."""

    async def delete_route(self, match: str, actor: str) -> None:
        """NotFound. Audit `route-delete`."""

    async def put_rules(self, rules: list[Any] | None, actor: str) -> None:
        """Replace the runtime rules with `rules` (checked by the caller), or remove them
        (None: back to the config file's; a no-op when there are none). Audit
        `rules-set` / `rules-reset`, target `rules`, with the lists before and after."""

    async def reseal_provider_secrets(self, reseal: Reseal, actor: str) -> int:
        """In one transaction, replace every stored secret with `reseal(provider)` (the
        key rotation); how many were resealed. Audit `secret-key-rotate`."""


def provider_from_row(row: Any) -> StoredProvider:
    secret = None
    if row["secret"] is not None:
        secret = Sealed(bytes(row["secret"]), bytes(row["nonce"]), str(row["key_id"]))
    return StoredProvider(
        name=row["name"],
        type=row["type"],
        settings=dict(orjson.loads(row["settings"])),
        secret=secret,
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def route_from_row(row: Any) -> StoredRoute:
    return StoredRoute(
        row["match"], dict(orjson.loads(row["settings"])), row["created_at"], row["updated_at"]
    )


def provider_values(p: StoredProvider, now: float) -> tuple[Any, ...]:
    """In the order of PROVIDER_COLUMNS (created_at and updated_at both `now`)."""
    s = p.secret
    return (
        p.name, p.type, orjson.dumps(p.settings).decode(),
        s.ciphertext if s else None, s.nonce if s else None, s.key_id if s else None,
        p.fingerprint, now, now,
    )  # fmt: skip


def routes_using(routes: Collection[StoredRoute], provider: str) -> list[str]:
    return sorted(r.match for r in routes if provider in r.providers())


def missing_providers(
    route: StoredRoute, config_providers: Collection[str], runtime: Collection[str]
) -> list[str]:
    return sorted(p for p in route.providers() if p not in config_providers and p not in runtime)


def in_use(name: str, users: list[str]) -> str:
    return f"provider {name!r} is used by route(s) {', '.join(map(repr, users))}: change them first"


def no_such_provider(names: list[str]) -> str:
    return f"targets: no provider named {', '.join(map(repr, names))}"
