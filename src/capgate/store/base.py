"""The store port: everything the gateway, admin API, dashboard, metrics and CLI need
from persistence. Nothing outside `capgate.store` knows which engine runs; only the
composition root (`bootstrap.py`) names one (`sqlite.py`; PostgreSQL: `pg.py`).

The port is a few Protocols, one per kind of consumer, and `Store`, which is all of them:

- `HotPath` (the gateway): the key cache, reserve, rereserve, settle, health;
- `ScopeStore` (admin API, CLI, /v1/me): keys, users, teams, orgs, providers, their
  counters and members; every change writes an audit entry (`store/scopes.py`);
- `LedgerReader` (admin API, dashboard, /metrics): the ledger and the audit log read back;
- `EventSource` (the live feed): ledger and audit entries above a cursor (both
  `store/ledger.py`; this module re-exports them and `ScopeFields`, `RequestQuery`);
- `SessionStore` (dashboard login): sessions and the login throttle, shared by every
  process and node;
- `SettingsStore` (runtime settings, the admin key): the settings row and `meta`;
- `HookStore` (hook mode, `http/hook.py`): install codes, enrolled machines, prompt
  leases settled by id from any process, the model calls machines report.

Reads return the typed records of `store/records.py`. Errors, from `capgate.errors`:
`NotFound` (no such scope), `Conflict` (exists already, or still named), `InvalidRequest`
(bad references or fields; nothing changed), `StoreUnavailable` (the database cannot be
reached or written now; nothing changed, except that `settle` keeps retrying).

Every method that changes budgets is one atomic transaction; the limit decisions come
from `capgate.core.engine`, so adapters only read counters and apply the engine's answer.
Every admin change bumps `meta.config_version`, so every process and node reloads its key
cache before its next reservation.

Tables every engine has (same names and columns; see `sqlite_schema.py`): meta, scopes,
counters, processes, reservations, requests (the ledger), audit, sessions, and
login_failures (migration 9): `client TEXT NOT NULL, failed_at REAL NOT NULL`, one row
per failed dashboard login, indexed on (client, failed_at) and on (failed_at); rows older
than `LOGIN_WINDOW_S` are deleted whenever a failure is recorded, so it stays small;
hook_codes and hook_machines (SQLite migration 11, PostgreSQL 5), and the ledger's
`session` and `prompt` columns (hook entries); runtime_providers and runtime_routes
(SQLite migration 15, PostgreSQL 9; `store/routing_rows.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from capgate.core.engine import (
    Amounts,
    Charge,
    Headroom,
    OutputFlex,
    Refusal,
    check_access,
    counters_for,
)
from capgate.core.frozen import quick_init
from capgate.core.limits import Scope
from capgate.core.money import Usage
from capgate.rotation import RetiredSecret
from capgate.store.admin_accounts import AdminStore
from capgate.store.alerting import AlertStore
from capgate.store.bodies import BodyStore
from capgate.store.ledger import EventSource as EventSource
from capgate.store.ledger import LedgerReader as LedgerReader
from capgate.store.ledger import RequestQuery as RequestQuery
from capgate.store.ledger_daily import LedgerPruning
from capgate.store.records import (
    HookCode,
    HookMachine,
    Session,
)
from capgate.store.routing_rows import RoutingStore
from capgate.store.scopes import ScopeFields as ScopeFields
from capgate.store.scopes import ScopeStore as ScopeStore
from capgate.store.scopes import refuse_if_named as refuse_if_named
from capgate.store.scopes import refuse_revoked as refuse_revoked

# The `meta` row that holds the settings an admin changed at runtime (a JSON object).
SETTINGS_ROW = "settings"
# Dashboard logins: at most this many failures per client address in this many seconds.
LOGIN_MAX_FAILURES = 10
LOGIN_WINDOW_S = 600.0


@quick_init
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
    # Hook mode (`capgate.hook`): the agent's session and prompt the entry belongs to.
    session: str | None = None
    prompt: str | None = None
    # The routing rule that matched it (`capgate.rules`), written to the ledger's `rule`.
    rule: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    info: RequestInfo
    charges: tuple[Charge, ...]
    worst: Amounts  # what is held: the clamped worst case when max_output is set
    key: Scope  # the key as it was when the reservation was made
    max_output: int | None = None  # the lowered max_tokens, when the budget clamped it
    headroom: Headroom | None = None  # the tightest limit as it stood at admission
    # Admitted while the store could not be reached, for a key set `fail_open`: nothing
    # is held (`charges` name the counters with amount 0); its settlement adds the usage.
    fail_open: bool = False


@quick_init
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
    # What the entry counts against `requests` limits: 1; 0 for a model call reported by
    # a hook (in hook mode requests and credits count prompts, see `capgate.hook`).
    requests: int = 1
    # The response cache (capgate.cache): "hit" (answered from it, nothing forwarded),
    # "miss" (a cacheable request forwarded), None (not cacheable); what a hit saved.
    cache: str | None = None
    saved_nano: int = 0


# Flags a ledger entry can carry, and what each means.
LEDGER_FLAGS: dict[str, str] = {
    "over_reservation": "the provider reported more usage than was reserved: the entry "
    "records the truth, above the worst case held",
    "usage_unreadable": "the answer's usage could not be read: charged the reservation",
    "late_settlement": "settled after its reservation had been swept as lease_expired: "
    "the entry was reconciled to the real usage",
    "fail_open": "admitted un-reserved while the store could not be reached (the key is "
    "set fail_open): its usage was added when the store was back, even past a limit",
    "hook_report": "a model call a hook machine reported after it happened (hook mode): "
    "its usage was added once per provider request id, even past a limit",
    "otel": "reported through OpenTelemetry (`POST /v1/logs`) rather than a transcript",
    "offline": "a prompt a hook machine admitted from its cached limits while the server "
    "was unreachable (hook mode): counted once when its queued report arrived, even past "
    "a limit",
    "unpriced_model": "a model call a hook reported for a model with no price in capgate's "
    "table: charged at the dearest rates of its agent's family (claude-* for Claude Code, "
    "gpt-* for Codex), per token kind",
}
# The flags that mark an entry written without a reservation: its ledger entry (by
# request id) is what says it was counted.
UNHELD_FLAGS = ("fail_open", "hook_report", "offline")


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What the readiness probe needs to know of the store."""

    problem: str | None  # why writes cannot be made now; None: they can
    settlements_waiting: int  # journaled, not yet committed
    settlements_retrying: int  # of those, the ones whose last write failed


