"""A reservation's plan: everything it needs that does not need the write lock.

Every microsecond inside a write transaction holds the file's one write lock, and with
several processes on one file the lock's busy time is the ceiling for all of them. So a
reservation works out before it is submitted what depends only on the cached
configuration and the clock: the key's scopes, the access check (status, expiry, models),
the limits that apply and their window instances, the counter instances to read, the
charges if the worst case fits (`engine.plan_charges`) and their row text. Inside the
transaction only the counters are read, the checks made, the row inserted.

The transaction uses a plan only when it is exactly the plan it would make itself
(`Plan.holds`):
- made from the same configuration, by identity: the same cached key entry (the key's
  own status, limits, team) and the same dict of named scopes (its user, team, org,
  provider). A reload (`KeyCache._install`) replaces both and every scope in them, so the
  same objects mean the same key, limits and scopes above it; checking the dict as well
  keeps a change above the key seen even if a reload kept an unchanged key's entry;
- made for an instant the transaction's own clock reading shares with it: inside every
  window instance it names and before any of its scopes expires (`valid_from <= now <
  valid_until`). A scope with a schedule (open hours) makes a plan that holds at no
  instant: its hours are checked in the transaction itself, on its clock.
Otherwise (and for a refusal: it is recorded in the transaction, with its time) the
transaction plans again, exactly as before plans were made outside.

After the commit, the `Reservation` is built from what the transaction decided
(`reservation_of`), with the headroom of the tightest limit: neither needs the lock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from capgate.core.engine import (
    Admission,
    Amounts,
    Applicable,
    CountersFor,
    CounterState,
    OutputFlex,
    Planned,
    Refusal,
    check_access,
    plan_charges,
    tightest,
)
from capgate.core.limits import Scope, ScopeKind
from capgate.store import sqlite_queries as q
from capgate.store.base import RequestInfo, Reservation

KeyEntry = tuple[Scope, bytes]  # the key cache's entry: the key and its secret's hash
Named = dict[tuple[ScopeKind, str], Scope]  # the key cache's users, teams, orgs, providers


@dataclass(slots=True)  # not frozen: made on every request, a frozen one costs 3x more
class Plan:
    entry: KeyEntry  # the cached entry it was made from
    named: Named  # the cached named scopes it was made from (the configuration's identity)
    valid_from: float  # the instants it holds for: [valid_from, valid_until)
    valid_until: float
    applicable: tuple[Applicable, ...]
    wanted: list[tuple[str, int, int | None]]  # the counter instances to read
    clamp: OutputFlex | None  # `flex` when every scope allows clamping
    planned: Planned  # the worst case's checks and charges
    charges_text: str  # the planned charges as the reservation row stores them
    adds: list[tuple[str, int, int, int]]  # the planned charges as counter deltas
    row_info: str | None = None  # the row's info when unclamped (made outside only)

    def holds(self, entry: KeyEntry | None, named: Named, now: float) -> bool:
        """Whether the transaction, with the cache's `entry` and `named` and its clock at
        `now`, would make this plan itself."""
        return (
            entry is self.entry
            and named is self.named
            and self.valid_from <= now < self.valid_until
        )


def plan(
    entry: KeyEntry,
    named: Named,
    scopes: Sequence[Scope],
    models: Sequence[str],
    worst: Amounts,
    flex: OutputFlex | None,
    counters_for: CountersFor,
    now: float,
    row_info: str | None = None,
) -> Plan | Refusal:
    """The plan of reserving `worst` for a request of `entry`'s key counted against
    `scopes` (the key first, the others from `named`), at `now`; or why it is refused at
    `now`."""
    refusal = check_access(scopes, models, now)
    if refusal is not None:
        return refusal
    applicable, valid_from, valid_until = counters_for.spanning(scopes, models, now)
    clamp = flex  # only if every scope allows clamping
    for scope in scopes:
        if not scope.clamp:
            clamp = None
        if scope.schedules:
            valid_until = -math.inf  # open hours: checked by the transaction, on its clock
        elif scope.expires_at is not None and scope.expires_at < valid_until:
            valid_until = scope.expires_at
    planned = plan_charges(applicable, worst)
    charges = planned[1]
    return Plan(
        entry,
        named,
        valid_from,
        valid_until,
        applicable,
        [(a.counter, a.window.start, a.window.read_from) for a in applicable],
        clamp,
        planned,
        q.dump_charges(charges),
        [(c.counter, c.window_start, c.amount, 0) for c in charges],
        row_info,
    )


# An admission as the transaction leaves it: the decision, what it holds, the key, the
# limits and the counter states it was decided on.
Admitted = tuple[
    Admission, Amounts, Scope, tuple[Applicable, ...], dict[tuple[str, int], CounterState]
]


def reservation_of(info: RequestInfo, result: Admitted | Refusal) -> Reservation | Refusal:
    """The op's answer for its caller, built after the commit."""
    if isinstance(result, Refusal):
        return result
    decision, held, key, applicable, states = result
    return Reservation(
        info.request_id, info, decision.charges, held, key, decision.max_output,
        tightest(applicable, states),
    )  # fmt: skip
