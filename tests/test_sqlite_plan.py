"""A reservation planned before its transaction (`store/sqlite_plan.py`) is used only when
it is what the transaction would plan itself, on a real SQLite file:

- a key another process changed between the plan and the transaction is planned again
  (the reload replaced the cached entry), so it is refused when paused;
- a window instance that ended (or, the clock stepping back, had not begun) by the
  transaction's clock: the request counts in the transaction's window, and is refused
  when that one is full;
- a team limit another process lowered, or an admin op of this process in the same
  transaction lowered, before the transaction: checked against the new limit (a reload
  replaces the named scopes, and the plan holds only for those it was made from);
- a schedule that closed, or a key that expired, meanwhile: refused;
- otherwise the plan is used, made once: a rolling limit still counts the earlier
  buckets, a model limit the upstream model, and a request clamped to fit holds, and
  leaves in its row, the clamped charges (what the lease sweep releases).

Each test moves the store's clock (or the database) between the plan and the
transaction: `between` runs a step just before the reservation's op is submitted.

A settlement is prepared before its transaction too (`sqlite_settlement.prepare`): if
that fails it is still written (prepared inside), or retried.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capgate.core.engine import Amounts, OutputFlex, Refusal
from capgate.core.limits import Limit, Metric, ScopeKind
from capgate.core.money import Usage
from capgate.core.schedules import Schedule
from capgate.core.windows import WindowKind, parse_window
from capgate.keys import key_hash, new_key
from capgate.store import sqlite_queries as q
from capgate.store import sqlite_settlement
from capgate.store.base import Outcome, RequestInfo, Reservation, ScopeFields
from capgate.store.sqlite import SQLiteStore
from capgate.store.sqlite_plan import plan

WORST = Amounts(1, 100, 100, 1_000)
MINUTE = datetime(2026, 12, 7, 17, 0, tzinfo=UTC).timestamp()  # 17:00 UTC


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def to(self, now: float) -> Callable[[], None]:
        """A step that sets the clock to `now`."""

        def step() -> None:
            self.now = now

        return step


def between(store: SQLiteStore, step: Callable[[], None]) -> None:
    """Run `step` once, after the next reservation is planned and before its op is
    submitted to the writer (the transaction)."""
    submit = store._writer.submit

    def late_submit(op: Any, hot: bool = False) -> Any:
        store._writer.submit = submit  # type: ignore[method-assign]
        step()
        return submit(op, hot)

    store._writer.submit = late_submit  # type: ignore[method-assign]


def another_process(store: SQLiteStore, change: Callable[[sqlite3.Connection], Any]) -> None:
    """An admin change another process makes to `store`'s file: `change`, and the
    configuration version moved, in one transaction."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        with conn:
            change(conn)
            conn.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'")
    finally:
        conn.close()


async def open_store(tmp_path: Path, clock: Clock, fields: ScopeFields) -> tuple[SQLiteStore, str]:
    store = SQLiteStore(str(tmp_path / "capgate.db"), clock=clock)
    await store.start()
    key_id, raw = new_key()
    await store.create_scope(ScopeKind.KEY, "k", fields, scope_id=key_id, secret_hash=key_hash(raw))
    return store, key_id


async def reserve(store: SQLiteStore, key_id: str, n: int) -> Reservation | Refusal:
    info = RequestInfo(f"req-{n}", key_id, "m", "p", "m", "chat", False, store._clock())
    return await store.reserve(info, WORST)


def per_minute(n: int) -> ScopeFields:
    return ScopeFields(limits=(Limit(Metric.REQUESTS, WindowKind.MINUTE, n),))


def per_day(n: int) -> ScopeFields:
    return ScopeFields(limits=(Limit(Metric.REQUESTS, WindowKind.DAY, n),))


def test_a_key_another_process_paused_meanwhile_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), per_minute(10))
        try:

            def pause(conn: sqlite3.Connection) -> None:
                conn.execute("UPDATE scopes SET status='paused' WHERE id=?", (key_id,))

            between(store, lambda: another_process(store, pause))
            refused = await reserve(store, key_id, 1)
            assert isinstance(refused, Refusal) and refused.code == "paused"
        finally:
            await store.close()

    asyncio.run(main())


async def open_team_store(tmp_path: Path) -> tuple[SQLiteStore, str]:
    """A key without limits of its own in team "t", which allows 10 requests a day; one
    request already admitted (so the team's limit has a plan cached)."""
    store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), ScopeFields())
    await store.create_scope(ScopeKind.TEAM, "t", per_day(10))
    await store.update_scope(ScopeKind.KEY, "k", ScopeFields(team="t"))
    assert isinstance(await reserve(store, key_id, 1), Reservation)
    return store, key_id


