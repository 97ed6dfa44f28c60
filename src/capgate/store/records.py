"""What the store's reads return: typed records, the same from every engine.

Each engine maps its rows to these; the HTTP layer renders them as JSON (`http/admin_json.py`).
Amounts of money are nano-dollar ints, times are Unix seconds (floats), as in the tables.
The few helpers here are engine-neutral on purpose: `scope_json` is also what the audit
log stores as a scope's before and after, so every engine must write the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capgate.core.limits import Limit, Scope, ScopeKind, nano_to_decimal_str
from capgate.core.windows import is_rate_window, parse_window
from capgate.rotation import due_at, format_duration

# What `Store.usage` can group the ledger by (`day`: the UTC date, "YYYY-MM-DD").
USAGE_GROUPS: tuple[str, ...] = (
    "key", "user", "team", "model", "upstream_model", "provider", "outcome", "day",
)  # fmt: skip

# The ledger's columns (table `requests`), in table order; `LedgerEntry` has one field each.
LEDGER_COLUMNS: tuple[str, ...] = (
    "id", "request_id", "created_at", "key_id", "key_name", "user", "team", "model",
    "provider", "upstream_model", "endpoint", "stream", "status", "outcome", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_nano", "latency_ms",
    "ttft_ms", "attempts", "refusal", "error", "max_tokens_clamped", "flags", "session",
    "prompt", "cache", "saved_nano", "rule",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row, every column. `refusal` is the refusal's JSON object (refused
    entries only; stored as text); `flags` the entry's marks (see `base.LEDGER_FLAGS`),
    stored comma-separated or NULL."""

    id: int
    request_id: str
    created_at: float
    key_id: str | None
    key_name: str | None
    user: str | None
    team: str | None
    model: str | None
    provider: str | None
    upstream_model: str | None
    endpoint: str | None
    stream: bool
    status: int
    outcome: str  # ok | error | cancelled | refused | lease_expired
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nano: int
    latency_ms: float | None
    ttft_ms: float | None
    attempts: int
    refusal: dict[str, Any] | None
    error: str | None
    max_tokens_clamped: int | None
    flags: tuple[str, ...]
    session: str | None = None  # hook mode: the agent's session and prompt
    prompt: str | None = None
    cache: str | None = None  # the response cache: hit | miss | None (not cacheable)
    saved_nano: int = 0  # what a hit would have cost upstream
    rule: str | None = None  # the routing rule that matched (docs/routing.md)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who changed what. `before` / `after` are JSON objects (a scope as
    `scope_json` renders it, or the effective settings), None when there was none."""

    id: int
    created_at: float
    actor: str
    action: str  # create | update | pause | resume | revoke | reset-usage | delete | settings
    target: str  # "<kind>:<name>" or "settings"
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """A limit in its current window: settled (`used`) and `reserved` amounts (nano-dollars
    for cost), and when the window resets (Unix seconds)."""

    limit: Limit
    used: int
    reserved: int
    resets_at: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit.max - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The ledger summed over one group (`group` None: entries without that field)."""

    group: str | None
    requests: int
    refused: int
    errors: int  # outcome error or lease_expired
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nano: int
    cache_hits: int = 0  # answered from the response cache (ledger `cache` = hit)
    saved_nano: int = 0  # what those hits would have cost upstream (ledger `saved_nano`)


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals of the entries a query selects. Latencies: nearest-rank percentiles of the
    `ok` entries' latency_ms (None when there are none)."""

    requests: int
    refused: int
    errors: int  # outcome error or lease_expired
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nano: int
    keys: int  # distinct key names
    refusals_by_reason: dict[str, int]  # see `refusal_reason`; most first, then by name
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    cache_hits: int = 0  # as in UsageRow
    saved_nano: int = 0

    @property
    def error_rate(self) -> float:
        """Errors among admitted (not refused) entries."""
        admitted = self.requests - self.refused
        return round(self.errors / admitted, 6) if admitted else 0.0


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """Entries summed over one grain-aligned bucket of time and one group."""

    bucket: int  # floor(created_at / grain) * grain
    group: str | None
    requests: int
    cost_nano: int
    tokens: int  # input + output + cache read + cache write
    refused: int
    errors: int


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """A key's spend since the day's and the month's start, and its last request."""

    today_nano: int = 0
    month_nano: int = 0
    last_used_at: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """The whole ledger's totals, for GET /metrics."""

    requests: dict[str, int]  # by outcome
    cost_nano: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    refusals: dict[str, int]  # by `refusal_reason`
    flagged: dict[str, int]  # entries carrying each flag


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What GET /metrics reads from the store: every scope's limits now (scopes ordered by
    kind then name, limits in the scope's order), the reservations held by every process
    and node, and the ledger's totals when asked for."""

    limits: tuple[tuple[Scope, LimitUsage], ...]
    reservations_held: int
    ledger: LedgerTotals | None


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Ledger and audit entries above a cursor, each oldest first (by id)."""

    entries: tuple[LedgerEntry, ...] = ()
    audit: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard login session (the store keeps only its token's SHA-256)."""

    actor: str
    key_tag: str
    created_at: float
    expires_at: float


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds (`2026-12-04T21:00:00.000Z`)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scope_json(scope: Scope) -> dict[str, Any]:
    """A scope as the admin API shows it, and as the audit log keeps it."""
    extra = scope.extra
    shown = {
        "name": scope.name,
        "id": scope.id,
        "kind": scope.kind.value,
        "prefix": extra.get("prefix"),
        "status": scope.status.value,
        "team": extra.get("team"),
        "user": extra.get("user"),
        "org": extra.get("org"),
        "limits": [limit.to_json() for limit in scope.limits],
        "models": list(scope.models),
        "schedules": [schedule.to_json() for schedule in scope.schedules],
        "timezone": scope.timezone,
        "on_short_budget": "clamp" if scope.clamp else "reject",
        "unbounded_hold_usd": None
        if scope.unbounded_hold_nano is None
        else nano_to_decimal_str(scope.unbounded_hold_nano),
        "fail_open": scope.fail_open,
        "log_bodies": scope.log_bodies,
        "cache": None if scope.cache is None else scope.cache.to_json(),
        "expires_at": iso(scope.expires_at),
        "metadata": extra.get("metadata", {}),
        "created_at": iso(extra.get("created_at")),
        "updated_at": iso(extra.get("updated_at")),
    }
    return shown | _rotation_json(scope) if scope.kind is ScopeKind.KEY else shown


