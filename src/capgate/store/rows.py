"""Row -> record mapping shared by both engines: a `sqlite3.Row` and an `asyncpg.Record`
both index by column name, and the columns are the same in every engine. The SQL stays
per engine (sqlite_queries.py, pg_queries.py); the `*_values` functions give a ledger
entry's values in the order both engines' INSERT INTO requests lists the columns."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from capgate.core.caching import CacheSetting
from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Scope, ScopeKind, Status
from capgate.core.schedules import Schedule
from capgate.errors import InvalidRequest, refusal_status
from capgate.rotation import load_retired
from capgate.store.base import Outcome, RequestInfo, ScopeFields
from capgate.store.records import AuditEntry, LedgerEntry


class Row(Protocol):
    """A row read by either engine (`sqlite3.Row`, `asyncpg.Record`): by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def scope_from_row(row: Row) -> Scope:
    return Scope(
        kind=ScopeKind(row["kind"]),
        id=row["id"],
        name=row["name"],
        limits=tuple(Limit.from_json(x) for x in orjson.loads(row["limits"])),
        status=Status(row["status"]),
        timezone=row["timezone"],
        models=tuple(orjson.loads(row["models"])),
        expires_at=row["expires_at"],
        clamp=bool(row["clamp"]),
        unbounded_hold_nano=row["unbounded_hold_nano"],
        fail_open=bool(row["fail_open"]),
        log_bodies=bool(row["log_bodies"]),
        cache=_cache_setting(row["cache"]),
        schedules=tuple(Schedule.from_json(x) for x in orjson.loads(row["schedules"])),
        extra={
            "team": row["team"],
            "user": row["user"],
            "org": row["org"],
            "metadata": orjson.loads(row["metadata"]),
            "prefix": row["prefix"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            **_rotation(row),
        },
    )


def _cache_setting(text: str | None) -> CacheSetting | None:
    return None if text is None else CacheSetting.from_json(orjson.loads(text))


def _rotation(row: Row) -> dict[str, Any]:
    """A key's rotation facts, never a secret or a hash: when it was last rotated, until
    when its newest old secret works, how often it is due."""
    if row["kind"] != ScopeKind.KEY.value:
        return {}
    retired = load_retired(row["retired_secrets"])
    return {
        "rotated_at": row["rotated_at"],
        "old_valid_until": retired[0].valid_until if retired else None,
        "rotate_every": row["rotate_every"],
    }


def scope_sets(fields: ScopeFields, now: float) -> dict[str, Any]:
    """The columns an update of a scope sets, and their values (InvalidRequest when a
    field may not be cleared). Column names are ours, not input."""
    sets: dict[str, Any] = {"updated_at": now}
    if fields.limits is not None:
        sets["limits"] = dumps([limit.to_json() for limit in fields.limits])
    if fields.models is not None:
        sets["models"] = dumps(list(fields.models))
    if fields.metadata is not None:
        sets["metadata"] = dumps(fields.metadata)
    if fields.clamp is not None:
        sets["clamp"] = int(fields.clamp)
    if fields.unbounded_hold_nano is not None:
        sets["unbounded_hold_nano"] = fields.unbounded_hold_nano
    if fields.fail_open is not None:
        sets["fail_open"] = int(fields.fail_open)
    if fields.log_bodies is not None:
        sets["log_bodies"] = int(fields.log_bodies)
    if fields.cache is not None:
        sets["cache"] = dumps(fields.cache.to_json())
    if fields.schedules is not None:
        sets["schedules"] = dumps([schedule.to_json() for schedule in fields.schedules])
    if fields.rotate_every is not None:
        sets["rotate_every"] = fields.rotate_every
    for name in ("team", "user", "org", "timezone", "expires_at"):
        value = getattr(fields, name)
        if value is not None:
            sets[name] = value
    for name in fields.clear:
        if name not in {
            "team", "user", "org", "expires_at", "unbounded_hold_nano", "rotate_every", "cache",
        }:  # fmt: skip
            raise InvalidRequest(f"{name}: cannot be cleared")
        sets[name] = None
    return sets


def entry_from_row(row: Row) -> LedgerEntry:
    refusal, flags = row["refusal"], row["flags"]
    return LedgerEntry(
        id=row["id"],
        request_id=row["request_id"],
        created_at=row["created_at"],
        key_id=row["key_id"],
        key_name=row["key_name"],
        user=row["user"],
        team=row["team"],
        model=row["model"],
        provider=row["provider"],
        upstream_model=row["upstream_model"],
        endpoint=row["endpoint"],
        stream=bool(row["stream"]),
        status=row["status"],
        outcome=row["outcome"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        cost_nano=row["cost_nano"],
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        attempts=row["attempts"],
        refusal=None if refusal is None else orjson.loads(refusal),
        error=row["error"],
        max_tokens_clamped=row["max_tokens_clamped"],
        flags=tuple(flags.split(",")) if flags else (),
        session=row["session"],
        prompt=row["prompt"],
        cache=row["cache"],
        saved_nano=row["saved_nano"],
        rule=row["rule"],
    )


def audit_from_row(row: Row) -> AuditEntry:
    before, after = row["before"], row["after"]
    return AuditEntry(
        id=row["id"],
        created_at=row["created_at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        before=None if before is None else orjson.loads(before),
        after=None if after is None else orjson.loads(after),
    )


def entry_values(
    info: RequestInfo,
    key: Scope,
    outcome: Outcome,
    actual: Amounts,
    max_tokens_clamped: int | None = None,
) -> tuple[Any, ...]:
    """The ledger entry of a settled request."""
    usage = outcome.usage
    if usage is None:
        tokens = (actual.input_tokens, actual.output_tokens, 0, 0)
        error: str | None = outcome.error or "no usage reported: charged the full reservation"
    else:
        cache_write = usage.cache_write_tokens + usage.cache_write_1h_tokens
        tokens = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, cache_write)
        error = outcome.error
    return (
        info.request_id, info.started_at, info.key_id, key.name, key.extra.get("user"),
        key.extra.get("team"), info.model, info.provider,
        outcome.upstream_model or info.upstream_model, info.endpoint, int(info.stream),
        outcome.status, outcome.outcome, *tokens, actual.cost_nano, outcome.latency_ms,
        outcome.ttft_ms, outcome.attempts, None, error, max_tokens_clamped,
        ",".join(outcome.flags) or None, info.session, info.prompt, outcome.cache,
        outcome.saved_nano, info.rule,
    )  # fmt: skip


def refusal_values(
    info: RequestInfo, key: Scope | None, refusal: Refusal, now: float
) -> tuple[Any, ...]:
    """The ledger entry of a refused request."""
    status = info.refusal_status or refusal_status(refusal)
    return (
        info.request_id, info.started_at, info.key_id, key.name if key else None,
        key.extra.get("user") if key else None, key.extra.get("team") if key else None,
        info.model, info.provider, info.upstream_model, info.endpoint, int(info.stream),
        status, "refused", 0, 0, 0, 0, 0, (now - info.started_at) * 1000, None, 0,
        dumps(refusal.to_json()), None, None, None, info.session, info.prompt, None, 0,
        info.rule,
    )  # fmt: skip


def lease_expired_values(
    info: RequestInfo,
    key_name: str,
    team: str | None,
    user: str | None,
    worst: Amounts,
    now: float,
    max_tokens_clamped: int | None = None,
) -> tuple[Any, ...]:
    """The `lease_expired` entry of a swept reservation: charged its worst case."""
    return (
        info.request_id, info.started_at, info.key_id, key_name, user, team, info.model,
        info.provider, info.upstream_model, info.endpoint, int(info.stream), 0,
        "lease_expired", worst.input_tokens, worst.output_tokens, 0, 0, worst.cost_nano,
        (now - info.started_at) * 1000, None, 1, None,
        "the serving process stopped before the request settled: charged in full",
        max_tokens_clamped, None, info.session, info.prompt, None, 0, info.rule,
    )  # fmt: skip
