"""The store port: what the gateway, admin API and CLI need from persistence.

One adapter per module (`sqlite.py` today, PostgreSQL next). Every method that changes
budgets is one atomic transaction; the limit decisions themselves come from
`capgate.core.engine`, so adapters only read counters and apply the engine's answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from capgate.core.engine import Amounts, Charge, Headroom, OutputFlex, Refusal
from capgate.core.limits import Limit, Scope, ScopeKind, Status
from capgate.core.money import Usage
from capgate.core.schedules import Schedule


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the ledger records about a request, known before it is forwarded."""

    request_id: str
    key_id: str
    model: str  # as asked by the client
    provider: str
    upstream_model: str
    endpoint: str
    stream: bool
    started_at: float
    # Refusals answer this status instead of 402/403/429 (for clients that would retry
    # those before showing the message; see `capgate.errors.refusal_status`).
    refusal_status: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    info: RequestInfo
    charges: tuple[Charge, ...]
    worst: Amounts  # what is held: the clamped worst case when max_output is set
    key: Scope  # the key as it was when the reservation was made
    max_output: int | None = None  # the lowered max_tokens, when the budget clamped it
    headroom: Headroom | None = None  # the tightest limit as it stood at admission


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an admitted request ended; settles its reservation into one ledger entry."""

    status: int  # HTTP status given to the client
    outcome: str  # ok | error | cancelled
    usage: Usage | None  # None: the provider reported none, so the reservation is charged
    cost_nano: int
    latency_ms: float
    ttft_ms: float | None = None
    attempts: int = 1
    error: str | None = None
    upstream_model: str | None = None
    # Marks for a second look, written to the ledger's `flags` (see LEDGER_FLAGS).
    flags: tuple[str, ...] = ()


# Flags a ledger entry can carry, and what each means.
LEDGER_FLAGS: dict[str, str] = {
    "over_reservation": "the provider reported more usage than was reserved: the entry "
    "records the truth, above the worst case held",
    "usage_unreadable": "the answer's usage could not be read: charged the reservation",
    "late_settlement": "settled after its reservation had been swept as lease_expired: "
    "the entry was reconciled to the real usage",
}


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
    clear: frozenset[str] = field(default_factory=frozenset)  # fields to set to null


@dataclass(frozen=True, slots=True)
class RequestQuery:
    key: str | None = None
    team: str | None = None
    user: str | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    outcome: str | None = None
    request_id: str | None = None  # the x-capgate-request-id its client was answered with
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: int | None = None  # entries older than this id


class Store(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def flush(self) -> None:
        """Wait until every write submitted so far is committed."""

    def key_by_id(self, key_id: str) -> tuple[Scope, bytes] | None:
        """The cached key and its hash (no I/O; may be slightly stale, reserve is not)."""

    def scopes_above(self, key: Scope) -> list[Scope]:
        """The user, team and org scopes a key's requests also count against (cached)."""

    async def refresh(self) -> None:
        """Reload the cache if another process changed the configuration."""

    async def reserve(
        self,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None = None,
        extra_scopes: tuple[Scope, ...] = (),
        record_refusal: bool = True,
    ) -> Reservation | Refusal: ...

    async def rereserve(
        self, old: Reservation, info: RequestInfo, worst: Amounts, flex: OutputFlex | None = None
    ) -> Reservation | Refusal:
        """Atomically release `old` and reserve `worst` for `info` (a fallback to another
        target, priced differently). Refused: `old` stays held, unchanged."""

    def settle(self, reservation: Reservation, outcome: Outcome) -> asyncio.Future[None]:
        """Queue the settlement at once; the awaitable completes when it is committed."""

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
    ) -> Scope: ...
    async def update_scope(
        self, kind: ScopeKind, name: str, fields: ScopeFields, actor: str = "admin"
    ) -> Scope: ...
    async def set_status(
        self, kind: ScopeKind, name: str, status: Status, actor: str = "admin"
    ) -> Scope: ...
    async def reset_usage(self, kind: ScopeKind, name: str, actor: str = "admin") -> None: ...
    async def delete_scope(self, kind: ScopeKind, name: str, actor: str = "admin") -> None: ...
    async def list_scopes(self, kind: ScopeKind) -> list[Scope]: ...
    async def get_scope(self, kind: ScopeKind, name: str) -> Scope: ...
    async def counters(self, scope: Scope, now: float) -> list[dict[str, Any]]: ...
    async def query_requests(self, query: RequestQuery) -> list[dict[str, Any]]: ...
    async def usage(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[dict[str, Any]]: ...
