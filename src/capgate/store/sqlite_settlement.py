"""Settling reservations in SQLite: the request's own settlement, a late one, the sweep.

Exactly once rests on one fact: settling deletes the reservation row in the same
transaction that writes the ledger entry. So "row gone" means "already settled" - by this
settlement before (a journal replayed twice), or by a sweep that took the owner for dead.
In the second case the ledger holds a `lease_expired` entry charged the worst case; a
settlement that arrives after it (a process that was only stalled, a journal replayed
after the sweep) corrects that entry to the real usage and moves the counters by the
difference, flagged `late_settlement`. The corrected entry is no longer `lease_expired`,
so a second late settlement finds nothing to correct.

A request admitted fail-open (the store could not be reached; the key allows it) never
had a row: its settlement is known done by its ledger entry (by request id) instead. The
model calls a hook machine reports (hook mode) take the same path, flagged `hook_report`.
A hook's prompt lease (id `hp-...`) is not swept with its process: the server's lease
expiry settles it (`HookStore.settle_lease`), from any process.

What a settlement writes depends on the reservation and the outcome alone (`prepare`: the
amounts, the counter deltas, the ledger row, whose `created_at` is the request's start),
so the store works it out before the transaction; inside it only the row is deleted, the
counters moved and the entry inserted. A late settlement works out its own (rare).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from capgate.core.engine import Amounts, CounterDelta, plan_settle
from capgate.core.limits import Scope, ScopeKind
from capgate.core.money import Usage
from capgate.store import sqlite_queries as q
from capgate.store.base import UNHELD_FLAGS, Outcome, RequestInfo, Reservation
from capgate.store.liveness import forget, is_alive
from capgate.store.rows import entry_values

log = logging.getLogger(__name__)

AddCounters = Callable[[sqlite3.Connection, Iterable[tuple[str, int, int, int]]], None]

SETTLED, LATE, ALREADY = "settled", "late", "already"


class Prepared(NamedTuple):
    """What settling `res` with `outcome` writes, worked out before the transaction (pure:
    from the reservation and the outcome alone), so the write lock is not held for it."""

    actual: Amounts  # what the request counts
    deltas: list[CounterDelta]  # (counter, start, reserved, settled): release and count
    entry: tuple[Any, ...]  # the ledger row's values


def prepare(res: Reservation, outcome: Outcome) -> Prepared:
    if outcome.usage is None:  # no usage reported: charge the whole reservation
        actual = res.worst
    else:
        actual = Amounts.of_usage(
            outcome.usage, outcome.cost_nano, res.worst.credits, outcome.requests
        )
    deltas = plan_settle(res.charges, actual)  # a fail-open one's charges hold 0: usage only
    if res.fail_open:
        entry = entry_values(res.info, res.key, fail_open_outcome(outcome), actual)
    else:
        entry = entry_values(res.info, res.key, outcome, actual, res.max_output)
    return Prepared(actual, deltas, entry)


def settle(
    conn: sqlite3.Connection,
    add: AddCounters,
    res: Reservation,
    outcome: Outcome,
    now: float,
    prepared: Prepared | None = None,  # `prepare(res, outcome)`, when worked out before
) -> str:
    """Settle `res` with `outcome`: SETTLED, LATE (reconciled a lease_expired entry), or
    ALREADY (nothing to do)."""
    done = prepare(res, outcome) if prepared is None else prepared
    if res.fail_open:
        return _unreserved(conn, add, res, done)
    if conn.execute("DELETE FROM reservations WHERE id=?", (res.id,)).rowcount == 0:
        return _late(conn, add, res, outcome, done.actual, now)
    add(conn, done.deltas)
    conn.execute(q.INSERT_ENTRY, done.entry)
    return SETTLED


def _late(
    conn: sqlite3.Connection,
    add: AddCounters,
    res: Reservation,
    outcome: Outcome,
    actual: Amounts,
    now: float,
) -> str:
    row = conn.execute(
        "SELECT id FROM requests WHERE request_id=? AND outcome='lease_expired' "
        "ORDER BY id DESC LIMIT 1",
        (res.info.request_id,),
    ).fetchone()
    if row is None:
        return ALREADY
    # The sweep charged the worst case held; move each counter from that to the truth.
    swept = plan_settle(res.charges, res.worst)
    real = plan_settle(res.charges, actual)
    add(
        conn,
        [
            (r.counter, r.window_start, 0, r.settled - s.settled)
            for r, s in zip(real, swept, strict=True)
        ],
    )
    conn.execute("DELETE FROM requests WHERE id=?", (row[0],))
    flags = (*outcome.flags, "late_settlement")
    late = replace(outcome, flags=flags)
    q.insert_entry(conn, res.info, res.key, late, actual, now, res.max_output)
    log.warning("late settlement of %s: its lease_expired entry now has the real usage", res.id)
    return LATE


def _unreserved(
    conn: sqlite3.Connection, add: AddCounters, res: Reservation, done: Prepared
) -> str:
    """A request admitted fail-open: no reservation row ever existed, so its ledger entry
    is what says it was settled (one per request id: it had no refusal entry either)."""
    if conn.execute(
        "SELECT 1 FROM requests WHERE request_id=? LIMIT 1", (res.info.request_id,)
    ).fetchone():
        return ALREADY
    add(conn, done.deltas)
    conn.execute(q.INSERT_ENTRY, done.entry)
    return SETTLED


def settle_by_id(
    conn: sqlite3.Connection, add: AddCounters, res_id: str, outcome: Outcome, now: float
) -> bool:
    """Settle the reservation `res_id` from its stored row (any process may: a hook's
    prompt lease): release its hold, count `outcome` (no usage: zero tokens), write its
    entry. False: the row is gone, settled already."""
    row = conn.execute("SELECT charges, info FROM reservations WHERE id=?", (res_id,)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM reservations WHERE id=?", (res_id,))
    charges = q.load_charges(row["charges"])
    info, key, worst = stored_reservation(row["info"])
    actual = lease_amounts(outcome, worst)
    add(
        conn,
        [(d.counter, d.window_start, d.reserved, d.settled) for d in plan_settle(charges, actual)],
    )
    q.insert_entry(conn, info, key, outcome, actual, now)
    return True


def stored_reservation(info_text: str) -> tuple[RequestInfo, Scope, Amounts]:
    """A reservation row's info: the request, its key (name, user, team) and what it held."""
    info, key_name, team, user, worst = q.load_info(info_text)
    key = Scope(ScopeKind.KEY, info.key_id, key_name, extra={"user": user, "team": team})
    return info, key, worst


