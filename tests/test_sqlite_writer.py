"""The SQLite writer: grouped commits on the event loop, waiting there when the lock is taken.

The budget guarantees rest on it (tests/test_race.py, test_scopes.py, test_leases.py run
it end to end); these pin down its own contract: one transaction per loop turn, results
only after the commit, order kept when a group has to wait for another process's lock,
the loop never blocked by that wait, a failing op undone alone, nothing pending lost on
close.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from capgate.store.sqlite_writer import SQLiteWriter


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Harness:
    def __init__(self, path: Path, settle_delay: float = 0.002) -> None:
        self.path = path
        self.groups = 0  # transactions begun
        self.threads: list[str] = []
        setup = _connect(path)
        setup.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        setup.close()
        self.writer = SQLiteWriter(lambda: _connect(path), self._before, settle_delay=settle_delay)

    def _before(self, conn: sqlite3.Connection, batched: bool) -> None:
        import threading

        self.groups += 1
        self.threads.append(threading.current_thread().name)

    @staticmethod
    def insert(value: int) -> Any:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
            return value

        return op

    def committed(self) -> list[int]:
        conn = _connect(self.path)
        try:
            return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]
        finally:
            conn.close()


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "w.db")


async def _test_one_loop_turn_is_one_transaction_on_the_loop(harness: Harness) -> None:
    harness.writer.start(asyncio.get_running_loop())
    try:
        futures = [harness.writer.submit(harness.insert(i)) for i in range(50)]
        assert await asyncio.gather(*futures) == list(range(50))
        assert harness.groups == 1
        assert harness.threads == ["MainThread"]  # no hand-over to the thread
        assert harness.committed() == list(range(50))  # resolved only once committed
    finally:
        await harness.writer.close()


async def _test_a_settlement_waits_for_the_next_group_but_not_for_long(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db", settle_delay=0.05)
    h.writer.start(asyncio.get_running_loop())
    try:
        settle = h.writer.submit_soon(h.insert(1))
        await asyncio.sleep(0)
        assert h.groups == 0  # waiting to ride along
        reserve = h.writer.submit(h.insert(2))
        await asyncio.gather(settle, reserve)
        assert h.groups == 1  # both in one transaction, in submission order
        assert h.committed() == [1, 2]
        t0 = time.perf_counter()
        await h.writer.submit_soon(h.insert(3))  # alone: committed after the delay
        assert 0.03 < time.perf_counter() - t0 < 2
        assert h.groups == 2
    finally:
        await h.writer.close()


async def _test_a_lock_held_elsewhere_makes_the_group_wait_on_the_loop_in_order(
    harness: Harness,
) -> None:
    loop = asyncio.get_running_loop()
    harness.writer.start(loop)
    other = _connect(harness.path)  # another process's writer, as far as SQLite knows
    other.execute("BEGIN IMMEDIATE")
    try:
        first = harness.writer.submit(harness.insert(1))
        await asyncio.sleep(0)  # the loop turn ends: the group tries, finds the lock taken
        second = harness.writer.submit(harness.insert(2))  # must not overtake the first
        ticks = 0
        for _ in range(10):  # the loop keeps running while the group waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10 and not first.done() and not second.done()
        other.execute("INSERT INTO t (v) VALUES (0)")
        other.execute("COMMIT")
        assert await asyncio.gather(first, second) == [1, 2]
        assert harness.committed() == [0, 1, 2]
        # The groups waited on the loop, never in a thread (a thread would hold the lock
        # while it waits for the GIL).
        await harness.writer.submit(harness.insert(3))
        assert set(harness.threads) == {"MainThread"}
        assert harness.writer.stats.waited == 1 and harness.writer.stats.busy_tries >= 2
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        await harness.writer.close()


async def _test_a_lock_held_past_the_busy_timeout_fails_the_waiting_ops(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    h = Harness(path)

    def connect() -> sqlite3.Connection:
        conn = _connect(path)
        conn.execute("PRAGMA busy_timeout=300")  # how long the writer's ops wait
        return conn

    writer = SQLiteWriter(connect, h._before)
    writer.start(asyncio.get_running_loop())
    other = _connect(path)
    other.execute("BEGIN IMMEDIATE")
    try:
        first = writer.submit(h.insert(1))
        await asyncio.sleep(0.05)
        second = writer.submit(h.insert(2))  # queued behind the first
        assert "waiting" in (writer.problem(stalled_after=0.01) or "")
        started = time.monotonic()
        for fut in (first, second):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await asyncio.wait_for(fut, 5)
        assert 0.1 < time.monotonic() - started < 2
        assert "locked" in (writer.problem() or "")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await writer.submit(h.insert(3)) == 3  # the lock is free again: back to normal
    assert writer.problem() is None
    assert h.committed() == [3]
    await writer.close()


async def _test_a_failing_op_is_undone_alone(harness: Harness) -> None:
    harness.writer.start(asyncio.get_running_loop())

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (v) VALUES (99)")
        raise ValueError("this op fails after writing")

    try:
        good1 = harness.writer.submit(harness.insert(1))
        failing = harness.writer.submit(bad)
        good2 = harness.writer.submit(harness.insert(2))
        assert await good1 == 1 and await good2 == 2
        with pytest.raises(ValueError, match="fails after writing"):
            await failing
        assert harness.committed() == [1, 2]
    finally:
        await harness.writer.close()


async def _test_close_commits_what_is_pending(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db", settle_delay=60)
    h.writer.start(asyncio.get_running_loop())
    pending = h.writer.submit_soon(h.insert(7))
    await h.writer.close()
    assert pending.done() and pending.result() == 7
    assert h.committed() == [7]


async def _test_one_request_at_a_time_commits_its_reservation_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path / "w.db", settle_delay=0.05)
    h.writer.start(asyncio.get_running_loop())
    try:
        await h.writer.submit(h.insert(1), hot=True)  # the first group: a loop turn, as before
        assert h.groups == 1
        # One request at a time: the last group was small, so the next reservation runs
        # in `submit` itself, with the settlement waiting to ride along committed first,
        # and its future is done before anyone awaits it (no loop turn on its path).
        settle = h.writer.submit_soon(h.insert(2))
        reserve = h.writer.submit(h.insert(3), hot=True)
        assert settle.done() and reserve.done() and reserve.result() == 3
        assert h.groups == 2
        assert h.committed() == [1, 2, 3]
        # A cold op (the heartbeat's replay and lease: two ops, one transaction) waits
        # for the end of the turn as before.
        cold = [h.writer.submit(h.insert(v)) for v in (4, 5, 6)]
        assert not any(f.done() for f in cold)
        await asyncio.gather(*cold)
        assert h.groups == 3
        # Under load (the last group was large) hot ops group again at the end of the turn.
        hot = [h.writer.submit(h.insert(v), hot=True) for v in (7, 8, 9)]
        assert not any(f.done() for f in hot)
        assert await asyncio.gather(*hot) == [7, 8, 9]
        assert h.groups == 4
        assert h.committed() == list(range(1, 10))
        # Quiet again (two ops: a settlement and a reservation), then a burst of requests
        # in one loop turn: the first runs at once, the rest group at the end of the turn
        # (not one transaction each).
        await asyncio.gather(h.writer.submit_soon(h.insert(10)), h.writer.submit(h.insert(11)))
        await asyncio.sleep(0)  # a new loop turn
        groups = h.groups
        burst = [h.writer.submit(h.insert(v), hot=True) for v in range(12, 20)]
        assert burst[0].done() and not any(f.done() for f in burst[1:])
        assert await asyncio.gather(*burst) == list(range(12, 20))
        assert h.groups == groups + 2
        assert h.committed() == list(range(1, 20))
    finally:
        await h.writer.close()


class _Interrupt(BaseException):
    """Not an op's failure (as KeyboardInterrupt or SystemExit are not)."""


