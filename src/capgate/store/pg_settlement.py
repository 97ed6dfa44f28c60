"""Settling reservations in PostgreSQL: the request's own settlement, a late one, the sweep
of dead nodes' reservations. The same rules as `sqlite_settlement` (read its docstring):
settling deletes the reservation row in the transaction that writes the ledger entry, so
"row gone" means "already settled", by this settlement before or by a sweep; a settlement
that finds its row swept reconciles the `lease_expired` entry to the real usage, flagged
`late_settlement`.

The ledger rows are built here as dicts with the `requests` columns (the same values
`sqlite_queries.insert_entry` / `insert_refusal` / `insert_lease_expired` write) and
inserted as one jsonb parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import asyncpg
import orjson

from capgate.core.engine import Amounts, CounterDelta, Refusal, plan_settle
from capgate.core.limits import Scope
from capgate.store import sqlite_queries as q
from capgate.store.base import Outcome, RequestInfo, Reservation
from capgate.store.pg_batch import SettleItem
from capgate.store.rows import entry_values, lease_expired_values, refusal_values
from capgate.store.sqlite_settlement import fail_open_outcome

log = logging.getLogger(__name__)

SETTLED, LATE, ALREADY = "settled", "late", "already"

_COLUMNS = (
    'request_id, created_at, key_id, key_name, "user", team, model, provider, '
    "upstream_model, endpoint, stream, status, outcome, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, cost_nano, latency_ms, ttft_ms, attempts, "
    "refusal, error, max_tokens_clamped, flags, session, prompt, cache, saved_nano, rule"
)
INSERT_ENTRY = (
    f"INSERT INTO requests ({_COLUMNS}) SELECT {_COLUMNS} "  # noqa: S608 - fixed columns
    "FROM jsonb_populate_record(NULL::requests, $1::jsonb)"
)
_NAMES = tuple(name.strip().strip('"') for name in _COLUMNS.split(","))


def _row(*values: Any) -> str:
    return orjson.dumps(dict(zip(_NAMES, values, strict=True))).decode()


def entry_row(
    info: RequestInfo,
    key: Scope,
    outcome: Outcome,
    actual: Amounts,
    max_tokens_clamped: int | None = None,
) -> str:
    """The ledger entry of a settled request (as `sqlite_queries.insert_entry`)."""
    return _row(*entry_values(info, key, outcome, actual, max_tokens_clamped))


def refusal_row(info: RequestInfo, key: Scope | None, refusal: Refusal, now: float) -> str:
    """The ledger entry of a refused request (as `sqlite_queries.insert_refusal`)."""
    return _row(*refusal_values(info, key, refusal, now))


def lease_expired_row(info_text: str, now: float) -> tuple[str, Amounts]:
    """The `lease_expired` entry of a swept reservation, from its stored info (as
    `sqlite_queries.insert_lease_expired`), and the worst case it charges."""
    info, key_name, team, user, worst = q.load_info(info_text)
    values = lease_expired_values(info, key_name, team, user, worst, now, q.clamped_of(info_text))
    row = _row(*values)
    return row, worst


def delta_arrays(
    deltas: Iterable[CounterDelta],
) -> tuple[list[str], list[int], list[int], list[int]]:
    """(counter, window_start, reserved, settled) deltas as the functions take them."""
    out: tuple[list[str], list[int], list[int], list[int]] = ([], [], [], [])
    for d in deltas:
        out[0].append(d.counter)
        out[1].append(d.window_start)
        out[2].append(d.reserved)
        out[3].append(d.settled)
    return out


_SETTLE = "SELECT status, charges FROM capgate_settle($1, $2, $3, $4, $5, $6, $7)"
ADD_COUNTERS = "SELECT capgate_add_counters($1, $2, $3, $4)"


def actual_of(res: Reservation, outcome: Outcome) -> Amounts:
    if outcome.usage is None:  # no usage reported: charge the whole reservation
        return res.worst
    return Amounts.of_usage(outcome.usage, outcome.cost_nano, res.worst.credits, outcome.requests)


def settle_item(res: Reservation, outcome: Outcome) -> SettleItem:
    """`res` settled with `outcome`, for the node's batcher (pg_batch)."""
    actual = actual_of(res, outcome)
    return SettleItem(
        res.id,
        q.dump_charges(res.charges),
        delta_arrays(plan_settle(res.charges, actual)),
        entry_row(res.info, res.key, outcome, actual, res.max_output),
    )


async def settle(conn: asyncpg.Connection, res: Reservation, outcome: Outcome, now: float) -> str:
    """Settle `res` with `outcome` in one transaction: SETTLED, LATE or ALREADY."""
    actual = actual_of(res, outcome)
    if res.fail_open:
        return await _unreserved(conn, res, outcome, actual, now)
    entry = entry_row(res.info, res.key, outcome, actual, res.max_output)
    charges = q.dump_charges(res.charges)
    deltas = delta_arrays(plan_settle(res.charges, actual))
    for _ in range(3):
        status, held = await _one(conn, _SETTLE, res.id, charges, *deltas, entry)
        if status == "settled":
            return SETTLED
        if status == "gone":
            return await _late(conn, res, outcome, actual, now)
        # 'moved': the row holds other charges (a rereserve committed whose answer was
        # lost): release those instead.
        charges = held
        deltas = delta_arrays(plan_settle(q.load_charges(held), actual))
    raise RuntimeError(f"reservation {res.id} keeps changing under its settlement")


