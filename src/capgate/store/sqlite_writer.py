"""The process's one SQLite writer: submitted operations committed in groups.

Every write of the process is a small function `op(conn)` submitted here. Whatever was
submitted during one turn of the event loop runs as one group inside one `BEGIN
IMMEDIATE` transaction, which commits once; only then are the waiting futures resolved,
so a caller never sees a result that is not durable. Grouping turns N commits into one
under load, and `BEGIN IMMEDIATE` holds SQLite's single write lock for the whole group,
so ops are atomic across processes sharing the file too.

Where a group runs (measured in docs/performance.md): **on the event loop**, always. The
group runs at the end of the loop turn that submitted it, with the lock taken *without
waiting* (`busy_timeout=0`). When another process holds the lock, the group waits on the
loop, not in a thread: it tries again at the next loop turn, then every ~1 ms (up to the
connection's busy timeout), and later groups queue behind it, so commits keep their
submission order (a `flush()` never overtakes an earlier write) and the next try carries
them all. Not a thread: a thread holds SQLite's lock while it waits for the GIL between
statements (the event loop keeps it up to 5 ms at a time), so with two busy processes on
one file each transaction on a thread held the lock ~3x longer and the other process
queued behind it (measured: docs/performance.md, "Several processes"). SQLite's own busy
handler sleeps 1, 2, 5, ... up to 100 ms between tries and keeps losing the race against a
process that commits every millisecond.

Hot ops (reservations, settlements) change counters through the store's counter cache
(`sqlite_counters.py`): read once per transaction, written once at its commit.

At one request at a time that turn is a cost on every request's path: the reservation
waits for the loop to come round to the group, then its task for the loop to come round
to it again (two loop turns, ~20-40 us here). So a hot op submitted while the last group
was small (`_QUIET_GROUP` ops or fewer: one request at a time) runs at once, with whatever
is pending (the settlements waiting to ride along, first), and its future is done before
its caller awaits it. One op a loop turn at most: the others of a burst group at the end of
the turn, and under load (groups larger than `_QUIET_GROUP`) every hot op does. Only hot
ops: a cold caller may count on its ops of one turn sharing a transaction (the
heartbeat's replay and lease).

Settlements (`submit_soon`) don't start a group of their own at once: they wait up to
`settle_delay` seconds for the next reservation's group to ride along with (at one
request at a time, that halves the transactions per request). The store has written each
one to its journal before submitting it (`journal.py`), so a process that dies then loses
nothing. A `flush()` commits everything pending first.

`stats` counts where the time goes (groups, ops, lock waits, busy retries, time inside
transactions): a few integer additions and clock reads per group, never per op; the
store logs them at `debug` when it closes (`bench/run --scaling` reads them).

`problem()` says when the store cannot be written: the last group failed, or groups have
waited for the lock for more than a second (the readiness probe asks).

An op must leave no partial writes when it raises before writing, or else raise only
before its first write; when one raises, the group is undone and rerun with each op in a
savepoint, so the failing op is undone alone.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

Op = Callable[[sqlite3.Connection], Any]
Group = list[tuple[Op, "asyncio.Future[Any]", bool]]  # (op, its future, hot)
Results = list[tuple["asyncio.Future[Any]", Any, "BaseException | None"]]
_MAX_GROUP = 512
_QUIET_GROUP = 2  # a reservation and the settlement that rode along: one request at a time
SETTLE_DELAY = 0.002  # seconds a settlement waits for a group to ride along with


@dataclass(slots=True)
class WriterStats:
    """Cumulative, for this process's writer. Times in seconds (`time.perf_counter`)."""

    groups: int = 0  # transactions committed
    ops: int = 0  # ops in them
    waited: int = 0  # times ops found the lock held and waited for it
    busy_tries: int = 0  # BEGIN IMMEDIATE refused because the lock was held
    lock_wait_s: float = 0.0  # from a group's first refusal to its commit
    in_transaction_s: float = 0.0  # from BEGIN (lock held) to the end of COMMIT
    commit_s: float = 0.0  # of which the COMMIT statements (the WAL writes)
    # Filled in by the store (sqlite.py): transactions that kept the counters and keys
    # read before (`PRAGMA data_version` unchanged) or read them again, config reloads,
    # and the WAL checkpoints run from the reader thread.
    cache_kept: int = 0
    cache_reread: int = 0
    config_reloads: int = 0
    checkpoints: int = 0
    checkpoint_s: float = 0.0

    def line(self) -> str:
        ops = self.ops or 1
        return (
            f"groups={self.groups} ops={self.ops} ops_per_group={self.ops / (self.groups or 1):.1f} "
            f"waited={self.waited} busy_tries={self.busy_tries} "
            f"lock_wait_us_per_op={self.lock_wait_s / ops * 1e6:.1f} "
            f"transaction_us_per_op={self.in_transaction_s / ops * 1e6:.1f} "
            f"commit_us_per_op={self.commit_s / ops * 1e6:.1f} "
            f"cache_kept={self.cache_kept} cache_reread={self.cache_reread} "
            f"config_reloads={self.config_reloads} checkpoints={self.checkpoints} "
            f"checkpoint_ms={self.checkpoint_s * 1e3:.0f}"
        )


