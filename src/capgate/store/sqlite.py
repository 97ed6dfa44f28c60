"""The SQLite store: the embedded default, safe for several processes on one machine.

Writes go through one `SQLiteWriter` per process (grouped commits, `BEGIN IMMEDIATE`, on
the event loop when the write lock is free, on its thread when another process holds it);
admin reads use their own connection on a reader thread, so no wait blocks the event
loop. WAL mode lets readers run beside the writer. Each process caches the keys in
memory and reloads them when `meta.config_version` moves; reservations always see the
current configuration because the writer checks that version inside every transaction.
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
from typing import Any

from capgate.core.engine import (
    Amounts,
    OutputFlex,
    Refusal,
    check_access,
    counters_for,
    plan_reserve,
    plan_settle,
    tightest,
)
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, nano_to_decimal_str
from capgate.core.windows import window_at
from capgate.errors import StoreUnavailable
from capgate.store import sqlite_queries as q
from capgate.store.base import Outcome, RequestInfo, RequestQuery, Reservation
from capgate.store.sqlite_admin import ScopeAdmin
from capgate.store.sqlite_counters import CounterCache
from capgate.store.sqlite_dashboard import DashboardStore
from capgate.store.sqlite_schema import migrate
from capgate.store.sqlite_writer import SQLiteWriter

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 1.0
# Under steady load a PASSIVE checkpoint never catches up with the writes, so the WAL never
# starts over and its file grows (hundreds of MB in an hour of benchmark). Past this many
# frames (~64 MiB of 4 KiB pages) a RESTART checkpoint makes writers wait (they go to the
# writer's thread, the loop keeps running) while it copies the rest, so the WAL starts
# over; journal_size_limit then cuts the file back to this size.
WAL_RESTART_FRAMES = 16384
WAL_RESTART_WAIT_MS = 200


class SQLiteStore(ScopeAdmin, DashboardStore):
    def __init__(
        self, path: str, *, lease_seconds: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._clock = clock
        # A process silent for `lease_seconds` is dead; it renews six times per lease.
        self._lease = lease_seconds
        self._beat_every = lease_seconds / 6
        self.owner = uuid.uuid4().hex[:16]  # this process's lease identity
        self._keys: dict[str, tuple[Scope, bytes]] = {}
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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        # No checkpoint inside a commit: its fsync would stall the request that commits.
        # `_checkpoint_loop` checkpoints from the reader thread instead.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * 4096}")
        conn.row_factory = sqlite3.Row
        return conn

    async def start(self) -> None:
        def setup() -> None:
            conn = self._connect()
            try:
                migrate(conn)
                self._load(conn)
            finally:
                conn.close()

        await asyncio.to_thread(setup)
        self._writer.start(asyncio.get_running_loop())
        await self._beat()
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
        await self._writer.close()
        self._reader.submit(self._close_reader).result()
        self._reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        conn = getattr(self._reader_local, "conn", None)
        if conn is not None:
            conn.close()

    async def flush(self) -> None:
        await self._write(lambda conn: None)

    async def _write(self, op: Callable[[sqlite3.Connection], Any], hot: bool = False) -> Any:
        try:
            return await self._writer.submit(op, hot)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the usage ledger is unavailable: {exc}") from exc

    async def _read(self, op: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            conn = getattr(self._reader_local, "conn", None)
            if conn is None:
                conn = self._reader_local.conn = self._connect()
            return op(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, run)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the usage ledger is unavailable: {exc}") from exc

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
        if unchanged:
            return
        row = conn.execute("SELECT v FROM meta WHERE k='config_version'").fetchone()
        if row[0] != self._version:
            self._load(conn)

    def _before_cold_op(self, conn: sqlite3.Connection) -> None:
        self._cold_ran = True  # it may change keys or counters: look again next time
        self._counters.before_cold_op(conn)

    def _load(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("SELECT v FROM meta WHERE k='config_version'").fetchone()[0]
        keys: dict[str, tuple[Scope, bytes]] = {}
        named: dict[tuple[ScopeKind, str], Scope] = {}
        for row in conn.execute(q.SELECT_SCOPES):
            scope = q.scope_from_row(row)
            if scope.kind is ScopeKind.KEY:
                keys[scope.id] = (scope, row["secret_hash"])
            else:
                named[(scope.kind, scope.name)] = scope
        self._keys = keys  # reference swaps: readers see the old or the new dict
        self._named = named
        self._version = version

    def key_by_id(self, key_id: str) -> tuple[Scope, bytes] | None:
        return self._keys.get(key_id)

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
        return await self._write(  # type: ignore[no-any-return]
            lambda conn: self._reserve(conn, info, worst, flex, extra_scopes, record_refusal),
            hot=True,
        )

    def _reserve(
        self,
        conn: sqlite3.Connection,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
        extra_scopes: tuple[Scope, ...],
        record_refusal: bool = True,
    ) -> Reservation | Refusal:
        now = self._clock()
        entry = self._keys.get(info.key_id)
        if entry is None:  # deleted since the caller authenticated
            return Refusal("revoked", "This key has been deleted.", "key", info.key_id)
        key = entry[0]
        scopes = (*self._scopes_of(key, info.provider), *extra_scopes)
        models = (info.model, info.upstream_model)
        refusal = check_access(scopes, models, now)
        if refusal is None:
            applicable = counters_for(scopes, models, now)
            states = self._counters.read(
                conn, [(a.counter, a.window.start, a.window.read_from) for a in applicable]
            )
            clamp = flex if all(scope.clamp for scope in scopes) else None
            decision = plan_reserve(applicable, states, worst, clamp)
            if not isinstance(decision, Refusal):
                if decision.max_output is not None and flex is not None:
                    worst = flex.amounts(decision.max_output)
                res_id = info.request_id  # unique: a random per-process prefix and a counter
                conn.execute(  # first: the only write here that can fail (a duplicate id)
                    "INSERT INTO reservations (id, owner, created_at, charges, info) VALUES (?,?,?,?,?)",
                    (
                        res_id,
                        self.owner,
                        now,
                        q.dump_charges(decision.charges),
                        q.dump_info(info, key, worst, decision.max_output),
                    ),
                )
                self._counters.add(
                    conn, [(c.counter, c.window_start, c.amount, 0) for c in decision.charges]
                )
                headroom = tightest(applicable, states)
                return Reservation(
                    res_id, info, decision.charges, worst, key, decision.max_output, headroom
                )
            refusal = decision
        if record_refusal:
            q.insert_refusal(conn, info, key, refusal, now)
        return refusal

    async def rereserve(
        self, old: Reservation, info: RequestInfo, worst: Amounts, flex: OutputFlex | None = None
    ) -> Reservation | Refusal:
        return await self._write(  # type: ignore[no-any-return]
            lambda conn: self._rereserve(conn, old, info, worst, flex), hot=True
        )

    def _rereserve(
        self,
        conn: sqlite3.Connection,
        old: Reservation,
        info: RequestInfo,
        worst: Amounts,
        flex: OutputFlex | None,
    ) -> Reservation | Refusal:
        """Move a held reservation to another target in one transaction: release what it
        holds, reserve `worst` for `info`. Refused: nothing changes, the old one stays."""
        conn.execute("SAVEPOINT rereserve")
        snapshot = self._counters.snapshot()
        try:
            if conn.execute("DELETE FROM reservations WHERE id=?", (old.id,)).rowcount == 0:
                decision: Reservation | Refusal = Refusal(
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

    def scopes_above(self, key: Scope) -> list[Scope]:
        """The user, team and org scopes a key's requests also count against (cached)."""
        return self._scopes_of(key, "")[1:]

    def _scopes_of(self, key: Scope, provider: str) -> list[Scope]:
        """Every scope a request of `key` to `provider` counts against, innermost first:
        the key, its user, its team, the team's org, the provider. A team or user named on
        a key but not created is only a label."""
        scopes = [key]
        named = self._named
        user = key.extra.get("user")
        if user and (found := named.get((ScopeKind.USER, user))) is not None:
            scopes.append(found)
        team = key.extra.get("team")
        if team and (found := named.get((ScopeKind.TEAM, team))) is not None:
            scopes.append(found)
            org = found.extra.get("org")
            if org and (found := named.get((ScopeKind.ORG, org))) is not None:
                scopes.append(found)
        if (found := named.get((ScopeKind.PROVIDER, provider))) is not None:
            scopes.append(found)
        return scopes

    def settle(self, reservation: Reservation, outcome: Outcome) -> asyncio.Future[None]:
        return self._writer.submit_soon(lambda conn: self._settle(conn, reservation, outcome))

    def _settle(self, conn: sqlite3.Connection, res: Reservation, outcome: Outcome) -> None:
        if conn.execute("DELETE FROM reservations WHERE id=?", (res.id,)).rowcount == 0:
            log.error("reservation %s was already settled (lease expired?)", res.id)
            return
        if outcome.usage is None:  # no usage reported: charge the whole reservation
            actual = res.worst
        else:
            actual = Amounts.of_usage(outcome.usage, outcome.cost_nano, res.worst.credits)
        deltas = plan_settle(res.charges, actual)
        self._counters.add(
            conn, [(d.counter, d.window_start, d.reserved, d.settled) for d in deltas]
        )
        q.insert_entry(conn, res.info, res.key, outcome, actual, self._clock(), res.max_output)

    # -- leases ------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        """Move the WAL into the database once a second, off the request path (see
        `checkpoint`)."""
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                await self._read(checkpoint)
            except Exception:
                log.exception("WAL checkpoint failed")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                await self._beat()
            except Exception:
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        await self._write(self._beat_and_sweep)

    def _beat_and_sweep(self, conn: sqlite3.Connection) -> int:
        """Renew this process's lease and settle reservations of dead processes in full."""
        now = self._clock()
        conn.execute(
            "INSERT INTO processes (id, heartbeat_at) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET heartbeat_at=excluded.heartbeat_at",
            (self.owner, now),
        )
        conn.execute("DELETE FROM processes WHERE heartbeat_at < ?", (now - self._lease,))
        orphans = conn.execute(
            "SELECT id, charges, info FROM reservations WHERE owner NOT IN (SELECT id FROM processes)"
        ).fetchall()
        for row in orphans:
            charges = q.load_charges(row["charges"])
            info, key_name, team, user, worst = q.load_info(row["info"])
            q.add_to_counters(
                conn,
                [
                    (d.counter, d.window_start, d.reserved, d.settled)
                    for d in plan_settle(charges, worst)
                ],
            )
            conn.execute("DELETE FROM reservations WHERE id=?", (row["id"],))
            q.insert_lease_expired(
                conn, info, key_name, team, user, worst, now, q.clamped_of(row["info"])
            )
        if orphans:
            log.warning("settled %d reservations of dead processes in full", len(orphans))
        return len(orphans)

    async def counters(self, scope: Scope, now: float) -> list[dict[str, Any]]:
        """Each limit of `scope` with its current window's used, reserved and reset."""
        await self.flush()  # include every settlement queued before this call

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            out = []
            for limit in scope.limits:
                window = window_at(limit.window, now, scope.timezone)
                counter = scope.counter_id(limit)
                wanted = [(counter, window.start, window.read_from)]
                state = q.read_counters(conn, wanted).get((counter, window.start))
                out.append(
                    _limit_status(
                        limit,
                        state.settled if state else 0,
                        state.reserved if state else 0,
                        window.resets_at,
                    )
                )
            return out

        return await self._read(op)  # type: ignore[no-any-return]

    async def query_requests(self, query: RequestQuery) -> list[dict[str, Any]]:
        await self.flush()  # see every entry committed before this call
        return await self._read(lambda conn: q.select_requests(conn, query))  # type: ignore[no-any-return]

    async def usage(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[dict[str, Any]]:
        await self.flush()
        return await self._read(lambda conn: q.usage_by(conn, group_by, since, until))  # type: ignore[no-any-return]

    async def get_meta(self, name: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT v FROM meta WHERE k=?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(op)  # type: ignore[no-any-return]

    async def set_meta(self, name: str, value: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                (name, value),
            )
        )

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._read(lambda conn: q.select_audit(conn, limit))  # type: ignore[no-any-return]


def _limit_status(limit: Limit, settled: int, reserved: int, resets_at: int) -> dict[str, Any]:
    out = limit.to_json()
    if limit.metric is Metric.COST_USD:
        out.update(used=nano_to_decimal_str(settled), reserved=nano_to_decimal_str(reserved))
        out["remaining"] = nano_to_decimal_str(max(0, limit.max - settled - reserved))
    else:
        out.update(
            used=settled, reserved=reserved, remaining=max(0, limit.max - settled - reserved)
        )
    out["resets_at"] = resets_at
    return out


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
