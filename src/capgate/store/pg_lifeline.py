"""A node's own PostgreSQL connection, outside the pool: its proof of life and its ear.

- Liveness: the node holds a session-level advisory lock, keyed by its owner id, for as
  long as this connection lives. PostgreSQL drops it when the connection ends, however
  the node ends (`kill -9`, a crash, a network cut), so another node's sweep that finds
  the lease expired tries the lock: taken by someone, the node is alive (it only could
  not write its heartbeat) and its reservations are left alone. It is the same idea as
  `liveness.py`'s flock, across machines.
- Configuration: the connection LISTENs on `capgate_config`; every configuration change
  sends a NOTIFY in its transaction, so each node reloads its keys within moments.

When the connection is lost (PostgreSQL restarted, `pg_terminate_backend`), it is opened
again with backoff; the lock is taken again, LISTEN again, and the node reloads its
cache (notifications sent meanwhile were lost).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "capgate_config"
LIVENESS_CLASS = 0x63670000  # the first int4 of (int4, int4) advisory locks: "cg" (a space
# of its own: one-bigint keys, as pg_schema's, never meet two-int4 keys)
RECONNECT_MAX_S = 5.0
CHECK_EVERY_S = 0.5


def liveness_key(owner: str) -> tuple[int, int]:
    """The (int4, int4) advisory lock key of a node."""
    return LIVENESS_CLASS, zlib.crc32(owner.encode()) - 2**31


class Lifeline:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        owner: str,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._connect = connect
        self.key = liveness_key(owner)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.problem: str | None = None

    async def open(self) -> bool:
        """Connect, take the liveness lock, LISTEN. False: another node holds this key
        (two owner ids of one hash): choose another owner id."""
        conn = await self._connect()
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *self.key):
                await conn.close()
                return False
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._lost.clear()
        self.problem = None
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._on_notify(str(payload))

    def _terminated(self, conn: Any) -> None:
        self._lost.set()

    async def _watch(self) -> None:
        """Wait for the connection to be lost, then open it again until that works."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), CHECK_EVERY_S)
            except TimeoutError:
                if self._conn is not None and not self._conn.is_closed():
                    continue
            await self._reopen()

    async def _reopen(self) -> None:
        self.problem = "the connection that holds this node's liveness lock was lost"
        log.warning("%s; reconnecting", self.problem)
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        delay = 0.1
        while True:
            try:
                # Blocking lock: a sweep that is testing this node holds it for a moment.
                if await self._open_blocking():
                    break
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.problem = f"cannot reach PostgreSQL: {exc}"
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)
        log.warning("reconnected; liveness lock held again")
        await self._on_reconnect()

    async def _open_blocking(self) -> bool:
        conn = await self._connect()
        try:
            await conn.execute("SELECT pg_advisory_lock($1, $2)", *self.key)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._lost.clear()
        self.problem = None
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 2)  # drops the lock
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
