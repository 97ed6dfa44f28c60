"""SQL and row mapping for the SQLite store, kept apart from its transaction logic."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from capgate.core.engine import Amounts, Charge, CounterState, Refusal
from capgate.core.limits import Metric, Scope
from capgate.store.base import Outcome, RequestInfo, RequestQuery, ScopeFields
from capgate.store.records import AuditEntry, LedgerEntry, UsageRow
from capgate.store.rows import (
    audit_from_row,
    entry_from_row,
    entry_values,
    lease_expired_values,
    refusal_values,
    scope_from_row,
    scope_sets,
)

SELECT_SCOPES = (
    "SELECT kind, id, name, status, limits, models, team, user, timezone, expires_at, "
    "metadata, secret_hash, prefix, created_at, updated_at, clamp, org, schedules, "
    "unbounded_hold_nano, fail_open, log_bodies, rotated_at, retired_secrets, rotate_every, "
    "cache FROM scopes"
)


def get_scope(conn: sqlite3.Connection, kind: str, name: str) -> Scope | None:
    row = conn.execute(SELECT_SCOPES + " WHERE kind=? AND name=?", (kind, name)).fetchone()
    return None if row is None else scope_from_row(row)


def update_scope_row(
    conn: sqlite3.Connection, kind: str, scope_id: str, fields: ScopeFields, now: float
) -> None:
    sets = scope_sets(fields, now)
    assignments = ", ".join(f"{column}=?" for column in sets)  # column names are ours, not input
    conn.execute(
        f"UPDATE scopes SET {assignments} WHERE kind=? AND id=?",  # noqa: S608
        (*sets.values(), kind, scope_id),
    )


def read_counters(
    conn: sqlite3.Connection, wanted: Sequence[tuple[str, int, int | None]]
) -> dict[tuple[str, int], CounterState]:
    """The counter instances asked for, as (counter, start, read_from): one instance when
    read_from is None, else the sum of the buckets from read_from to start (rolling
    windows). Keyed by (counter, start); absent ones are zero."""
    exact = [(c, start) for c, start, read_from in wanted if read_from is None]
    out: dict[tuple[str, int], CounterState] = {}
    if exact:
        rows = "(?,?)" + ",(?,?)" * (len(exact) - 1)
        params = [value for pair in exact for value in pair]
        cursor = conn.execute(
            "SELECT counter, window_start, settled, reserved FROM counters "  # noqa: S608
            f"WHERE (counter, window_start) IN (VALUES {rows})",
            params,
        )
        out = {(row[0], row[1]): CounterState(row[2], row[3]) for row in cursor}
    for counter, start, read_from in wanted:
        if read_from is not None:
            settled, reserved = conn.execute(
                "SELECT COALESCE(SUM(settled), 0), COALESCE(SUM(reserved), 0) FROM counters "
                "WHERE counter = ? AND window_start BETWEEN ? AND ?",
                (counter, read_from, start),
            ).fetchone()
            out[(counter, start)] = CounterState(settled, reserved)
    return out


def add_to_counters(conn: sqlite3.Connection, deltas: Iterable[tuple[str, int, int, int]]) -> None:
    """Add (reserved, settled) deltas to counter instances, creating them as needed."""
    conn.executemany(
        "INSERT INTO counters (counter, window_start, reserved, settled) VALUES (?,?,?,?) "
        "ON CONFLICT(counter, window_start) DO UPDATE SET "
        "reserved = reserved + excluded.reserved, settled = settled + excluded.settled",
        deltas,
    )


def dump_charges(charges: Iterable[Charge]) -> str:
    # `_value_`: the member's plain attribute; `.value` is a property, several times slower.
    return orjson.dumps(
        [[c.counter, c.window_start, c.metric._value_, c.amount] for c in charges]
    ).decode()


def load_charges(text: str) -> list[Charge]:
    return [Charge(c, int(w), Metric(m), int(a)) for c, w, m, a in orjson.loads(text)]


def dump_info(info: RequestInfo, key: Scope, worst: Amounts, max_output: int | None = None) -> str:
    hook = {} if info.session is None else {"session": info.session, "prompt": info.prompt}
    if info.rule is not None:
        hook["rule"] = info.rule
    return orjson.dumps(
        {
            "request_id": info.request_id,
            "key_id": info.key_id,
            "key_name": key.name,
            "team": key.extra.get("team"),
            "user": key.extra.get("user"),
            "model": info.model,
            "provider": info.provider,
            "upstream_model": info.upstream_model,
            "endpoint": info.endpoint,
            "stream": info.stream,
            "started_at": info.started_at,
            "worst": [
                worst.requests,
                worst.input_tokens,
                worst.output_tokens,
                worst.cost_nano,
                worst.credits,
            ],
            "max_output": max_output,
            **hook,  # hook mode's leases only: gateway reservations stay as they were
        }
    ).decode()


def clamped_of(text: str) -> int | None:
    """The lowered max_tokens a reservation's info records (for its lease_expired entry)."""
    value = orjson.loads(text).get("max_output")
    return None if value is None else int(value)