def test_a_team_limit_another_process_lowered_meanwhile_is_checked(tmp_path: Path) -> None:
    """Only the team's row changes, not the key's: the plan, made with the team's old
    limit of 10, must not be used; under the new limit of 1 the request is refused."""

    async def main() -> None:
        store, key_id = await open_team_store(tmp_path)
        try:

            def lower(conn: sqlite3.Connection) -> None:
                conn.row_factory = sqlite3.Row
                (team_id,) = conn.execute("SELECT id FROM scopes WHERE name='t'").fetchone()
                q.update_scope_row(conn, "team", team_id, per_day(1), MINUTE)

            between(store, lambda: another_process(store, lower))
            refused = await reserve(store, key_id, 2)
            assert isinstance(refused, Refusal) and refused.scope_kind == "team", refused
        finally:
            await store.close()

    asyncio.run(main())


def test_a_team_limit_lowered_in_the_same_transaction_is_checked(tmp_path: Path) -> None:
    """This process's admin op, submitted just before the reservation, runs first in the
    same transaction and reloads the cache there: the reservation sees the new limit."""

    async def main() -> None:
        store, key_id = await open_team_store(tmp_path)
        try:
            lowered = asyncio.ensure_future(store.update_scope(ScopeKind.TEAM, "t", per_day(1)))
            await asyncio.sleep(0)  # the admin op is submitted first
            refused = await reserve(store, key_id, 2)
            await lowered
            assert isinstance(refused, Refusal) and refused.scope_kind == "team", refused
        finally:
            await store.close()

    asyncio.run(main())


ROLLING_MINUTE = ScopeFields(limits=(Limit(Metric.REQUESTS, parse_window("rolling-60s"), 1),))


@pytest.mark.parametrize(
    ("planned_at", "decided_at", "counted_in"),
    [
        (MINUTE - 0.5, MINUTE + 2, MINUTE),  # the minute ended meanwhile
        (MINUTE + 2, MINUTE - 0.5, MINUTE - 60),  # the clock stepped back into the last one
    ],
)
def test_a_request_counts_in_the_window_of_its_transaction(
    tmp_path: Path, planned_at: float, decided_at: float, counted_in: float
) -> None:
    async def main() -> None:
        clock = Clock(planned_at)
        store, key_id = await open_store(tmp_path, clock, per_minute(1))
        try:
            between(store, clock.to(decided_at))
            first = await reserve(store, key_id, 1)
            assert isinstance(first, Reservation)
            assert [c.window_start for c in first.charges] == [counted_in]
            # That minute is full now: a request planned in the other one is refused.
            clock.now = planned_at
            between(store, clock.to(decided_at))
            second = await reserve(store, key_id, 2)
            assert isinstance(second, Refusal) and second.code == "limit_exceeded"
        finally:
            await store.close()

    asyncio.run(main())


DAILY = (Limit(Metric.REQUESTS, WindowKind.DAY, 10),)  # no window instance ends at 17:00
UNTIL_FIVE = Schedule.from_json({"model": "*", "days": "daily", "start": "09:00", "end": "17:00"})


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (ScopeFields(limits=DAILY, schedules=(UNTIL_FIVE,)), "outside_schedule"),
        (ScopeFields(limits=DAILY, expires_at=MINUTE), "expired"),
    ],
)
def test_access_that_ends_meanwhile_refuses(tmp_path: Path, fields: ScopeFields, code: str) -> None:
    """Planned at 16:59:59.5, decided at 17:00:00.5: the schedule closed, the key expired."""

    async def main() -> None:
        clock = Clock(MINUTE - 0.5)
        store, key_id = await open_store(tmp_path, clock, fields)
        try:
            assert isinstance(await reserve(store, key_id, 1), Reservation)

            between(store, clock.to(MINUTE + 0.5))
            refused = await reserve(store, key_id, 2)
            assert isinstance(refused, Refusal) and refused.code == code
        finally:
            await store.close()

    asyncio.run(main())


def test_a_plan_holds_only_for_the_configuration_it_was_made_from(tmp_path: Path) -> None:
    """By identity: an equal copy of the key's entry or of the named scopes (what a reload
    that kept unchanged objects, or compared them by equality, would leave) does not do."""

    async def main() -> None:
        store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), per_minute(10))
        try:
            entry, named = store._keys[key_id], store._named
            info = RequestInfo("req-1", key_id, "m", "p", "m", "chat", False, MINUTE)
            made = store._plan(entry, info, WORST, None, (), MINUTE + 10, None)
            assert not isinstance(made, Refusal)
            assert made.holds(entry, named, MINUTE + 11)
            assert not made.holds((entry[0], entry[1]), named, MINUTE + 11)
            assert not made.holds(entry, dict(named), MINUTE + 11)
        finally:
            await store.close()

    asyncio.run(main())


