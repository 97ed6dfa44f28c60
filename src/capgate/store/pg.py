"""The PostgreSQL store: several gateway nodes on one database, with the same guarantees as
SQLite's store on one machine (asyncpg; see docs/dependencies.md for why).

- Reserve and settle are each one statement, one short transaction: PL/pgSQL functions
  (pg_schema) that lock counter instances in one sorted order (no deadlock), check the
  limits again under those locks and apply the engine's decision, made in Python on
  the states this node saw last (pg_hot). A reservation planned on an older
  configuration is refused by the database ("stale"): the node reloads and plans again.
  Under load a node's reserves and settles go in batches, one transaction each
  (pg_batch), so a budget's counter rows are locked and committed once per batch.
- Settlements are journaled on this machine (`state_dir`) before they are written and
  retried until they commit; the journals of dead processes of this machine are
  replayed at start and on every heartbeat (as SQLiteStore does).
- Each node holds a liveness lock and LISTENs for configuration changes on a connection
  of its own (pg_lifeline); its heartbeat renews its lease and sweeps the reservations
  of dead nodes (pg_settlement.sweep).
- Any driver or connection error becomes StoreUnavailable at once (the gateway refuses
  in the client's dialect); the pool and the lifeline reconnect by themselves.

The admin side (scope admin, queries, dashboard) is mixed in from pg_admin & co; they use
`_write(op)` and `_read(op)`: `op` is `async def op(conn: asyncpg.Connection)`, run on a
pooled connection inside a transaction. `_write(op, config=True)` is for a change of
keys, limits, status or settings: it takes the configuration lock first, bumps
`meta.config_version` after `op` (the trigger sends NOTIFY capgate_config), and reloads
this node's cache once committed. `plans=False` says the change cannot alter any
reservation's plan (a key added, a secret replaced): it holds the configuration lock
shared (it never waits for reservations, nor they for it; other changes still wait for
it: a key's team cannot be deleted under it), and no reservation planned before it is
refused as stale (pg_schema, migration 11).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg

from capgate.core.engine import (
    plan_settle,
)
from capgate.core.limits import Scope, ScopeKind
from capgate.errors import StoreUnavailable
from capgate.store import journal
from capgate.store import pg_settlement as settlement
from capgate.store.base import Outcome, Reservation, StoreHealth
from capgate.store.keycache import KeyCache
from capgate.store.liveness import ProcessLock, is_alive
from capgate.store.pg_admin import PgScopeAdmin
from capgate.store.pg_admins import PgAdmins
from capgate.store.pg_alerts import PgAlerts
from capgate.store.pg_batch import Batcher
from capgate.store.pg_bodies import PgBodies
from capgate.store.pg_daily import PgDaily
from capgate.store.pg_dashboard import PgDashboard
from capgate.store.pg_hook import PgHook
from capgate.store.pg_hot import PgReserve, SeenStates
from capgate.store.pg_lifeline import Lifeline, liveness_key
from capgate.store.pg_queries import SELECT_SCOPES
from capgate.store.pg_routing import PgRouting
from capgate.store.pg_schema import CONFIG_LOCK, KEYS_LOCK, migrate
from capgate.store.settling import SettleRetry

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[asyncpg.Connection], Awaitable[T]]

# Driver and connection errors: the database cannot be used now.
DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# Worth trying again at once: the transaction lost a race, nothing was changed.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
RETRIES = 5

_BUMP = "UPDATE meta SET v = (v::BIGINT + 1)::TEXT WHERE k = 'config_version'"
_PLANS_UNCHANGED = (
    "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2), "
    "set_config('capgate.plans_unchanged', 'on', true)"
)


def state_dir_of(url: str, state_dir: str | Path | None = None) -> Path:
    """This machine's directory for a database's journals and liveness files: one per
    database (host, port, name), under `state_dir` or the user's state directory, so two
    deployments on one machine never replay each other's journals."""
    base = Path(state_dir) if state_dir is not None else _user_state_dir()
    where = _safe(url).split("@")[-1].split("?")[0]
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    return base / f"pg-{digest}"


def _user_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "capgate"


