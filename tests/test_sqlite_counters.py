"""The per-transaction counter cache sees exactly what writing through would see.

Random sequences of the operations one write transaction can hold (reads of counter
instances, deltas, rolling sums, cold ops writing the table directly, savepoints rolled
back) run twice: through the cache, and straight against the table. Every read must
agree, and after the commit the tables must be identical.
"""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.store import sqlite_queries as q
from capgate.store.sqlite_counters import CounterCache

COUNTERS = ["key:k1:cost", "key:k1:req", "team:t1:cost"]
STARTS = [0, 60, 120]

instance = st.tuples(st.sampled_from(COUNTERS), st.sampled_from(STARTS))
delta = st.tuples(
    st.sampled_from(COUNTERS),
    st.sampled_from(STARTS),
    st.integers(-50, 50),
    st.integers(0, 50),
)
op = st.one_of(
    st.tuples(st.just("read"), st.lists(instance, min_size=1, max_size=4)),
    st.tuples(st.just("rolling"), st.sampled_from(COUNTERS)),
    st.tuples(st.just("add"), st.lists(delta, min_size=1, max_size=4)),
    st.tuples(st.just("cold"), delta),
    st.tuples(st.just("savepoint"), st.lists(delta, min_size=1, max_size=3), st.booleans()),
)


def _db(seed: list[tuple[str, int, int, int]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(
        "CREATE TABLE counters (counter TEXT NOT NULL, window_start INTEGER NOT NULL, "
        "settled INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (counter, window_start)) WITHOUT ROWID"
    )
    q.add_to_counters(conn, seed)
    return conn


def _table(conn: sqlite3.Connection) -> list[tuple[str, int, int, int]]:
    return conn.execute("SELECT * FROM counters ORDER BY counter, window_start").fetchall()


def _seen(states: dict) -> list:
    """What a caller sees: an absent instance reads as zero, like a zero row."""
    return sorted((k, v) for k, v in states.items() if v.settled or v.reserved)


def _run(conn: sqlite3.Connection, ops: list, cache: CounterCache | None) -> list:
    seen: list = []
    conn.execute("BEGIN IMMEDIATE")
    if cache is not None:
        cache.begin(batched=True)
    read = cache.read if cache else q.read_counters
    add = cache.add if cache else q.add_to_counters
    for kind, *args in ops:
        if kind == "read":
            wanted = [(c, s, None) for c, s in args[0]]
            seen.append(_seen(read(conn, wanted)))
        elif kind == "rolling":
            seen.append(_seen(read(conn, [(args[0], 120, 0)])))
        elif kind == "add":
            add(conn, args[0])
        elif kind == "cold":  # an admin op writing the table itself
            if cache is not None:
                cache.before_cold_op(conn)
            q.add_to_counters(conn, [args[0]])
        else:
            deltas, roll_back = args
            conn.execute("SAVEPOINT sp")
            snap = cache.snapshot() if cache else None
            add(conn, deltas)
            seen.append(_seen(read(conn, [(c, s, None) for c, s, _, _ in deltas])))
            if roll_back:
                conn.execute("ROLLBACK TO sp")
                if cache is not None:
                    cache.restore(snap)  # type: ignore[arg-type]
            conn.execute("RELEASE sp")
    if cache is not None:
        cache.write(conn)
    conn.execute("COMMIT")
    return seen


@settings(max_examples=300, deadline=None)
@given(seed=st.lists(delta, max_size=5), ops=st.lists(op, max_size=25))
def test_the_cache_reads_and_writes_what_writing_through_does(seed: list, ops: list) -> None:
    direct, cached = _db(seed), _db(seed)
    assert _run(cached, ops, CounterCache()) == _run(direct, ops, None)
    assert _table(cached) == _table(direct)


def test_one_upsert_per_instance_per_transaction() -> None:
    conn = _db([])
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    cache = CounterCache()
    conn.execute("BEGIN IMMEDIATE")
    cache.begin(batched=True)
    for _ in range(32):  # 32 requests of one key: read, reserve, settle
        cache.read(conn, [("key:k1:cost", 0, None), ("team:t1:cost", 0, None)])
        cache.add(conn, [("key:k1:cost", 0, 10, 0), ("team:t1:cost", 0, 10, 0)])
        cache.add(conn, [("key:k1:cost", 0, -10, 7), ("team:t1:cost", 0, -10, 7)])
    cache.write(conn)
    conn.execute("COMMIT")
    assert sum(s.startswith("SELECT") for s in statements) == 1
    assert sum(s.startswith("INSERT") for s in statements) == 2
    assert _table(conn) == [("key:k1:cost", 0, 224, 0), ("team:t1:cost", 0, 224, 0)]