def _rotation_json(key: Scope) -> dict[str, Any]:
    """A key's rotation facts (docs/security.md#key-rotation): never a secret or hash."""
    extra = key.extra
    every = extra.get("rotate_every")
    due = due_at(extra.get("created_at") or 0.0, extra.get("rotated_at"), every)
    return {
        "rotated_at": iso(extra.get("rotated_at")),
        "old_valid_until": iso(extra.get("old_valid_until")),
        "rotate_every": None if every is None else format_duration(every),
        "rotation_due_at": iso(due),
    }


def refusal_reason(code: str | None, metric: str | None, window: str | None) -> str:
    """Why a request was refused, from its refusal's `code`, `limit.metric` and
    `limit.window`: `budget` or `rate_limit` for a limit reached (a short window or a
    concurrency cap is a rate limit, any other a budget), else the code (`paused`,
    `revoked`, `expired`, `model_not_allowed`, `outside_schedule`, ...; `other` if none)."""
    if code != "limit_exceeded":
        return code or "other"
    if metric == "concurrent":
        return "rate_limit"
    try:
        return "rate_limit" if window and is_rate_window(parse_window(window)) else "budget"
    except ValueError:
        return "budget"


def count_reasons(rows: list[tuple[str | None, str | None, str | None, int]]) -> dict[str, int]:
    """(code, metric, window, count) rows of refusals -> counts by `refusal_reason`, most
    first, then by name."""
    counts: dict[str, int] = {}
    for code, metric, window, count in rows:
        reason = refusal_reason(code, metric, window)
        counts[reason] = counts.get(reason, 0) + count
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True, slots=True)
class HookCode:
    """A hook install code (table `hook_codes`), never the code itself: `id` is the first
    8 hex digits of its SHA-256."""

    id: str
    user: str
    created_at: float
    expires_at: float
    used_at: float | None
    machine: str | None  # the key id of the machine that redeemed it
    actor: str
    agents: tuple[str, ...]

    def state(self, now: float) -> str:
        if self.used_at is not None:
            return "used"
        return "expired" if now >= self.expires_at else "open"


@dataclass(frozen=True, slots=True)
class HookMachine:
    """An enrolled machine's changing facts (table `hook_machines`); the rest of it is its
    key scope (name, user, status, metadata.hook)."""

    key_id: str
    last_seen: float | None
    hook_version: str | None
    tampered_at: float | None
    tamper_files: tuple[str, ...]
