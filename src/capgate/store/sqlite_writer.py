"""The process's one SQLite writer: submitted operations committed in groups.

Every write of the process is a small function `op(conn)` submitted here. Whatever was
submitted during one turn of the event loop runs as one group inside one `BEGIN
IMMEDIATE` transaction, which commits once; only then are the waiting futures resolved,
so a caller never sees a result that is not durable. Grouping turns N commits into one
under load, and `BEGIN IMMEDIATE` holds SQLite's single write lock for the whole group,
so ops are atomic across processes sharing the file too.

Where a group runs (measured in docs/performance.md):

- **On the event loop, when the lock is free** (the common case). The group runs at the
  end of the loop turn that submitted it, with the lock taken *without waiting*
  (`busy_timeout=0`): a transaction of a few statements costs less than handing it to a
  thread, which on a busy core means two context switches and a GIL hand-over per group.
- **On the writer thread, when another process holds the lock.** The thread waits for
  it (up to the connection's busy timeout) without blocking the loop, trying again every
  0.1-1 ms: SQLite's own busy handler sleeps 1, 2, 5, ... up to 100 ms between tries, and
  against another process that commits every millisecond it keeps losing the race (two
  processes on one file: p99 of 1.3 s with it). While a group is with the thread, later
  groups follow it there, so commits keep their submission order (a `flush()` never
  overtakes an earlier write).

Hot ops (reservations, settlements) change counters through the store's counter cache
(`sqlite_counters.py`): read once per transaction, written once at its commit.

Settlements (`submit_soon`) don't start a group of their own at once: they wait up to
`settle_delay` seconds for the next reservation's group to ride along with (at one
request at a time, that halves the transactions per request). The store has written each
one to its journal before submitting it (`journal.py`), so a process that dies then loses
nothing. A `flush()` commits everything pending first.

`stats` counts where the time goes (groups, ops, lock waits, busy retries, time inside
transactions): a few integer additions and clock reads per group, never per op; the store
logs them when it closes (docs/performance.md reads them to compare process counts).

`problem()` says when the store cannot be written: the last group failed, or groups have
waited on the thread for the lock for more than a second (the readiness probe asks).

An op must leave no partial writes when it raises before writing, or else raise only
before its first write; when one raises, the group is undone and rerun with each op in a
savepoint, so the failing op is undone alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
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
SETTLE_DELAY = 0.002  # seconds a settlement waits for a group to ride along with


@dataclass(slots=True)
class WriterStats:
    """Cumulative, for this process's writer. Times in seconds (`time.perf_counter`)."""

    groups: int = 0  # transactions committed
    ops: int = 0  # ops in them
    on_thread: int = 0  # groups sent to the thread: another connection held the lock
    busy_tries: int = 0  # BEGIN IMMEDIATE refused because the lock was held
    lock_wait_s: float = 0.0  # the thread's waits for the lock
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
            f"on_thread={self.on_thread} busy_tries={self.busy_tries} "
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
    """The write lock is held by another connection: run the group on the thread."""


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
        self._queue: queue.SimpleQueue[Group | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None  # the loop's or the thread's, never both
        self._timeout_ms = 0  # how long the thread waits for the lock
        self._timeout_now = -1  # the connection's busy_timeout now
        self._closed = False
        self._pending: Group = []
        self._flush_now: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._with_thread = 0  # groups handed to the thread and not yet resolved
        self._thread_since: float | None = None  # when the thread last delivered, if busy
        self._last_error: str | None = None  # why the last group failed; None: it committed
        self.stats = WriterStats()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._conn = self._connect()
        self._timeout_ms = self._conn.execute("PRAGMA busy_timeout").fetchone()[0]
        self._thread = threading.Thread(target=self._run, name="capgate-sqlite-writer", daemon=True)
        self._thread.start()

    # -- submitting ----------------------------------------------------------------------

    def submit(self, op: Op, hot: bool = False) -> asyncio.Future[Any]:
        """Run `op` in the group committed at the end of this loop turn. A hot op (the
        request path's) promises to touch counters only through the store's counter
        cache; any other op gets `before_cold_op` first."""
        fut = self._add(op, hot)
        if self._flush_now is None:
            assert self._loop is not None
            self._flush_now = self._loop.call_soon(self._flush)
        return fut

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
        while group:
            part, group = group[:_MAX_GROUP], group[_MAX_GROUP:]
            if self._with_thread:  # keep the order: follow the groups already there
                self._to_thread(part)
                continue
            assert self._conn is not None
            try:
                results = self._commit_group(self._conn, part, wait=False)
            except _Busy:
                self._to_thread(part)
                continue
            _resolve_all(results)

    def _to_thread(self, group: Group) -> None:
        self.stats.on_thread += 1
        if not self._with_thread:
            self._thread_since = time.monotonic()
        self._with_thread += 1
        self._queue.put(group)

    def _from_thread(self, results: Results) -> None:
        self._with_thread -= 1
        self._thread_since = time.monotonic() if self._with_thread else None
        _resolve_all(results)

    def problem(self, stalled_after: float = 1.0) -> str | None:
        """Why writes cannot be made now, or None."""
        since = self._thread_since
        if since is not None and time.monotonic() - since > stalled_after:
            return f"waiting {time.monotonic() - since:.1f} s for the database's write lock"
        return self._last_error

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._flush()
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        if self._conn is not None:
            self._conn.close()

    # -- running a group -----------------------------------------------------------------

    def _run(self) -> None:
        """The thread: groups another process's lock kept from the loop, in order. The
        loop does not touch the connection while any group is here."""
        while True:
            group = self._queue.get()
            if group is None:
                return
            assert self._conn is not None and self._loop is not None
            results = self._commit_group(self._conn, group, wait=True)
            try:
                self._loop.call_soon_threadsafe(self._from_thread, results)
            except RuntimeError:  # the loop is gone (shutdown); the commit stands
                log.warning("store results dropped: event loop closed")

    def _commit_group(self, conn: sqlite3.Connection, group: Group, wait: bool) -> Results:
        """Commit `group`; every op's result or exception. Raises _Busy only when not
        waiting and the lock is taken, before anything ran."""
        try:
            try:
                results = self._run_group(conn, group, isolate=False, wait=wait)
            except _OpFailed:
                # Some op raised: undo the whole group and run it again with each op in a
                # savepoint, so the failing one is undone alone. Savepoints cost four
                # statements per request, so the common path does without them.
                results = self._run_group(conn, group, isolate=True, wait=wait)
        except _Busy as exc:
            if not wait:
                raise
            error: BaseException = exc.__cause__ or exc
        except Exception as exc:  # noqa: BLE001 - lock timeout, disk I/O, a bug: nothing committed, every waiter learns why
            error = exc
        else:
            self._last_error = None
            return results
        log.error("store transaction failed: %s", error)
        self._last_error = str(error) or type(error).__name__
        return [(fut, None, error) for _, fut, _ in group]

    def _begin(self, conn: sqlite3.Connection, wait: bool) -> None:
        """BEGIN IMMEDIATE: at once or _Busy; or, waiting, trying again every 0.1-1 ms
        until the busy timeout (then _Busy)."""
        self._set_timeout(conn, 0)
        deadline, pause, since = 0.0, 0.0001, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if since:
                    self.stats.lock_wait_s += time.perf_counter() - since
                # The statements after it wait as before: on the thread, the busy timeout
                # (COMMIT needs no lock in WAL mode, but a file that is not in WAL might).
                self._set_timeout(conn, self._timeout_ms if wait else 0)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self.stats.busy_tries += 1
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._timeout_ms / 1000
                    since = time.perf_counter()
                if not wait or now >= deadline:
                    if since:
                        self.stats.lock_wait_s += time.perf_counter() - since
                    raise _Busy from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    def _set_timeout(self, conn: sqlite3.Connection, ms: int) -> None:
        if ms != self._timeout_now:
            conn.execute(f"PRAGMA busy_timeout={ms}")
            self._timeout_now = ms

    def _run_group(
        self, conn: sqlite3.Connection, group: Group, isolate: bool, wait: bool
    ) -> Results:
        results: Results = []
        self._begin(conn, wait)
        began = time.perf_counter()
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
                            raise  # not the op's fault: the whole group goes elsewhere
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
                raise _Busy from exc  # rolled back: the thread reruns it, waiting
            raise
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
