"""The keys and named scopes a store holds in memory, shared by both engines.

Each store loads its `scopes` rows (SQL per engine) and hands them to `_install`; the hot
path then looks keys up and walks a key's scopes without touching the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from capgate.core.engine import Amounts, CountersFor, Refusal
from capgate.core.limits import Scope, ScopeKind
from capgate.rotation import RetiredSecret, load_retired
from capgate.store.base import RequestInfo, Reservation, unreserved
from capgate.store.rows import Row, scope_from_row


class KeyCache:
    """Mixed into SQLiteStore and PostgresStore, which provide `_clock`."""

    _clock: Callable[[], float]
    _keys: dict[str, tuple[Scope, bytes]]
    _retired: dict[str, tuple[RetiredSecret, ...]]  # rotated keys' old secrets
    _named: dict[tuple[ScopeKind, str], Scope]  # users, teams, orgs, providers
    _version: str
    _counters_for: CountersFor  # one per configuration loaded (_install)
    # Whether a user, team or org logs bodies: when none does, a key's own flag decides
    # alone (the body log's check costs one attribute read per request).
    named_log_bodies: bool = False
    named_cache: bool = False  # the same for the response cache's setting

    def _install(self, rows: Iterable[Row], version: str) -> None:
        """Replace the cache with the scopes of `rows` (the engine's SELECT_SCOPES).

        Every reload must replace every key entry, every scope and the `_named` dict with
        new objects, never update one in place or keep an unchanged one: a reservation
        planned before its transaction (`sqlite_plan.Plan.holds`) is used only if the
        cache's entry and `_named` are still the objects it was planned from, so identity
        stands for "the same configuration"."""
        keys: dict[str, tuple[Scope, bytes]] = {}
        named: dict[tuple[ScopeKind, str], Scope] = {}
        retired: dict[str, tuple[RetiredSecret, ...]] = {}
        for row in rows:
            scope = scope_from_row(row)
            if scope.kind is ScopeKind.KEY:
                keys[scope.id] = (scope, row["secret_hash"])
                if scope.extra.get("rotated_at") is not None:
                    retired[scope.id] = load_retired(row["retired_secrets"])
            else:
                named[(scope.kind, scope.name)] = scope
        # Reference swaps: readers see the old or the new dict.
        self._keys, self._named, self._version = keys, named, version
        self.named_log_bodies = any(scope.log_bodies for scope in named.values())
        self.named_cache = any(scope.cache is not None for scope in named.values())
        self._retired = retired
        self._counters_for = CountersFor()  # remembers these scopes' limits (engine.py)

    def key_by_id(self, key_id: str) -> tuple[Scope, bytes] | None:
        return self._keys.get(key_id)

    def retired_secrets(self, key_id: str) -> tuple[RetiredSecret, ...]:
        return self._retired.get(key_id, ())

    def scopes_above(self, key: Scope) -> list[Scope]:
        """The user, team and org scopes a key's requests also count against (cached)."""
        return self._scopes_of(key, "")[1:]

    def _scopes_of(self, key: Scope, provider: str) -> list[Scope]:
        """Every scope a request of `key` to `provider` counts against, innermost first:
        the key, its user, its team, the team's org, the provider. A team or user named on
        a key but not created is only a label."""
        scopes = [key]
        named = self._named
        user = key.extra.get("user")
        if user and (found := named.get((ScopeKind.USER, user))) is not None:
            scopes.append(found)
        team = key.extra.get("team")
        if team and (found := named.get((ScopeKind.TEAM, team))) is not None:
            scopes.append(found)
            org = found.extra.get("org")
            if org and (found := named.get((ScopeKind.ORG, org))) is not None:
                scopes.append(found)
        if (found := named.get((ScopeKind.PROVIDER, provider))) is not None:
            scopes.append(found)
        return scopes

    def admit_unreserved(self, info: RequestInfo, worst: Amounts) -> Reservation | Refusal:
        entry = self._keys.get(info.key_id)
        if entry is None:
            return Refusal("revoked", "This key has been deleted.", "key", info.key_id)
        return unreserved(info, worst, self._scopes_of(entry[0], info.provider), self._clock())