def test_a_plan_that_holds_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned once per request, outside the transaction, when nothing moved."""
    made: list[float] = []

    def counted(*args: Any) -> Any:
        made.append(args[-2])  # `now`
        return plan(*args)

    monkeypatch.setattr("capgate.store.sqlite.plan", counted)

    async def main() -> None:
        clock = Clock(MINUTE + 10)
        store, key_id = await open_store(tmp_path, clock, per_minute(10))
        try:
            between(store, clock.to(MINUTE + 11))  # the same minute: the plan still holds
            assert isinstance(await reserve(store, key_id, 1), Reservation)
            assert made == [MINUTE + 10]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_rolling_limit_counts_earlier_buckets_when_the_plan_holds(tmp_path: Path) -> None:
    """rolling-60s, 1 request: one admitted at 17:00:00.5; another planned at 17:00:05.5
    and decided at 17:00:05.7 (its plan holds: one 1 s bucket) reads the buckets back to a
    minute before, so it is refused."""

    async def main() -> None:
        clock = Clock(MINUTE + 0.5)
        store, key_id = await open_store(tmp_path, clock, ROLLING_MINUTE)
        try:
            assert isinstance(await reserve(store, key_id, 1), Reservation)
            clock.now = MINUTE + 5.5
            between(store, clock.to(MINUTE + 5.7))
            refused = await reserve(store, key_id, 2)
            assert isinstance(refused, Refusal) and refused.code == "limit_exceeded"
        finally:
            await store.close()

    asyncio.run(main())


def test_a_model_limit_counts_the_upstream_model_when_the_plan_holds(tmp_path: Path) -> None:
    """One request a day to models "opus*": a request for the alias "best", sent upstream
    as "opus-4", counts against it (the plan names both models), one sent as "sonnet"
    does not."""

    async def main() -> None:
        clock = Clock(MINUTE + 10)
        fields = ScopeFields(limits=(Limit(Metric.REQUESTS, WindowKind.DAY, 1, "opus*"),))
        store, key_id = await open_store(tmp_path, clock, fields)
        try:

            async def send(n: int, upstream: str) -> Reservation | Refusal:
                info = RequestInfo(f"req-{n}", key_id, "best", "p", upstream, "chat", False, MINUTE)
                between(store, clock.to(MINUTE + 10 + n))  # the same day: the plan holds
                return await store.reserve(info, WORST)

            assert isinstance(await send(1, "opus-4"), Reservation)
            refused = await send(2, "opus-4")
            assert isinstance(refused, Refusal) and refused.code == "limit_exceeded"
            assert isinstance(await send(3, "sonnet"), Reservation)
        finally:
            await store.close()

    asyncio.run(main())


def counter_totals(path: str) -> tuple[int, int]:
    """The reserved and settled sums over every counter of the file."""
    conn = sqlite3.connect(path)
    try:
        reserved, settled = conn.execute(
            "SELECT sum(reserved), sum(settled) FROM counters"
        ).fetchone()
        return reserved, settled
    finally:
        conn.close()


def test_a_clamped_request_holds_and_stores_the_clamped_charges(tmp_path: Path) -> None:
    """150 output tokens a day, max_tokens 100 (may be clamped down to 10): the first
    request is admitted whole, the second clamped to 50. The row stores the 50 it holds, so
    when its process is gone the lease sweep releases exactly what was held."""

    async def main() -> None:
        fields = ScopeFields(limits=(Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 150),))
        store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), fields)
        flex = OutputFlex(100, 10, 1, 100, 0, 0)
        try:
            held = []
            for n in (1, 2):
                info = RequestInfo(f"req-{n}", key_id, "m", "p", "m", "chat", False, MINUTE)
                res = await store.reserve(info, flex.amounts(100), flex)
                assert isinstance(res, Reservation)
                held.append(res)
            whole, clamped = held
            assert whole.max_output is None and clamped.max_output == 50
            assert clamped.worst.output_tokens == 50
            assert [c.amount for c in clamped.charges] == [50]
            await store.flush()
            conn = sqlite3.connect(store.path)
            try:
                charges, info_text = conn.execute(
                    "SELECT charges, info FROM reservations WHERE id='req-2'"
                ).fetchone()
            finally:
                conn.close()
            assert tuple(q.load_charges(charges)) == clamped.charges
            assert q.clamped_of(info_text) == 50
            assert counter_totals(store.path) == (150, 0)
        finally:
            await store.close()
        # Closed without settling: the next process's sweep settles both in full.
        sweeper = SQLiteStore(store.path, clock=Clock(MINUTE + 20))
        await sweeper.start()
        await sweeper.close()
        assert counter_totals(store.path) == (0, 150)

    asyncio.run(main())


@pytest.mark.parametrize("failures", [1, 2], ids=["prepared-inside", "retried"])
def test_a_settlement_whose_preparation_fails_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """`prepare` fails outside the transaction: the op prepares it inside. Should that fail
    too, the write fails and is retried (after 0.2 s), as any failed write."""
    calls = 0

    def flaky(res: Reservation, outcome: Outcome) -> sqlite_settlement.Prepared:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise RuntimeError("prepare failed")
        return prepare(res, outcome)

    prepare = sqlite_settlement.prepare
    monkeypatch.setattr(sqlite_settlement, "prepare", flaky)

    async def main() -> None:
        store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), per_minute(10))
        try:
            res = await reserve(store, key_id, 1)
            assert isinstance(res, Reservation)
            outcome = Outcome(200, "ok", Usage(10, 5), 1_000, 1.0)
            await asyncio.wait_for(store.settle(res, outcome), 5)
            assert calls == failures + 1
            assert counter_totals(store.path) == (0, 1)
        finally:
            await store.close()

    asyncio.run(main())
