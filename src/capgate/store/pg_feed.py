"""The live feed's reads on PostgreSQL: ledger and audit rows above a cursor, without ever
passing an id that may still appear.

On SQLite ids grow in commit order (one writer at a time). Here they do not: two nodes
take ids 10 and 11, the second commits first, and a reader that moved its cursor to 11
would never see 10. So a reader stops before a missing id (a gap) until that id is known
to be final: committed, or never to be (its transaction rolled back, or the sequence
skipped it after a crash).

The horizon says which ids are final. Each look (at most every NOTE_EVERY_S) notes a
snapshot: the highest id visible then (M) and the first transaction id not yet started
then (xmax). Every id at or below M that was invisible then belongs to a transaction
running then; once every transaction older than xmax has ended (the current snapshot's
xmin has reached it) and a short grace has passed (an INSERT takes its id a moment before
its transaction id), every id up to M is final. Gaps at or below that mark are skipped;
rows above a younger gap wait: about a second after the transaction holding the id ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from capgate.store import pg_queries as q
from capgate.store.records import EventBatch
from capgate.store.rows import audit_from_row, entry_from_row

GRACE_S = 0.5  # a noted snapshot is trusted no sooner than this
MAX_WAIT_S = 30.0  # nor later than this, whatever runs (a stuck transaction)
NOTE_EVERY_S = 0.1  # a snapshot noted at most this often
MAX_NOTES = 400  # the oldest are dropped beyond (the mark then moves by the next one)
TABLES = ("requests", "audit")

_SNAPSHOT = (
    "SELECT (SELECT COALESCE(MAX(id), 0) FROM requests), (SELECT COALESCE(MAX(id), 0) FROM audit), "
    "pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
    "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
)


@dataclass(slots=True)
class _Noted:
    highest: tuple[int, int]  # the highest visible ledger and audit ids
    xmax: int
    at: float


class FeedHorizon:
    """Per process: up to which ledger and audit ids every row is final."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.final: tuple[int, int] | None = None  # None: not known yet
        self._noted: deque[_Noted] = deque(maxlen=MAX_NOTES)  # oldest first
        self.highest = (0, 0)  # as of the last look

    async def look(self, conn: q.Conn) -> None:
        """Note the current snapshot, and move the final mark past the noted ones due."""
        row = await conn.fetchrow(_SNAPSHOT)
        assert row is not None
        highest, xmin, xmax = (int(row[0]), int(row[1])), int(row[2]), int(row[3])
        self.highest = highest
        now = self._clock()
        noted = self._noted
        while noted:
            age = now - noted[0].at
            if not ((age >= GRACE_S and xmin >= noted[0].xmax) or age >= MAX_WAIT_S):
                break
            done = noted.popleft().highest
            old = self.final or (0, 0)
            self.final = (max(old[0], done[0]), max(old[1], done[1]))
        if not noted or now - noted[-1].at >= NOTE_EVERY_S:
            noted.append(_Noted(highest, xmax, now))


async def contiguous_end(conn: q.Conn, table: str, after: int, limit: int = 10_000) -> int:
    """The last id of the run of ids after `after` with no gap (`after` if none)."""
    ids = await conn.fetch(
        f"SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT $2",  # noqa: S608 - our table
        after,
        limit,
    )
    end = after
    for (found,) in ids:
        if found != end + 1:
            break
        end = found
    return end


def _until_gap(rows: list[int], cursor: int, final: int) -> int:
    """How many of `rows` (ids above `cursor`, ascending) can be given: all up to the first
    gap above the final mark."""
    expected = cursor + 1
    for n, found in enumerate(rows):
        if found != expected and expected > final:
            return n
        expected = found + 1
    return len(rows)


async def events_after(
    conn: q.Conn, horizon: FeedHorizon, request_id: int, audit_id: int, limit: int
) -> EventBatch:
    """Ledger and audit entries above the cursor, oldest first, up to the first gap that
    may still fill."""
    await horizon.look(conn)
    final = horizon.final or (-1, -1)
    entries = await conn.fetch(
        "SELECT * FROM requests WHERE id > $1 ORDER BY id LIMIT $2", request_id, limit
    )
    audits = await conn.fetch(
        "SELECT * FROM audit WHERE id > $1 ORDER BY id LIMIT $2", audit_id, limit
    )
    keep_entries = _until_gap([row["id"] for row in entries], request_id, final[0])
    keep_audit = _until_gap([row["id"] for row in audits], audit_id, final[1])
    return EventBatch(
        tuple(entry_from_row(row) for row in entries[:keep_entries]),
        tuple(audit_from_row(row) for row in audits[:keep_audit]),
    )


async def latest_ids(conn: q.Conn, horizon: FeedHorizon) -> tuple[int, int] | None:
    """A cursor from which the feed misses nothing: the end of the gapless run above the
    final mark. None while the mark is not known yet (ask again shortly)."""
    await horizon.look(conn)
    if horizon.final is None:
        return None
    return (
        await contiguous_end(conn, "requests", horizon.final[0]),
        await contiguous_end(conn, "audit", horizon.final[1]),
    )
