"""One writer thread per process, committing submitted operations in groups.

Every write of the process is a small function `op(conn)` queued here. The thread takes
whatever is queued, runs it all inside one `BEGIN IMMEDIATE` transaction (each op in its
own savepoint, so one failing op does not undo the others), commits once, and only then
resolves the waiting futures: a caller never sees a result that is not durable. An op
must leave no partial writes when it raises before writing, or else raise only before its
first write; when one raises, the group is undone and rerun with savepoints. Grouping
turns N commits into one under load, and `BEGIN IMMEDIATE` holds SQLite's single write
lock for the whole group, so ops are atomic across processes sharing the file too.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Op = Callable[[sqlite3.Connection], Any]
_MAX_GROUP = 512


class WriterClosed(RuntimeError):
    pass


class SQLiteWriter:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        before_group: Callable[[sqlite3.Connection], None],
        after_rollback: Callable[[], None] = lambda: None,
    ) -> None:
        self._connect = connect
        self._before_group = before_group  # runs first in every transaction
        self._after_rollback = after_rollback  # in-memory state may reflect undone writes
        self._queue: queue.SimpleQueue[tuple[Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._deferred: list[tuple[Op, asyncio.Future[Any]]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="capgate-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise WriterClosed("the store is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self._deferred:  # keep submission order
            self._hand_over()
        self._queue.put((op, fut))
        return fut

    def submit_soon(self, op: Op) -> asyncio.Future[Any]:
        """Like `submit`, but handed to the writer only when the event loop has finished
        its current step: the caller can write its answer first without the writer thread
        taking the CPU from under it. Order with `submit` is kept."""
        if self._closed or self._loop is None:
            raise WriterClosed("the store is closed")
        fut: asyncio.Future[Any] = self._loop.create_future()
        if not self._deferred:
            self._loop.call_soon(self._hand_over)
        self._deferred.append((op, fut))
        return fut

    def _hand_over(self) -> None:
        deferred, self._deferred = self._deferred, []
        for item in deferred:
            self._queue.put(item)

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._hand_over()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < _MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                self._commit_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(
        self, conn: sqlite3.Connection, group: list[tuple[Op, asyncio.Future[Any]]]
    ) -> None:
        try:
            try:
                results = self._run_group(conn, group, isolate=False)
            except _OpFailed:
                # Some op raised: undo the whole group and run it again with each op in a
                # savepoint, so the failing one is undone alone. Savepoints cost four
                # statements per request, so the common path does without them.
                results = self._run_group(conn, group, isolate=True)
        except Exception as exc:  # noqa: BLE001 - lock timeout, disk I/O, a bug: nothing committed, every waiter learns why
            log.error("store transaction failed: %s", exc)
            self._after_rollback()
            results = [(fut, None, exc) for _, fut in group]
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_resolve_all, results)
        except RuntimeError:  # the loop is gone (shutdown); the commit stands
            log.warning("store results dropped: event loop closed")

    def _run_group(
        self, conn: sqlite3.Connection, group: list[tuple[Op, asyncio.Future[Any]]], isolate: bool
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._before_group(conn)
            for op, fut in group:
                if not isolate:
                    try:
                        results.append((fut, op(conn), None))
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
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._after_rollback()
            raise
        return results


class _OpFailed(Exception):
    pass


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():  # the waiter was cancelled; the write happened regardless
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