async def release(conn: asyncpg.Connection, res_id: str, charges_text: str) -> bool:
    """Give up a reservation whose request was never sent (its reserve's answer was lost):
    release what it holds, write no ledger entry. Whether it was there."""
    deltas = delta_arrays(plan_settle(q.load_charges(charges_text), Amounts()))
    status, _ = await _one(conn, _SETTLE, res_id, charges_text, *deltas, None)
    return bool(status == "settled")  # 'moved': another reservation of that id, not ours


async def _one(conn: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record:
    row = await conn.fetchrow(sql, *args)
    if row is None:
        raise asyncpg.InterfaceError("capgate_settle answered no row")
    return row


async def _late(
    conn: asyncpg.Connection, res: Reservation, outcome: Outcome, actual: Amounts, now: float
) -> str:
    async with conn.transaction():
        row_id = await conn.fetchval(
            "SELECT id FROM requests WHERE request_id=$1 AND outcome='lease_expired' "
            "ORDER BY id DESC LIMIT 1 FOR UPDATE",
            res.info.request_id,
        )
        if row_id is None:
            log.info("reservation %s was already settled", res.id)
            return ALREADY
        # The sweep charged the worst case held; move each counter from that to the truth.
        swept = plan_settle(res.charges, res.worst)
        real = plan_settle(res.charges, actual)
        moves = [
            CounterDelta(r.counter, r.window_start, 0, r.settled - s.settled)
            for r, s in zip(real, swept, strict=True)
        ]
        await conn.execute(ADD_COUNTERS, *delta_arrays(moves))
        await conn.execute("DELETE FROM requests WHERE id=$1", row_id)
        flags = (*outcome.flags, "late_settlement")
        late = replace(outcome, flags=flags)
        await conn.execute(INSERT_ENTRY, entry_row(res.info, res.key, late, actual, res.max_output))
    log.warning("late settlement of %s: its lease_expired entry now has the real usage", res.id)
    return LATE


# Two int4 keys: a space apart from the one-bigint locks (migrations, config, liveness).
_FAIL_OPEN_LOCK = "SELECT pg_advisory_xact_lock(1667330151, hashtext($1))"


async def _unreserved(
    conn: asyncpg.Connection, res: Reservation, outcome: Outcome, actual: Amounts, now: float
) -> str:
    """A request admitted fail-open: no reservation row ever existed, so its ledger entry
    is what says it was settled (one per request id), checked under a lock on that id so
    two nodes replaying it at once write it once."""
    async with conn.transaction():
        await conn.execute(_FAIL_OPEN_LOCK, res.info.request_id)
        if await conn.fetchval(
            "SELECT 1 FROM requests WHERE request_id=$1 LIMIT 1", res.info.request_id
        ):
            return ALREADY
        await conn.execute(ADD_COUNTERS, *delta_arrays(plan_settle(res.charges, actual)))
        entry = entry_row(res.info, res.key, fail_open_outcome(outcome), actual)
        await conn.execute(INSERT_ENTRY, entry)
    return SETTLED


async def sweep(
    conn: asyncpg.Connection, owner: str, lease: float, now: float, lock_key: Any
) -> int:
    """Renew `owner`'s lease; settle in full the reservations of dead nodes: their lease
    expired *and* their liveness lock (`lock_key(owner)`, a session advisory lock each
    node holds on its own connection) can be taken - a node that only could not write its
    heartbeat still holds it. One transaction; returns how many were swept."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO processes (id, heartbeat_at) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            owner,
            now,
        )
        alive: dict[str, bool] = {owner: True}

        async def living(other: str) -> bool:
            if other not in alive:
                # Held until this transaction ends: a node coming back waits for the sweep.
                taken = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, $2)", *lock_key(other)
                )
                alive[other] = not taken
            return alive[other]

        expired = await conn.fetch(
            "SELECT id FROM processes WHERE heartbeat_at < $1 ORDER BY id", now - lease
        )
        for (other,) in expired:
            if await living(other):
                log.warning("node %s has not renewed its lease but is alive: kept", other)
            else:
                await conn.execute("DELETE FROM processes WHERE id=$1", other)
        orphans = await conn.fetch(
            "SELECT id, owner, charges, info FROM reservations "
            "WHERE owner NOT IN (SELECT id FROM processes) AND id NOT LIKE 'hp-%' "
            "ORDER BY id FOR UPDATE"
        )
        dead, entries, deltas = [], [], []
        for row in orphans:
            if await living(row["owner"]):
                continue
            entry, worst = lease_expired_row(row["info"], now)
            deltas += plan_settle(q.load_charges(row["charges"]), worst)
            dead.append(row["id"])
            entries.append(entry)
        swept = len(dead)
        if swept:
            # One call: every counter locked in the one sorted order (see pg_schema).
            await conn.execute(ADD_COUNTERS, *delta_arrays(deltas))
            await conn.execute("DELETE FROM reservations WHERE id = ANY($1)", dead)
            await conn.executemany(INSERT_ENTRY, [(entry,) for entry in entries])
    if swept:
        log.warning("settled %d reservations of dead nodes in full", swept)
    return swept