class PostgresStore(
    KeyCache,
    SettleRetry,
    PgReserve,
    PgScopeAdmin,
    PgDashboard,
    PgHook,
    PgAlerts,
    PgBodies,
    PgDaily,
    PgRouting,
    PgAdmins,
):
    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 30.0,
        pool_size: int = 10,
        state_dir: str | Path | None = None,
        statement_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._clock = clock
        self._lease = lease_seconds
        self._beat_every = lease_seconds / 6
        self._pool_size = pool_size
        self._timeout = statement_timeout_s
        self.owner = uuid.uuid4().hex[:16]  # this node's lease identity
        self._state = state_dir_of(url, state_dir)
        self._procs = self._state / "procs"
        self._alive = ProcessLock(self._procs, self.owner)
        self._journal = journal.Journal(self._state / "settlements", self.owner)
        self._pool: asyncpg.Pool | None = None
        self._lifeline = self._new_lifeline()
        self._keys: dict[str, tuple[Scope, bytes]] = {}
        self._retired = {}
        self._named: dict[tuple[ScopeKind, str], Scope] = {}
        self._version = ""
        self._loading: asyncio.Task[None] | None = None
        self._seen = SeenStates()
        self._retries: dict[str, asyncio.TimerHandle | None] = {}
        self._settling: set[asyncio.Task[Any]] = set()
        self._giving_up: set[asyncio.Task[None]] = set()
        self._problem: str | None = None
        self._closing = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._batcher = Batcher(
            lambda op: self._run(op, transaction=False), lambda: self.owner, self._clock
        )

    def _new_lifeline(self) -> Lifeline:
        return Lifeline(self._connect, self.owner, self._notified, self._reload_quietly)

    # -- lifecycle ---------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=self._timeout, **self._options())

    def _options(self) -> dict[str, Any]:
        return {
            "command_timeout": self._timeout,
            "server_settings": {"application_name": f"capgate-{self.owner}"},
        }

    async def start(self) -> None:
        """Migrate, load the keys, take this node's liveness lock and this machine's
        journal, replay the journals of dead processes, renew the lease and sweep.
        Raises StoreUnavailable with what to do."""
        try:
            self._state.mkdir(parents=True, exist_ok=True)
            self._alive.acquire()
            self._journal.open()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout,
                reset=_no_reset,
                **self._options(),
            )
            async with self._pool.acquire() as conn:
                await migrate(cast(asyncpg.Connection, conn))
            while not await self._lifeline.open():  # two owner ids of one lock key
                self._journal.close()
                self._alive.release()
                self.owner = uuid.uuid4().hex[:16]
                self._alive = ProcessLock(self._procs, self.owner)
                self._journal = journal.Journal(self._state / "settlements", self.owner)
                self._alive.acquire()
                self._journal.open()
                self._lifeline = self._new_lifeline()
            await self._reload()
            await self._beat()
        except (*DRIVER_ERRORS, StoreUnavailable) as exc:
            await self._abort()
            raise StoreUnavailable(
                f"cannot use the PostgreSQL database {_safe(self.url)} ({exc}); check that "
                f"it is running and reachable, the URL's user and password, and that the "
                f"state directory {self._state} can be written"
            ) from exc
        self._lifeline.start()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())

    async def _abort(self) -> None:
        await self._lifeline.close()
        if self._pool is not None:
            self._pool.terminate()
        self._journal.close()
        self._alive.release()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._settling:  # settlements under way: let them land (the journal keeps them)
            await asyncio.wait(list(self._settling), timeout=self._timeout)
        self._closing = True
        for task in list(self._giving_up):
            task.cancel()
        for retry in self._retries.values():
            if retry is not None:
                retry.cancel()  # the journal keeps them for the next start
        try:
            await self._write(lambda c: c.execute("DELETE FROM processes WHERE id=$1", self.owner))
        except StoreUnavailable:
            log.warning("could not unregister node %s", self.owner)
        await self._lifeline.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._timeout)
            except TimeoutError:
                self._pool.terminate()
        self._journal.close()
        self._alive.release()  # last: from now on others may replay what the journal kept

    async def flush(self) -> None:
        """Wait for the settlements under way (each write commits before it returns)."""
        while self._settling:
            await asyncio.wait(list(self._settling))

    # -- transactions ------------------------------------------------------------------

    def _acquire(self) -> Any:
        if self._pool is None:
            raise StoreUnavailable("the usage ledger is not open")
        return self._pool.acquire()  # no timeout here: wait_for would cost a task per call

    async def _run(self, op: Op[T], *, transaction: bool = True, **options: Any) -> T:
        """`op` on a pooled connection (in a transaction), retried when it lost a race;
        driver errors as StoreUnavailable."""
        for attempt in range(RETRIES):
            try:
                async with self._acquire() as proxy:
                    conn = cast(asyncpg.Connection, proxy)
                    if not transaction:
                        result = await op(conn)
                    else:
                        async with conn.transaction(**options):
                            result = await op(conn)
                self._problem = None
                return result
            except RETRYABLE:
                if attempt == RETRIES - 1:
                    raise StoreUnavailable("the usage ledger is too busy; try again") from None
                await asyncio.sleep(0.005 * 2**attempt)
            except DRIVER_ERRORS as exc:
                self._problem = f"the usage ledger is unavailable: {exc}"
                raise StoreUnavailable(self._problem) from exc
        raise AssertionError("unreachable")

    async def _write(self, op: Op[T], config: bool = False, plans: bool = True) -> T:
        """Run `op` in a write transaction. `config`: a change of keys, limits, status or
        settings; `plans=False`: one that alters no reservation's plan (see the module's
        docstring)."""
        if not config:
            return await self._run(op)

        async def change(conn: asyncpg.Connection) -> T:
            if plans:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", CONFIG_LOCK)
            else:
                await conn.execute(_PLANS_UNCHANGED, CONFIG_LOCK, KEYS_LOCK)
            result = await op(conn)
            await conn.execute(_BUMP)
            return result

        result = await self._run(change)
        await self._reload()
        return result

    async def _read(self, op: Op[T]) -> T:
        """Run `op` in a read-only transaction that sees one snapshot."""
        return await self._run(op, isolation="repeatable_read", readonly=True)

    # -- configuration cache -----------------------------------------------------------

    def _notified(self, version: str) -> None:
        if version != self._version:
            asyncio.get_running_loop().create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        try:
            await self._reload()
        except StoreUnavailable as exc:
            log.warning("could not reload the configuration: %s", exc)

    async def _reload(self) -> None:
        """Load the keys and named scopes, in a load begun after this call: one already
        under way may have read the configuration before the change the caller saw, so
        the caller waits for it and then shares the next. (Concurrent callers share one
        load; its failure reaches each of them.)"""
        if self._loading is not None and not self._loading.done():
            await asyncio.wait((self._loading,))
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
            self._loading.add_done_callback(_retrieved)
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        async def op(conn: asyncpg.Connection) -> tuple[str, list[Any]]:
            version = await conn.fetchval("SELECT v FROM meta WHERE k='config_version'")
            return str(version), await conn.fetch(SELECT_SCOPES)

        version, rows = await self._read(op)
        self._install(rows, version)

    async def refresh(self) -> None:
        version = await self._run(
            lambda c: c.fetchval("SELECT v FROM meta WHERE k='config_version'"),
            transaction=False,
        )
        if version != self._version:
            await self._reload()

    def _background(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    def _write_settlement(self, res: Reservation, outcome: Outcome) -> asyncio.Future[Any]:
        if self._closing:  # the journal keeps it
            raise StoreUnavailable("settlement kept in the journal")
        return self._background(self._settle_now(res, outcome))

    def _settled(self, res: Reservation, outcome: Outcome, result: Any) -> None:
        if result == settlement.SETTLED:
            self._seen.settled(plan_settle(res.charges, settlement.actual_of(res, outcome)))

    def health(self) -> StoreHealth:
        """Whether writes can be made now, and the settlements still to be written."""
        problem = self._problem or self._lifeline.problem
        return StoreHealth(problem, self._journal.waiting, len(self._retries))

    # -- leases ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        """Replay the journals of dead processes of this machine, then renew this node's
        lease and sweep the reservations of dead nodes."""
        await self._replay()
        await self._run(
            lambda c: settlement.sweep(c, self.owner, self._lease, self._clock(), liveness_key),
            transaction=False,
        )

    async def _settle_now(self, res: Reservation, outcome: Outcome, wait: bool = True) -> str:
        """Settle in the node's next batch (`wait`: with the next reservation, see
        pg_batch); alone when the batch could not (its reservation gone or moved: late
        settlement, already settled)."""
        if await self._batcher.settle(settlement.settle_item(res, outcome), wait):
            return settlement.SETTLED
        return await self._run(
            lambda c: settlement.settle(c, res, outcome, self._clock()), transaction=False
        )

    async def _replay(self) -> None:
        """Settle what dead processes of this machine journaled (exactly once: see
        pg_settlement); a journal replayed in full is deleted."""
        for owner, paths in journal.owners(self._journal.directory).items():
            if owner == self.owner or is_alive(self._procs, owner):
                continue
            counts: dict[str, int] = {}
            for path in paths:
                for res, outcome in journal.read(path):
                    result = await self._settle_now(res, outcome, wait=False)
                    counts[result] = counts.get(result, 0) + 1
                path.unlink(missing_ok=True)
            log.warning("replayed the settlement journal of process %s: %s", owner, counts)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pooled connections keep no session state (no LISTEN, SET or session lock: those
    live on the lifeline), so nothing to reset on release: no round trip for it."""


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # whoever awaited it got it; don't log it again as unretrieved


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{tail}"