class HotPath(Protocol):
    """What the gateway needs on every request."""

    # Whether any cached user, team or org scope sets `log_bodies` (capgate.bodylog):
    # when none does, a request's own key alone says whether it is logged.
    named_log_bodies: bool
    # Whether any cached user, team or org scope sets `cache` (capgate.cache): when none
    # does, a request's own key alone says whether its answer may be cached.
    named_cache: bool

    async def flush(self) -> None:
        """Wait until every write submitted so far by this process is committed."""

    def key_by_id(self, key_id: str) -> tuple[Scope, bytes] | None:
        """The cached key and its secret's hash; None if unknown (no I/O; may be slightly
        stale, reserve is not)."""

    def retired_secrets(self, key_id: str) -> tuple[RetiredSecret, ...]:
        """The cached key's old secrets, newest first (empty if never rotated; no I/O)."""

    def scopes_above(self, key: Scope) -> list[Scope]:
        """The user, team and org scopes a key's requests also count against, innermost
        first (cached, no I/O; a team or user named but not created is left out)."""

    async def refresh(self) -> None:
        """Reload the key cache now if another process or node changed the configuration."""

    async def reserve(
        self,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None = None,
        extra_scopes: tuple[Scope, ...] = (),
        record_refusal: bool = True,
    ) -> Reservation | Refusal:
        """In one transaction, against the current configuration (never the cache): check
        access and every limit of the key, its user, team, org and provider (and
        `extra_scopes`) and hold `worst` on all of them, or on none. A Refusal is written
        to the ledger as a `refused` entry (unless `record_refusal` is False) and returned;
        a deleted key is refused `revoked`. `flex`: the budget may lower max_tokens when
        every scope clamps. The reservation's id is `info.request_id` (unique)."""

    async def rereserve(
        self, old: Reservation, info: RequestInfo, worst: Amounts, flex: OutputFlex | None = None
    ) -> Reservation | Refusal:
        """Atomically release `old` and reserve `worst` for `info` (a fallback to another
        target, priced differently). Refused (nothing written to the ledger): `old` stays
        held, unchanged. `old` already settled by a sweep: Refusal `lease_expired`."""

    def admit_unreserved(self, info: RequestInfo, worst: Amounts) -> Reservation | Refusal:
        """For a key set `fail_open` when `reserve` raised StoreUnavailable: the checks
        that need no database (status, expiry, models, schedules of the cached key and the
        scopes above it), and a Reservation that holds nothing (`fail_open`), or the
        Refusal (not written anywhere). No I/O; see `unreserved`."""

    def settle(self, reservation: Reservation, outcome: Outcome) -> asyncio.Future[None]:
        """Keep the settlement durably at once (before the answer's last bytes are sent)
        and write it, retrying until it commits, exactly once: the reservation's hold is
        replaced by the actual amounts and one ledger entry is written; the awaitable
        completes then. Settling twice changes nothing the second time. A settlement whose
        reservation was swept (`lease_expired`) corrects that entry to the real usage and
        flags it `late_settlement`. A `fail_open` reservation (no row was ever held) adds
        its usage to the counters its charges name, once per request id (a ledger entry
        with that id means settled), flagged `fail_open`."""

    def health(self) -> StoreHealth:
        """Whether the store can be written now, and the settlements waiting (no I/O)."""


