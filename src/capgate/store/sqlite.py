"""The SQLite store: the embedded default, safe for several processes on one machine.

Writes go through one `SQLiteWriter` per process (grouped commits, `BEGIN IMMEDIATE`, on
the event loop when the write lock is free, on its thread when another process holds it);
admin reads use their own connection on a reader thread, so no wait blocks the event
loop. WAL mode lets readers run beside the writer. Settlements are journaled beside the
database before they are queued, and retried until they commit (`journal.py`); each
process proves it is alive with a lock on its own file (`liveness.py`), not only with its
lease in the database. Each process caches the keys in memory and reloads them when
`meta.config_version` moves; reservations always see the current configuration because
the writer checks that version inside every transaction.

Every microsecond inside a transaction holds the file's one write lock, the ceiling for
every process on the file, so the hot path does there only what needs the lock. A
reservation is planned before it is submitted (`sqlite_plan.py`; the transaction plans
again if the plan no longer holds) and its `Reservation` built after the commit; a
settlement's amounts, counter deltas and ledger row are worked out before it is submitted
(`sqlite_settlement.prepare`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from capgate.core.engine import (
    Amounts,
    OutputFlex,
    Refusal,
    plan_reserve,
    plan_settle,
)
from capgate.core.limits import Scope, ScopeKind
from capgate.errors import StoreUnavailable
from capgate.store import journal
from capgate.store import sqlite_daily as daily
from capgate.store import sqlite_queries as q
from capgate.store import sqlite_settlement as settlement
from capgate.store.base import (
    Outcome,
    RequestInfo,
    RequestQuery,
    Reservation,
    StoreHealth,
)
from capgate.store.keycache import KeyCache
from capgate.store.liveness import ProcessLock, is_alive, procs_dir
from capgate.store.records import AuditEntry, LedgerEntry, UsageRow
from capgate.store.settling import SettleRetry
from capgate.store.sqlite_admin import ScopeAdmin
from capgate.store.sqlite_admins import AdminsSQLite
from capgate.store.sqlite_alerts import AlertStoreSQLite
from capgate.store.sqlite_bodies import BodiesSQLite
from capgate.store.sqlite_counters import CounterCache
from capgate.store.sqlite_daily import DailySQLite
from capgate.store.sqlite_dashboard import DashboardStore
from capgate.store.sqlite_hook import SQLiteHook
from capgate.store.sqlite_plan import Admitted, KeyEntry, Plan, plan, reservation_of
from capgate.store.sqlite_routing import SQLiteRouting
from capgate.store.sqlite_schema import migrate
from capgate.store.sqlite_writer import SQLiteWriter, WriterClosed

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT_SECONDS = 1.0
# Under steady load a PASSIVE checkpoint never catches up with the writes, so the WAL never
# starts over and its file grows (hundreds of MB in an hour of benchmark). Past this many
# frames (~64 MiB of 4 KiB pages) a RESTART checkpoint makes writers wait (they go to the
# writer's thread, the loop keeps running) while it copies the rest, so the WAL starts
# over; journal_size_limit then cuts the file back to this size.
WAL_RESTART_FRAMES = 16384
WAL_RESTART_WAIT_MS = 200

# `sqlite3` binds a None (SQL NULL) through its adapter protocol: with no adapter
# registered for NoneType it looks one up on its protocol type, which formats and discards
# an AttributeError, ~0.3 us per None; a ledger row binds about ten. Registered (None ->
# None, `dict.get` in C), a None costs a dict lookup. Process-wide, and binds the same NULL.
_NULL: dict[object, None] = {}


class SQLiteStore(
    KeyCache,
    SettleRetry,
    ScopeAdmin,
    DashboardStore,
    SQLiteHook,
    AlertStoreSQLite,
    BodiesSQLite,
    DailySQLite,
    SQLiteRouting,
    AdminsSQLite,
):
    def __init__(
        self,
        path: str,
        *,
        lease_seconds: float = 30.0,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._clock = clock
        # A process silent for `lease_seconds` whose liveness lock is free is dead; it
        # renews six times per lease.
        self._lease = lease_seconds
        self._beat_every = lease_seconds / 6
        self._busy_ms = int(busy_timeout_s * 1000)  # how long a write waits for the lock
        self.owner = uuid.uuid4().hex[:16]  # this process's lease identity
        self._procs = procs_dir(path)
        self._alive = ProcessLock(self._procs, self.owner)
        self._journal = journal.Journal(journal.journal_dir(path), self.owner)
        # Settlements whose last write failed, with the timer of their next try (None
        # while a try is under way).
        self._retries: dict[str, asyncio.TimerHandle | None] = {}
        self._closing = False
        self._keys: dict[str, tuple[Scope, bytes]] = {}
        self._retired = {}
        self._named: dict[tuple[ScopeKind, str], Scope] = {}  # users, teams, orgs, providers
        self._version = ""
        self._data_version = -1  # PRAGMA data_version at the last write transaction
        self._cold_ran = False  # an op other than reserve/settle ran since
        self._counters = CounterCache()  # the current write transaction's counters
        self._writer = SQLiteWriter(
            self._connect,
            self._before_group,
            self._after_rollback,
            before_cold_op=self._before_cold_op,
            before_commit=self._counters.write,
        )
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capgate-sqlite-read")
        self._reader_local = threading.local()
        self._heartbeat: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        sqlite3.register_adapter(type(None), _NULL.get)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        # No checkpoint inside a commit: its fsync would stall the request that commits.
        # `_checkpoint_loop` checkpoints from the reader thread instead.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * 4096}")
        conn.row_factory = sqlite3.Row
        return conn

    async def start(self) -> None:
        """Open the database, claim this process's liveness lock and journal, replay the
        journals of dead processes. Raises StoreUnavailable with what to do."""

        def setup() -> None:
            self._alive.acquire()
            self._journal.open()
            conn = self._connect()
            try:
                migrate(conn)
                self._load(conn)
            finally:
                conn.close()

        try:
            await asyncio.to_thread(setup)
            self._writer.start(asyncio.get_running_loop())
            await self._beat()
        except (sqlite3.Error, OSError, StoreUnavailable) as exc:
            self._journal.close()
            self._alive.release()
            raise StoreUnavailable(
                f"cannot open the database {self.path} for writing ({exc}); capgate needs "
                "to write the file, its directory and the files beside it: check the path "
                "and its permissions, and that no other program keeps the database locked"
            ) from exc
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        self._checkpoints = asyncio.create_task(self._checkpoint_loop())

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            try:
                await self._writer.submit(
                    lambda c: c.execute("DELETE FROM processes WHERE id=?", (self.owner,))
                )
            except Exception:  # noqa: BLE001 - best effort on shutdown; the lease covers it
                log.warning("could not unregister process %s", self.owner)
        self._closing = True
        for retry in self._retries.values():
            if retry is not None:
                retry.cancel()  # the journal keeps them for the next start
        await self._writer.close()
        log.debug("sqlite store %s: %s", self.owner, self._writer.stats.line())
        self._journal.close()
        self._alive.release()  # last: from now on others may replay what the journal kept
        self._reader.submit(self._close_reader).result()
        self._reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        conn = getattr(self._reader_local, "conn", None)
        if conn is not None:
            conn.close()

    async def flush(self) -> None:
        await self._write(lambda conn: None)

    async def _write(self, op: Callable[[sqlite3.Connection], T], hot: bool = False) -> T:
        try:
            result: T = await self._writer.submit(op, hot)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        return result

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = getattr(self._reader_local, "conn", None)
            if conn is None:
                conn = self._reader_local.conn = self._connect()
            return op(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, run)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    # -- configuration cache -----------------------------------------------------------

    def _after_rollback(self) -> None:
        self._version = ""  # a rolled-back admin op may have loaded undone keys: reload
        self._data_version = -1
        self._counters.forget()

    def _before_group(self, conn: sqlite3.Connection, batched: bool) -> None:
        """First in every write transaction. When no other connection has committed since
        our last transaction (`PRAGMA data_version` unchanged) and no admin op ran here,
        the keys and limits in memory and the counters read then are still true: keep
        them. Otherwise check the config version and read counters afresh."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        unchanged = version == self._data_version and not self._cold_ran
        self._data_version, self._cold_ran = version, False
        self._counters.begin(batched, keep=unchanged)
        stats = self._writer.stats
        if unchanged:
            stats.cache_kept += 1
            return
        stats.cache_reread += 1
        row = conn.execute("SELECT v FROM meta WHERE k='config_version'").fetchone()
        if row[0] != self._version:
            stats.config_reloads += 1
            self._load(conn)

    def _before_cold_op(self, conn: sqlite3.Connection) -> None:
        self._cold_ran = True  # it may change keys or counters: look again next time
        self._counters.before_cold_op(conn)

    def _load(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("SELECT v FROM meta WHERE k='config_version'").fetchone()[0]
        self._install(conn.execute(q.SELECT_SCOPES), version)

    async def refresh(self) -> None:
        await self.flush()  # the writer reloads inside the transaction if needed

    # -- the hot path ------------------------------------------------------------------

    async def reserve(
        self,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None = None,
        extra_scopes: tuple[Scope, ...] = (),
        record_refusal: bool = True,
    ) -> Reservation | Refusal:
        # Planned here, before the transaction (less time holding the write lock); the
        # transaction uses the plan only if it still holds (`sqlite_plan`).
        entry = self._keys.get(info.key_id)
        early = None
        if entry is not None:
            planned = self._plan(entry, info, worst, flex, extra_scopes, self._clock(), None)
            # A refusal is decided (and recorded) in the transaction, on its clock.
            if not isinstance(planned, Refusal):
                planned.row_info = q.dump_info(info, entry[0], worst)
                early = planned
        # `_write` inlined: one coroutine less to resume on every request.
        try:
            result: Admitted | Refusal = await self._writer.submit(
                lambda conn: self._reserve(
                    conn, info, worst, flex, extra_scopes, record_refusal, early
                ),
                True,
            )
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        return reservation_of(info, result)

    def _plan(
        self,
        entry: KeyEntry,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
        extra_scopes: tuple[Scope, ...],
        now: float,
        row_info: str | None,
    ) -> Plan | Refusal:
        """The reservation's plan at `now` (`sqlite_plan`)."""
        named = self._named  # what the scopes above the key come from (`Plan.holds`)
        scopes = (*self._scopes_of(entry[0], info.provider), *extra_scopes)
        models = (info.model, info.upstream_model)
        return plan(entry, named, scopes, models, worst, flex, self._counters_for, now, row_info)

    def _reserve(
        self,
        conn: sqlite3.Connection,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
        extra_scopes: tuple[Scope, ...],
        record_refusal: bool = True,
        early: Plan | None = None,  # planned before the transaction
    ) -> Admitted | Refusal:
        now = self._clock()
        entry = self._keys.get(info.key_id)
        if entry is None:  # deleted since the caller authenticated
            return Refusal("revoked", "This key has been deleted.", "key", info.key_id)
        key = entry[0]
        if early is not None and early.holds(entry, self._named, now):
            chosen: Plan | Refusal = early
        else:
            # The row's info depends on the key alone: kept if the key is the same.
            kept = early.row_info if early is not None and early.entry is entry else None
            chosen = self._plan(entry, info, worst, flex, extra_scopes, now, kept)
        if isinstance(chosen, Refusal):
            refusal = chosen
        else:
            states = self._counters.read(conn, chosen.wanted)
            decision = plan_reserve(chosen.applicable, states, worst, chosen.clamp, chosen.planned)
            if not isinstance(decision, Refusal):
                charges_text, adds, row_info = chosen.charges_text, chosen.adds, chosen.row_info
                if decision.max_output is not None:  # clamped: other charges, other worst
                    if flex is not None:
                        worst = flex.amounts(decision.max_output)
                    charges_text = q.dump_charges(decision.charges)
                    adds = [(c.counter, c.window_start, c.amount, 0) for c in decision.charges]
                    row_info = None
                if row_info is None:
                    row_info = q.dump_info(info, key, worst, decision.max_output)
                res_id = info.request_id  # unique: a random per-process prefix and a counter
                conn.execute(  # first: the only write here that can fail (a duplicate id)
                    "INSERT INTO reservations (id, owner, created_at, charges, info) VALUES (?,?,?,?,?)",
                    (res_id, self.owner, now, charges_text, row_info),
                )
                self._counters.add(conn, adds)
                return decision, worst, key, chosen.applicable, states  # `Admitted`
            refusal = decision
        if record_refusal:
            q.insert_refusal(conn, info, key, refusal, now)
        return refusal

    async def rereserve(
        self, old: Reservation, info: RequestInfo, worst: Amounts, flex: OutputFlex | None = None
    ) -> Reservation | Refusal:
        result = await self._write(
            lambda conn: self._rereserve(conn, old, info, worst, flex), hot=True
        )
        return reservation_of(info, result)

    def _rereserve(
        self,
        conn: sqlite3.Connection,
        old: Reservation,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
    ) -> Admitted | Refusal:
        """Move a held reservation to another target in one transaction: release what it
        holds, reserve `worst` for `info`. Refused: nothing changes, the old one stays."""
        conn.execute("SAVEPOINT rereserve")
        snapshot = self._counters.snapshot()
        try:
            if conn.execute("DELETE FROM reservations WHERE id=?", (old.id,)).rowcount == 0:
                decision: Admitted | Refusal = Refusal(
                    "lease_expired",
                    "This request's reservation was settled by another process (lease expired).",
                    "key",
                    old.key.name,
                )
            else:
                released = plan_settle(old.charges, Amounts())
                self._counters.add(
                    conn, [(d.counter, d.window_start, d.reserved, d.settled) for d in released]
                )
                decision = self._reserve(conn, info, worst, flex, (), record_refusal=False)
            if isinstance(decision, Refusal):
                conn.execute("ROLLBACK TO rereserve")
                self._counters.restore(snapshot)
            conn.execute("RELEASE rereserve")
            return decision
        except BaseException:
            conn.execute("ROLLBACK TO rereserve")
            self._counters.restore(snapshot)
            conn.execute("RELEASE rereserve")
            raise

    def _write_settlement(self, res: Reservation, outcome: Outcome) -> asyncio.Future[Any]:
        # What it writes is worked out here, outside the transaction (less time holding
        # the write lock): the amounts, the counter deltas, the ledger row. Should that
        # fail, the op works it out itself: its failure is then the write's, logged and
        # retried (`SettleRetry`), not an exception out of `settle` that would leave the
        # settlement neither written nor retried.
        prepared: settlement.Prepared | None
        try:
            prepared = settlement.prepare(res, outcome)
        except Exception:  # noqa: BLE001 - re-raised by the op, where it is retried
            prepared = None
        try:
            return self._writer.submit_soon(lambda conn: self._settle(conn, res, outcome, prepared))
        except WriterClosed as exc:  # shutting down: the journal keeps it
            raise StoreUnavailable(f"settlement kept in the journal: {exc}") from exc

    def _settle(
        self,
        conn: sqlite3.Connection,
        res: Reservation,
        outcome: Outcome,
        prepared: settlement.Prepared | None,
    ) -> str:
        result = settlement.settle(conn, self._counters.add, res, outcome, self._clock(), prepared)
        if result == settlement.ALREADY:
            log.info("reservation %s was already settled", res.id)
        return result

    def health(self) -> StoreHealth:
        """Whether writes can be made now, and the settlements still to be written."""
        return StoreHealth(self._writer.problem(), self._journal.waiting, len(self._retries))

    # -- leases ------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        """Move the WAL into the database once a second, off the request path (see
        `checkpoint`)."""
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            began = time.perf_counter()
            try:
                await self._read(checkpoint)
            except Exception:
                log.exception("WAL checkpoint failed")
            stats = self._writer.stats
            stats.checkpoints += 1
            stats.checkpoint_s += time.perf_counter() - began

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        """Replay the journals of dead processes, then renew this process's lease and
        sweep: two ops of one transaction, so a journal that cannot be replayed (logged)
        never stops the lease from being renewed."""
        replay: asyncio.Future[list[Path]] = self._writer.submit(self._replay)
        beat: asyncio.Future[int] = self._writer.submit(self._beat_and_sweep)
        await asyncio.wait((replay, beat))
        failed, error = replay.exception(), beat.exception()
        if error is not None:  # the transaction failed: both undone, nothing replayed
            raise StoreUnavailable(f"the usage ledger is unavailable: {error}") from error
        if failed is not None:
            log.error("a settlement journal could not be replayed (kept): %r", failed)
            return
        for path in replay.result():  # committed: the dead process's journal did its work
            path.unlink(missing_ok=True)

    def _replay(self, conn: sqlite3.Connection) -> list[Path]:
        """Settle what dead processes journaled (exactly once: see sqlite_settlement).
        Returns the journal files replayed."""
        now = self._clock()
        replayed = []
        for owner, paths in journal.owners(self._journal.directory).items():
            if owner == self.owner or is_alive(self._procs, owner):
                continue
            counts: dict[str, int] = {}
            for path in paths:
                for res, outcome in journal.read(path):
                    result = settlement.settle(conn, self._counters.add, res, outcome, now)
                    counts[result] = counts.get(result, 0) + 1
                replayed.append(path)
            log.warning("replayed the settlement journal of process %s: %s", owner, counts)
        return replayed

    def _beat_and_sweep(self, conn: sqlite3.Connection) -> int:
        """Renew this process's lease and settle in full the reservations of dead
        processes (after `_replay`, in the same transaction)."""
        return settlement.sweep(conn, self.owner, self._lease, self._clock(), self._procs)

    async def query_requests(self, query: RequestQuery) -> list[LedgerEntry]:
        await self.flush()  # see every entry committed before this call
        return await self._read(lambda conn: q.select_requests(conn, query))

    async def usage(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[UsageRow]:
        await self.flush()
        return await self._read(lambda conn: daily.usage_by(conn, group_by, since, until))

    async def get_meta(self, name: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT v FROM meta WHERE k=?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(op)

    async def set_meta(self, name: str, value: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                (name, value),
            )
        )

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        return await self._read(lambda conn: q.select_audit(conn, limit))


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"the usage ledger is unavailable: {exc}")


def checkpoint(conn: sqlite3.Connection) -> tuple[str, int]:
    """PASSIVE (never waits for writers; what it cannot copy now it copies next time),
    then, when the WAL is still longer than WAL_RESTART_FRAMES, RESTART: wait up to
    WAL_RESTART_WAIT_MS for the writer, copy the rest and start the WAL over. Returns the
    mode that ran last and the WAL frames left to copy."""
    _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames < WAL_RESTART_FRAMES:
        return "passive", max(0, frames - copied)
    conn.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
    try:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        conn.execute("PRAGMA busy_timeout=10000")
    return ("restart" if not busy else "restart-busy"), max(0, frames - copied)
