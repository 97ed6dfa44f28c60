"""A reservation planned before its transaction (`store/sqlite_plan.py`) is used only when
it is what the transaction would plan itself, on a real SQLite file:

- a key another process changed between the plan and the transaction is planned again
  (the reload replaced the cached entry), so it is refused when paused;
- a window instance that ended (or, the clock stepping back, had not begun) by the
  transaction's clock: the request counts in the transaction's window, and is refused
  when that one is full;
- a schedule that closed, or a key that expired, meanwhile: refused;
- otherwise the plan is used, made once.

Each test moves the store's clock (or the database) between the plan and the
transaction: `between` runs a step just before the reservation's op is submitted.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Metric, ScopeKind
from capgate.core.schedules import Schedule
from capgate.core.windows import WindowKind
from capgate.keys import key_hash, new_key
from capgate.store.base import RequestInfo, Reservation, ScopeFields
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


def test_a_key_another_process_paused_meanwhile_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store, key_id = await open_store(tmp_path, Clock(MINUTE + 10), per_minute(10))
        try:

            def other_process_pauses() -> None:
                conn = sqlite3.connect(store.path, isolation_level=None)
                with conn:  # an admin change of another process: the row and the version
                    conn.execute("UPDATE scopes SET status='paused' WHERE id=?", (key_id,))
                    conn.execute(
                        "UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k='config_version'"
                    )
                conn.close()

            between(store, other_process_pauses)
            refused = await reserve(store, key_id, 1)
            assert isinstance(refused, Refusal) and refused.code == "paused"
        finally:
            await store.close()

    asyncio.run(main())


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