def unreserved(
    info: RequestInfo, worst: Amounts, scopes: Sequence[Scope], now: float
) -> Reservation | Refusal:
    """A request admitted without the store (`HotPath.admit_unreserved`): `scopes` are the
    cached ones it counts against, the key first. The charges name the counter instances
    a reservation would have held now, with amount 0, so settling adds the usage there
    and releases nothing."""
    refusal = check_access(scopes, (info.model, info.upstream_model), now)
    if refusal is not None:
        return refusal
    return unheld(info, worst, scopes, now)


def unheld(info: RequestInfo, worst: Amounts, scopes: Sequence[Scope], now: float) -> Reservation:
    """A Reservation that holds nothing, for usage that is added whatever the limits say
    (fail-open, a model call a hook reports after the fact): its charges name the counter
    instances of every limit that applies now, with amount 0. Settled through the
    un-held path: once per request id."""
    charges: dict[tuple[str, int], Charge] = {}  # two limits on one counter: charge once
    for a in counters_for(scopes, (info.model, info.upstream_model), now):
        charges.setdefault(
            (a.counter, a.window.start), Charge(a.counter, a.window.start, a.limit.metric, 0)
        )
    return Reservation(
        info.request_id, info, tuple(charges.values()), worst, scopes[0], fail_open=True
    )


class SessionStore(Protocol):
    """Dashboard logins, shared by every process and node on the database."""

    async def create_session(
        self, token_hash: bytes, actor: str, key_tag: str, ttl_seconds: float
    ) -> Session:
        """Store a new session (expired ones are deleted on the way)."""

    async def get_session(self, token_hash: bytes) -> Session | None:
        """The live session with this token hash, or None (unknown or expired)."""

    async def delete_session(self, token_hash: bytes) -> None:
        """End the session (nothing happens if there is none)."""

    async def login_blocked(self, client: str, now: float) -> float | None:
        """Seconds until `client` may try again when it failed `LOGIN_MAX_FAILURES` times
        or more in (now - LOGIN_WINDOW_S, now]: the oldest of those failures plus the
        window, minus now (> 0). None: it may try."""

    async def login_failed(self, client: str, now: float) -> None:
        """Record a failed login of `client` at `now`; delete every failure older than
        the window (of any client)."""

    async def login_succeeded(self, client: str) -> None:
        """Forget `client`'s failures."""


class SettingsChanged(Exception):
    """The stored runtime settings are no longer those a change was made on."""


class SettingsStore(Protocol):
    """The runtime settings and named values (`meta`)."""

    async def get_settings(self) -> dict[str, Any]:
        """The settings an admin changed at runtime ({} when none)."""

    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Store the overrides, bump the config version and write the audit entry (action
        and target `settings`; `before` and `after` are the effective settings). With
        `expected`, only if the stored overrides are still those (else `SettingsChanged`,
        nothing written): two admins' changes in two processes never lose one."""

    async def get_meta(self, name: str) -> str | None:
        """A named value (e.g. `admin_key_hash`), or None."""

    async def set_meta(self, name: str, value: str) -> None:
        """Set a named value (insert or replace)."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A machine redeeming an install code: what it says of itself, and its new key (the
    token's id, SHA-256 and display prefix; see `keys.new_hook_token`)."""

    hostname: str
    os: str
    os_user: str
    agents: tuple[str, ...]
    hook_version: str | None
    key_id: str
    secret_hash: bytes
    prefix: str