def load_info(text: str) -> tuple[RequestInfo, str, str | None, str | None, Amounts]:
    d = orjson.loads(text)
    info = RequestInfo(
        d["request_id"], d["key_id"], d["model"], d["provider"], d["upstream_model"],
        d["endpoint"], d["stream"], d["started_at"], None, d.get("session"), d.get("prompt"),
        d.get("rule"),
    )  # fmt: skip
    return info, d["key_name"], d["team"], d["user"], Amounts(*d["worst"])


INSERT_ENTRY = (
    "INSERT INTO requests (request_id, created_at, key_id, key_name, user, team, model, "
    "provider, upstream_model, endpoint, stream, status, outcome, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, cost_nano, latency_ms, ttft_ms, attempts, refusal, "
    "error, max_tokens_clamped, flags, session, prompt, cache, saved_nano, rule) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def insert_entry(
    conn: sqlite3.Connection,
    info: RequestInfo,
    key: Scope,
    outcome: Outcome,
    actual: Amounts,
    now: float,
    max_tokens_clamped: int | None = None,
) -> None:
    conn.execute(INSERT_ENTRY, entry_values(info, key, outcome, actual, max_tokens_clamped))


def insert_refusal(
    conn: sqlite3.Connection, info: RequestInfo, key: Scope | None, refusal: Refusal, now: float
) -> None:
    conn.execute(INSERT_ENTRY, refusal_values(info, key, refusal, now))


def insert_lease_expired(
    conn: sqlite3.Connection,
    info: RequestInfo,
    key_name: str,
    team: str | None,
    user: str | None,
    worst: Amounts,
    now: float,
    max_tokens_clamped: int | None = None,
) -> None:
    values = lease_expired_values(info, key_name, team, user, worst, now, max_tokens_clamped)
    conn.execute(INSERT_ENTRY, values)


_FILTERS = {
    "key": "key_name = ?",
    "team": "team = ?",
    "teams": "team IN ({})",
    "user": "user = ?",
    "model": "model = ?",
    "provider": "provider = ?",
    "status": "status = ?",
    "outcome": "outcome = ?",
    "request_id": "request_id = ?",
    "since": "created_at >= ?",
    "until": "created_at < ?",
    "cursor": "id < ?",
}


def where_clause(query: RequestQuery, names: Iterable[str]) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for name in names:
        value = getattr(query, name)
        if name == "teams" and value is not None:
            clauses.append(_FILTERS[name].format(", ".join("?" * len(value))) if value else "0")
            params.extend(sorted(value))
        elif value is not None:
            clauses.append(_FILTERS[name])
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def select_requests(conn: sqlite3.Connection, query: RequestQuery) -> list[LedgerEntry]:
    where, params = where_clause(query, _FILTERS)
    rows = conn.execute(
        f"SELECT * FROM requests{where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed clauses
        (*params, query.limit),
    )
    return [entry_from_row(row) for row in rows]


GROUPS = {  # records.USAGE_GROUPS, as SQL
    "key": "key_name",
    "user": "user",
    "team": "team",
    "model": "model",
    "upstream_model": "upstream_model",
    "provider": "provider",
    "outcome": "outcome",
    "day": "strftime('%Y-%m-%d', created_at, 'unixepoch')",
}


# What the response cache saved (docs/cache.md): hits, and what they would have cost.
CACHE_SUMS = (
    "COALESCE(SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END), 0) AS cache_hits, "
    "COALESCE(SUM(saved_nano), 0) AS saved_nano"
)


def usage_by(
    conn: sqlite3.Connection, group_by: str, since: float | None, until: float | None
) -> list[UsageRow]:
    column = GROUPS[group_by]
    where, params = where_clause(RequestQuery(since=since, until=until), ("since", "until"))
    rows = conn.execute(
        f"SELECT {column} AS grp, COUNT(*) AS requests, "  # noqa: S608 - column from GROUPS
        "SUM(outcome = 'refused') AS refused, SUM(outcome IN ('error', 'lease_expired')) AS errors, "
        "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, "
        "SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_write_tokens) AS cache_write_tokens, "
        f"SUM(cost_nano) AS cost_nano, {CACHE_SUMS} "
        f"FROM requests{where} GROUP BY grp ORDER BY cost_nano DESC, grp",
        params,
    )
    return [
        UsageRow(
            row["grp"], row["requests"], row["refused"], row["errors"], row["input_tokens"],
            row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["cost_nano"], row["cache_hits"], row["saved_nano"],
        )
        for row in rows
    ]  # fmt: skip


def select_audit(conn: sqlite3.Connection, limit: int) -> list[AuditEntry]:
    rows = conn.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
    return [audit_from_row(row) for row in rows]