class WriterClosed(RuntimeError):
    pass


class _Busy(Exception):
    """The write lock is held by another connection: the group waits and tries again."""


class SQLiteWriter:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        before_group: Callable[[sqlite3.Connection, bool], None],
        after_rollback: Callable[[], None] = lambda: None,
        settle_delay: float = SETTLE_DELAY,
        before_cold_op: Callable[[sqlite3.Connection], None] = lambda conn: None,
        before_commit: Callable[[sqlite3.Connection], None] = lambda conn: None,
    ) -> None:
        self._connect = connect
        # First in every transaction, told whether the group runs without savepoints.
        self._before_group = before_group
        self._after_rollback = after_rollback  # in-memory state may reflect undone writes
        self._before_cold_op = before_cold_op  # before each op not submitted as hot
        self._before_commit = before_commit
        self._settle_delay = settle_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._timeout_ms = 0  # how long ops wait for the lock before they fail
        self._closed = False
        self._pending: Group = []
        self._flush_now: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        # Ops that found the lock held, in submission order, waiting for it.
        self._waiting: Group = []
        self._waiting_since: float | None = None  # time.monotonic() of the first refusal
        self._waited_from = 0.0  # the same, by time.perf_counter(), for `stats`
        self._tries = 0  # refusals in the current wait
        self._retry: asyncio.Handle | None = None
        self._drained = asyncio.Event()  # no op waiting for the lock
        self._drained.set()
        self._last_error: str | None = None  # why the last group failed; None: it committed
        # The last group had at most _QUIET_GROUP ops: a hot op runs at once (see `submit`).
        self._quiet = False
        self._running = False  # inside a group (an op that submits waits for the next)
        # A hot op ran in `submit` this loop turn (or a group is running): the next waits.
        self._sync_turn = False
        self.stats = WriterStats()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._conn = self._connect()
        self._timeout_ms = self._conn.execute("PRAGMA busy_timeout").fetchone()[0]
        self._conn.execute("PRAGMA busy_timeout=0")  # never wait inside SQLite: see above

    # -- submitting ----------------------------------------------------------------------

    def submit(self, op: Op, hot: bool = False) -> asyncio.Future[Any]:
        """Run `op` in the group committed at the end of this loop turn. A hot op (the
        request path's) promises to touch counters only through the store's counter
        cache; any other op gets `before_cold_op` first."""
        fut = self._add(op, hot)
        if (
            hot
            and self._quiet
            and not self._sync_turn
            and not self._running
            and self._flush_now is None
        ):
            # Alone: committed now, `fut` done before its caller awaits it. Once per loop
            # turn: a burst of requests in one turn groups at its end, as under load.
            self._sync_turn = True
            assert self._loop is not None
            self._loop.call_soon(self._end_sync_turn)
            self._flush()
        elif self._flush_now is None:
            assert self._loop is not None
            self._flush_now = self._loop.call_soon(self._flush)
        return fut

    def _end_sync_turn(self) -> None:
        self._sync_turn = False

    def submit_soon(self, op: Op) -> asyncio.Future[Any]:
        """Like `submit`, but the op may wait `settle_delay` for the next group. Order
        with `submit` is kept."""
        fut = self._add(op, True)
        if self._flush_now is None and self._flush_later is None:
            assert self._loop is not None
            self._flush_later = self._loop.call_later(self._settle_delay, self._flush)
        return fut

    def _add(self, op: Op, hot: bool) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise WriterClosed("the store is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((op, fut, hot))
        return fut

    def _flush(self) -> None:
        if self._flush_now is not None:
            self._flush_now.cancel()
            self._flush_now = None
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        group, self._pending = self._pending, []
        if self._waiting:  # keep the order: behind the ops already waiting for the lock
            self._waiting += group
            return
        self._commit_all(group)

    def _commit_all(self, ops: Group) -> None:
        """Commit `ops` in groups of at most _MAX_GROUP; from the first that finds the lock
        held, the rest wait for it."""
        assert self._conn is not None
        while ops:
            part = ops[:_MAX_GROUP]
            try:
                results = self._commit_group(self._conn, part)
            except _Busy as exc:
                self._wait(ops, exc)
                return
            except BaseException as exc:
                # Not an op's own failure (those are results): a KeyboardInterrupt, a
                # SystemExit. Nothing was committed; every op waiting learns it, none
                # waits forever, and it goes on up.
                _resolve_all([(fut, None, exc) for _, fut, _ in ops])
                raise
            ops = ops[_MAX_GROUP:]
            if self._waiting_since is not None:  # progress: a later refusal is a new wait
                self._waited()
            _resolve_all(results)

    def _wait(self, ops: Group, busy: _Busy) -> None:
        """`ops` try again at the next loop turn, then every ~1 ms (an asyncio timer's
        resolution), until the busy timeout; then they fail with the busy error."""
        assert self._loop is not None
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since, self._waited_from, self._tries = now, time.perf_counter(), 0
            self._drained.clear()
            self.stats.waited += 1
        elif now - self._waiting_since >= self._timeout_ms / 1000:
            error: BaseException = busy.__cause__ or busy
            log.error("store transaction failed: %s", error)
            self._last_error = str(error) or type(error).__name__
            self._waited()
            _resolve_all([(fut, None, error) for _, fut, _ in ops])
            return
        self._waiting = ops
        self._tries += 1
        if self._tries == 1:
            self._retry = self._loop.call_soon(self._try_again)
        else:
            self._retry = self._loop.call_later(0.001, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        ops, self._waiting = self._waiting, []
        self._commit_all(ops)

    def _waited(self) -> None:
        self.stats.lock_wait_s += time.perf_counter() - self._waited_from
        self._waiting_since = None
        self._drained.set()

    def problem(self, stalled_after: float = 1.0) -> str | None:
        """Why writes cannot be made now, or None."""
        since = self._waiting_since
        if since is not None and time.monotonic() - since > stalled_after:
            return f"waiting {time.monotonic() - since:.1f} s for the database's write lock"
        return self._last_error

    async def close(self) -> None:
        if self._conn is None or self._closed:
            return
        self._flush()
        self._closed = True
        await self._drained.wait()  # bounded by the busy timeout
        self._conn.close()

    # -- running a group -----------------------------------------------------------------

    def _commit_group(self, conn: sqlite3.Connection, group: Group) -> Results:
        """Commit `group`; every op's result or exception. Raises _Busy when the lock is
        taken, with nothing committed."""
        try:
            try:
                results = self._run_group(conn, group, isolate=False)
            except _OpFailed:
                # Some op raised: undo the whole group and run it again with each op in a
                # savepoint, so the failing one is undone alone. Savepoints cost four
                # statements per request, so the common path does without them.
                results = self._run_group(conn, group, isolate=True)
        except _Busy:
            raise
        except Exception as exc:  # noqa: BLE001 - disk I/O, a bug: nothing committed, every waiter learns why
            error: BaseException = exc
        else:
            self._last_error = None
            return results
        log.error("store transaction failed: %s", error)
        self._last_error = str(error) or type(error).__name__
        return [(fut, None, error) for _, fut, _ in group]

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE at once, or _Busy."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            self.stats.busy_tries += 1
            raise _Busy from exc

    def _run_group(self, conn: sqlite3.Connection, group: Group, isolate: bool) -> Results:
        results: Results = []
        self._begin(conn)
        began = time.perf_counter()
        self._running = True
        try:
            self._before_group(conn, not isolate)
            for op, fut, hot in group:
                if not hot:
                    self._before_cold_op(conn)
                if not isolate:
                    try:
                        results.append((fut, op(conn), None))
                    except sqlite3.OperationalError as exc:
                        if _is_busy(exc):
                            raise  # not the op's fault: the whole group waits
                        raise _OpFailed from exc
                    except Exception as exc:
                        raise _OpFailed from exc
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:  # noqa: BLE001 - the op's own failure: undo just that op
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((fut, None, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((fut, value, None))
            self._before_commit(conn)
            committing = time.perf_counter()
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._after_rollback()
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise _Busy from exc  # rolled back: it waits and runs again
            raise
        finally:
            self._running = False
        self._quiet = len(group) <= _QUIET_GROUP
        stats, done = self.stats, time.perf_counter()
        stats.groups += 1
        stats.ops += len(group)
        stats.in_transaction_s += done - began
        stats.commit_s += done - committing
        return results


class _OpFailed(Exception):
    pass


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _resolve_all(results: Results) -> None:
    for fut, value, exc in results:
        if fut.done():  # the waiter was cancelled; the write happened regardless
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class SQLitePart:
    """What `SQLiteStore` gives the parts mixed into it (scope admin, dashboard): its
    clock, and its ops run by the writer (in a write transaction) or the reader thread."""

    _clock: Callable[[], float]

    async def _write(self, op: Callable[[sqlite3.Connection], T], hot: bool = False) -> T:
        raise NotImplementedError

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    def _load(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError
