"""Counters as one transaction sees them: read once, changed in memory, written once.

Every request reads its counters and changes them twice (reserve, then settle), and under
load a transaction carries dozens of requests of the same key and team. Within one
`BEGIN IMMEDIATE` transaction nobody else can change the counters (the write lock is
ours), so what was read stays true until we change it: the cache keeps each counter
instance it read with the changes made since, and writes the changes once per counter
instance when the transaction commits. 32 requests of one key then cost one read and a
handful of upserts instead of 32 reads and ~300 upserts, and every decision still sees
every earlier one of the same transaction, exactly.

The rules that keep it exact:
- it is on only for a group run without savepoints (`begin(batched=True)`); a group
  rerun op by op with savepoints writes through, as before;
- an op that is not a hot-path op may touch counters directly (an admin reset, the lease
  sweep): before it runs, the pending changes are written and what was read is forgotten
  (`before_cold_op`);
- a rolling window is summed by SQL over its buckets: pending changes are written first;
- a savepoint that may roll back (`rereserve`) snapshots the cache and restores it;
- across transactions, what was known is kept only when no other connection committed in
  between (`PRAGMA data_version`, checked by the store) and no cold op ran; a rollback
  forgets everything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from capgate.core.engine import CounterState
from capgate.store import sqlite_queries as q

Instance = tuple[str, int]  # (counter, window_start)


class CounterCache:
    __slots__ = ("_active", "_known", "_pending")

    def __init__(self) -> None:
        self._active = False
        # As the table held them at the last write (or read); now: plus `_pending`. An add
        # touches only `_pending`; a read adds the two (one record per instance read, not
        # one per instance changed: a request changes each twice and reads it once).
        self._known: dict[Instance, CounterState] = {}
        self._pending: dict[Instance, list[int]] = {}  # [reserved, settled] not yet written

    def begin(self, batched: bool, keep: bool = False) -> None:
        """A transaction starts. `keep`: nobody else wrote since the last one committed,
        so what was known then is still true (nothing is pending after a commit)."""
        self._active = batched
        if not (keep and batched):
            self._known.clear()
        self._pending.clear()

    def forget(self) -> None:
        """The transaction rolled back: nothing read or pending is true any more."""
        self._known.clear()
        self._pending.clear()

    def before_cold_op(self, conn: sqlite3.Connection) -> None:
        self.write(conn)
        self._known.clear()

    def read(
        self, conn: sqlite3.Connection, wanted: Sequence[tuple[str, int, int | None]]
    ) -> dict[Instance, CounterState]:
        """Like `sqlite_queries.read_counters`, with this transaction's changes."""
        if not self._active:
            return q.read_counters(conn, wanted)
        if any(read_from is not None for _, _, read_from in wanted):
            self.write(conn)  # a rolling sum is computed by SQL from the table
            return q.read_counters(conn, wanted)
        known, pending = self._known, self._pending
        missing = [w for w in wanted if (w[0], w[1]) not in known]
        if missing:
            found = q.read_counters(conn, missing)
            for counter, start, _ in missing:
                known[(counter, start)] = found.get((counter, start), _ZERO)
        states = {}
        for counter, start, _ in wanted:
            instance = (counter, start)
            state, delta = known[instance], pending.get(instance)
            if delta is not None:
                state = CounterState(state.settled + delta[1], state.reserved + delta[0])
            states[instance] = state
        return states

    def add(self, conn: sqlite3.Connection, deltas: Iterable[tuple[str, int, int, int]]) -> None:
        """Add (reserved, settled) deltas, as `sqlite_queries.add_to_counters` does."""
        if not self._active:
            q.add_to_counters(conn, deltas)
            return
        pending = self._pending
        for counter, start, reserved, settled in deltas:
            delta = pending.get((counter, start))
            if delta is None:
                pending[(counter, start)] = [reserved, settled]
            else:
                delta[0] += reserved
                delta[1] += settled

    def write(self, conn: sqlite3.Connection) -> None:
        """Write the pending changes (before a commit, a cold op or a rolling sum)."""
        pending = self._pending
        if pending:
            q.add_to_counters(conn, ((c, s, d[0], d[1]) for (c, s), d in pending.items()))
            known = self._known
            for instance, (reserved, settled) in pending.items():
                state = known.get(instance)
                if state is not None:
                    known[instance] = CounterState(
                        state.settled + settled, state.reserved + reserved
                    )
            pending.clear()

    def snapshot(self) -> tuple[dict[Instance, CounterState], dict[Instance, list[int]]]:
        return dict(self._known), {k: list(v) for k, v in self._pending.items()}

    def restore(self, snap: tuple[dict[Instance, CounterState], dict[Instance, list[int]]]) -> None:
        """Back to `snap`, after a ROLLBACK TO the savepoint taken with it."""
        self._known, self._pending = dict(snap[0]), {k: list(v) for k, v in snap[1].items()}


_ZERO = CounterState()
