"""Keys, users, teams, orgs and providers: the store port's part (`ScopeStore`, part of
`base.Store`), the fields an admin sets on them (`ScopeFields`), and the checks both
engines make before a delete or a rotation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from capgate.core.caching import CacheSetting
from capgate.core.limits import Limit, Scope, ScopeKind, Status
from capgate.core.schedules import Schedule
from capgate.errors import Conflict, InvalidRequest
from capgate.store.records import LimitUsage


@dataclass(frozen=True, slots=True)
class ScopeFields:
    """Admin-settable fields of a scope; `None` means "leave as it is" on update."""

    limits: tuple[Limit, ...] | None = None
    models: tuple[str, ...] | None = None
    team: str | None = None
    user: str | None = None
    org: str | None = None
    timezone: str | None = None
    expires_at: float | None = None
    metadata: dict[str, Any] | None = None
    clamp: bool | None = None
    unbounded_hold_nano: int | None = None
    schedules: tuple[Schedule, ...] | None = None
    fail_open: bool | None = None
    log_bodies: bool | None = None
    cache: CacheSetting | None = None  # clear "cache" to turn caching off
    rotate_every: float | None = None  # keys: seconds between scheduled rotations
    clear: frozenset[str] = field(default_factory=frozenset)  # fields to set to null


def refuse_if_named(kind: ScopeKind, name: str, group: str, named: list[str]) -> None:
    """Conflict when `named` (the names of the `group`, keys or teams, that still name the
    team, user or org `name`) is not empty: deleting it would leave them a dangling name."""
    if named:
        shown = ", ".join(f'"{n}"' for n in named[:5])
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        what = kind.value
        raise Conflict(
            f'{what} "{name}" is still named by {group} {shown}{more}: move them to another '
            f'{what} (PATCH /admin/{group}/NAME with {{"{what}": ...}} or null) or delete '
            f"them first"
        )


def refuse_revoked(key: Scope) -> None:
    """A revoked key is not rotated: revocation is final, a new secret would not work."""
    if key.status is Status.REVOKED:
        raise InvalidRequest(f'key "{key.name}" is revoked; revocation is final')


class ScopeStore(Protocol):
    """Keys, users, teams, orgs and providers. Every change is one transaction that bumps
    the config version and writes one audit entry (action, target "<kind>:<name>", the
    scope's `scope_json` before and after)."""

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
        """Create a scope (a random id unless `scope_id`). Conflict: the name is taken;
        InvalidRequest: its team, user or org does not exist. Audit action `create`."""

    async def update_scope(
        self, kind: ScopeKind, name: str, fields: ScopeFields, actor: str = "admin"
    ) -> Scope:
        """Change the fields given (None: unchanged; `fields.clear`: set to null).
        NotFound, InvalidRequest as for create. Audit action `update`."""

    async def set_status(
        self, kind: ScopeKind, name: str, status: Status, actor: str = "admin"
    ) -> Scope:
        """Pause, resume or revoke. InvalidRequest: a revoked scope cannot come back.
        NotFound. Audit action `pause`, `resume` or `revoke`."""

    async def reset_usage(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        """Set the settled amounts of every counter of the scope to 0 (what requests in
        flight hold stays reserved). NotFound. Audit action `reset-usage`."""

    async def delete_scope(self, kind: ScopeKind, name: str, actor: str = "admin") -> None:
        """Delete the scope (its counters and ledger entries stay). NotFound; Conflict
        while keys (or, for an org, teams) still name it. Audit action `delete`, no after."""

    async def rotate_key(
        self, name: str, secret_hash: bytes, grace_s: float, actor: str = "admin"
    ) -> Scope:
        """Give the key `name` a new secret (`secret_hash`, same id): the old one works
        for `grace_s` more seconds, and no earlier one longer than that (rotation.retire).
        NotFound; InvalidRequest when revoked. Audit action `rotate` (no hash in it)."""

    async def list_scopes(self, kind: ScopeKind) -> list[Scope]:
        """Every scope of `kind`, ordered by name."""

    async def get_scope(self, kind: ScopeKind, name: str) -> Scope:
        """The scope, read from the database (not the cache). NotFound."""

    async def members(self, kind: ScopeKind, name: str) -> dict[str, list[str]]:
        """Who names a scope, each list ordered by name: a team's {"keys", "users"} (the
        distinct users of its keys), a user's {"keys"}, an org's {"teams"}; {} for keys
        and providers. NotFound."""

    async def counters(self, scope: Scope, now: float) -> list[LimitUsage]:
        """Each limit of `scope`, in its order, as it stands at `now` in its current window
        (in the scope's timezone; a rolling window sums its buckets), including every
        settlement this process submitted before the call."""