async def _test_an_interrupt_in_a_group_leaves_no_op_waiting(harness: Harness) -> None:
    harness.writer.start(asyncio.get_running_loop())

    def interrupted(conn: sqlite3.Connection) -> None:
        raise _Interrupt

    try:
        # Committed at once in `submit` (one request at a time): the interrupt reaches
        # the caller, and the settlement that rode along learns it too.
        await harness.writer.submit(harness.insert(1), hot=True)
        await harness.writer.submit(harness.insert(2), hot=True)  # the last group was small
        await asyncio.sleep(0)
        riding = harness.writer.submit_soon(harness.insert(3))
        with pytest.raises(_Interrupt):
            harness.writer.submit(interrupted, hot=True)
        assert riding.done() and isinstance(riding.exception(), _Interrupt)
        assert harness.committed() == [1, 2]  # nothing of that group committed
        assert await harness.writer.submit(harness.insert(4), hot=True) == 4  # it goes on
    finally:
        await harness.writer.close()


# pytest runs these on a fresh event loop each (no async plugin needed).


def test_an_interrupt_in_a_group_leaves_no_op_waiting(harness: Harness) -> None:
    asyncio.run(_test_an_interrupt_in_a_group_leaves_no_op_waiting(harness))


def test_one_loop_turn_is_one_transaction_on_the_loop(harness: Harness) -> None:
    asyncio.run(_test_one_loop_turn_is_one_transaction_on_the_loop(harness))


def test_a_settlement_waits_for_the_next_group_but_not_for_long(tmp_path: Path) -> None:
    asyncio.run(_test_a_settlement_waits_for_the_next_group_but_not_for_long(tmp_path))


def test_a_lock_held_elsewhere_makes_the_group_wait_on_the_loop_in_order(harness: Harness) -> None:
    asyncio.run(_test_a_lock_held_elsewhere_makes_the_group_wait_on_the_loop_in_order(harness))


def test_a_lock_held_past_the_busy_timeout_fails_the_waiting_ops(tmp_path: Path) -> None:
    asyncio.run(_test_a_lock_held_past_the_busy_timeout_fails_the_waiting_ops(tmp_path))


def test_a_failing_op_is_undone_alone(harness: Harness) -> None:
    asyncio.run(_test_a_failing_op_is_undone_alone(harness))


def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    asyncio.run(_test_close_commits_what_is_pending(tmp_path))


def test_one_request_at_a_time_commits_its_reservation_at_once(tmp_path: Path) -> None:
    asyncio.run(_test_one_request_at_a_time_commits_its_reservation_at_once(tmp_path))


def test_the_store_binds_none_through_a_registered_adapter(tmp_path: Path) -> None:
    """Without an adapter for NoneType, sqlite3 searches for one on every None it binds,
    formatting and discarding an AttributeError (~0.3 us each, ~10 per ledger row): the
    store registers one that gives None back, so a None still binds as NULL."""
    from capgate.store.sqlite import SQLiteStore

    conn = SQLiteStore(str(tmp_path / "capgate.db"))._connect()
    try:
        assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
        assert conn.execute("SELECT ? IS NULL", (None,)).fetchone()[0] == 1
    finally:
        conn.close()