def lease_amounts(outcome: Outcome, worst: Amounts) -> Amounts:
    """What a lease settled by id counts: `outcome`'s usage (none: zero) and requests, the
    credits it held."""
    usage = outcome.usage or Usage()
    return Amounts.of_usage(usage, outcome.cost_nano, worst.credits, outcome.requests)


def fail_open_outcome(outcome: Outcome) -> Outcome:
    """`outcome` with the `fail_open` flag, unless it carries another un-held flag
    (`hook_report`: a call a hook reported)."""
    if any(flag in outcome.flags for flag in UNHELD_FLAGS):
        return outcome
    return replace(outcome, flags=(*outcome.flags, "fail_open"))


def sweep(conn: sqlite3.Connection, owner: str, lease: float, now: float, procs: Path) -> int:
    """Renew `owner`'s lease; settle in full the reservations of dead processes: their
    lease expired *and* their liveness lock is free (a process that only could not
    write its heartbeat - the store was stalled - still holds its lock)."""
    conn.execute(
        "INSERT INTO processes (id, heartbeat_at) VALUES (?, ?) "
        "ON CONFLICT(id) DO UPDATE SET heartbeat_at=excluded.heartbeat_at",
        (owner, now),
    )
    alive: dict[str, bool] = {owner: True}

    def living(other: str) -> bool:
        if other not in alive:
            alive[other] = is_alive(procs, other)
        return alive[other]

    expired = conn.execute(
        "SELECT id FROM processes WHERE heartbeat_at < ?", (now - lease,)
    ).fetchall()
    for (other,) in expired:
        if living(other):
            log.warning("process %s has not renewed its lease but is alive: kept", other)
        else:
            conn.execute("DELETE FROM processes WHERE id=?", (other,))
            forget(procs, other)
    orphans = conn.execute(
        "SELECT id, owner, charges, info FROM reservations "
        "WHERE owner NOT IN (SELECT id FROM processes) AND id NOT LIKE 'hp-%'"
    ).fetchall()
    swept = 0
    for row in orphans:
        if living(row["owner"]):
            continue
        charges = q.load_charges(row["charges"])
        info, key_name, team, user, worst = q.load_info(row["info"])
        q.add_to_counters(
            conn,
            [
                (d.counter, d.window_start, d.reserved, d.settled)
                for d in plan_settle(charges, worst)
            ],
        )
        conn.execute("DELETE FROM reservations WHERE id=?", (row["id"],))
        q.insert_lease_expired(
            conn, info, key_name, team, user, worst, now, q.clamped_of(row["info"])
        )
        swept += 1
    if swept:
        log.warning("settled %d reservations of dead processes in full", swept)
    return swept