# A hook's prompt lease has this id prefix (`hp-` + 32 hex): the process sweep leaves it
# to the server's lease expiry (`HookStore.settle_lease`), which any process may run.
HOOK_LEASE_PREFIX = "hp-"


class HookStore(Protocol):
    """Hook mode (`capgate.hook`): install codes, enrolled machines, prompt leases and the
    model calls machines report. Times are the store's clock (the server's), never a
    client's."""

    async def create_hook_code(
        self,
        code_hash: bytes,
        user: str,
        expires_at: float,
        agents: tuple[str, ...],
        actor: str = "admin",
    ) -> HookCode:
        """Store a new install code for `user` (only its hash). NotFound: no such user.
        Audit action `hook-code`, target `user:<user>`."""

    async def list_hook_codes(self) -> list[HookCode]:
        """Every install code, newest first."""

    async def delete_hook_code(self, code_id: str, actor: str = "admin") -> None:
        """Delete the code whose id (first hex digits of its hash) is `code_id`. NotFound;
        Conflict when the id names several. Audit action `hook-code-delete`."""

    async def enrol_hook_machine(
        self, code_hash: bytes, enrolment: Enrolment
    ) -> tuple[Scope, HookCode] | None:
        """In one transaction: redeem the code (unused and unexpired; single use: it is
        marked used with the machine's key id) and record the machine: its key scope
        named `<user>@<hostname>` (`-2`, `-3`... when taken), `user` = the code's user,
        `metadata.hook` = what it said of itself, and its `hook_machines` row. Audit action
        `hook-enrol`, target `key:<name>`. None: the code is unknown, used or expired
        (nothing changed)."""

    async def touch_hook_machine(self, key_id: str, hook_version: str | None) -> None:
        """The machine was seen now: `last_seen` (written when it is a minute old or the
        version changed, so not once per prompt)."""

    async def mark_hook_tampered(self, key_id: str, files: tuple[str, ...]) -> None:
        """The machine's watchdog restored `files`: `tampered_at` = now. Audit action
        `hook-tamper`, target `key:<name>`, actor `hook`. NotFound: not a machine."""

    async def list_hook_machines(self) -> list[HookMachine]:
        """Every enrolled machine's facts, by key id."""

    async def kill_user(self, name: str, logout: bool, actor: str = "admin") -> Scope:
        """The kill switch, in one transaction: pause the user and mark whether their
        machines log the agent out (`metadata.hook_logout`). One audit entry: action
        `kill`, target `user:<name>`, the scope before and after. NotFound;
        InvalidRequest: the user is revoked."""

    async def resume_user(self, name: str, actor: str = "admin") -> Scope:
        """Resume a paused (or killed) user and clear the logout mark, in one transaction.
        One audit entry: action `resume`, before and after. NotFound; InvalidRequest: the
        user is revoked."""

    async def settle_lease(self, lease_id: str, outcome: Outcome) -> bool:
        """Settle a held reservation from its stored row, from any process or node: the
        hold is released, `outcome`'s amounts (requests = `outcome.requests`, the held
        credits) counted, one ledger entry written. False: the row is gone (settled
        already): nothing changed."""

    async def lease_held(self, lease_id: str) -> bool:
        """Whether the reservation `lease_id` is still held."""

    async def leases_before(self, before: float) -> list[str]:
        """The ids of hook prompt leases (`HOOK_LEASE_PREFIX`) made before `before`."""

    async def session_leases(self, key_id: str, session: str) -> list[str]:
        """The ids of the hook prompt leases held for `session` of the machine `key_id`."""

    async def record_unheld(self, items: Sequence[tuple[Reservation, Outcome]]) -> list[bool]:
        """In one transaction, settle un-held reservations (`unheld`) through the path
        fail-open uses: each request id counted once (True), or found counted already
        (False). Added even past a limit."""


class Store(
    HotPath,
    ScopeStore,
    LedgerReader,
    EventSource,
    SessionStore,
    SettingsStore,
    HookStore,
    AlertStore,
    BodyStore,
    LedgerPruning,
    RoutingStore,
    AdminStore,
    Protocol,
):
    """The whole port: what `bootstrap.py` builds and hands out, in parts, to consumers."""

    async def start(self) -> None:
        """Open the database, apply the migrations (safe when several processes start at
        once), load the key cache. StoreUnavailable with what to do when it cannot."""

    async def close(self) -> None:
        """Stop background work, keep what is unwritten for the next start, close."""
