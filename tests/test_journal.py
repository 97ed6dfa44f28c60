"""The settlement journal, the liveness lock and settling exactly once, on a real SQLite
file in this process (the end-to-end outage tests are in test_store_outage.py).

- a settlement is in the journal when `settle` returns, before anything is awaited, and
  leaves it once committed;
- a journal replayed twice settles once; one replayed after a sweep reconciles the
  lease_expired entry to the real usage (flag `late_settlement`), and counters follow;
- a process that holds its liveness lock is not swept however old its lease; one that
  lost it (killed) is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import pytest

from capgate.core.engine import Amounts
from capgate.core.limits import Limit, Metric, ScopeKind
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.http.admin_json import entry_json, limit_usage_json
from capgate.keys import key_hash, new_key
from capgate.store import journal
from capgate.store.base import Outcome, RequestInfo, RequestQuery, Reservation, ScopeFields
from capgate.store.liveness import ProcessLock, is_alive, procs_dir
from capgate.store.sqlite import SQLiteStore
from conftest import need

WORST = Amounts(1, 1000, 2000, 33_000_000, 1)  # 1,000 in at $3/M + 2,000 out at $15/M
OUTCOME = Outcome(200, "ok", Usage(100, 50), 1_050_000, 12.5, 3.0)  # 100 in, 50 out


def run(test: Callable[..., Awaitable[None]], *args: Any) -> None:
    asyncio.run(test(*args))


async def _key(store: SQLiteStore) -> str:
    key_id, raw = new_key()
    limits = (
        Limit(Metric.COST_USD, WindowKind.DAY, 1_000_000_000),
        Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 100_000),
    )
    await store.create_scope(ScopeKind.TEAM, "t", ScopeFields())  # a key's team must exist
    await store.create_scope(
        ScopeKind.KEY, "k", ScopeFields(limits=limits, team="t"), scope_id=key_id,
        secret_hash=key_hash(raw),
    )  # fmt: skip
    return key_id


async def _reserve(store: SQLiteStore, key_id: str, n: int) -> Reservation:
    info = RequestInfo(
        f"req_{n}", key_id, "claude-sonnet-4-6", "anthropic", "claude-sonnet-4-6",
        "messages", True, time.time(),
    )  # fmt: skip
    res = await store.reserve(info, WORST)
    assert isinstance(res, Reservation)
    return res


async def _books(store: SQLiteStore) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    entries = [entry_json(e) for e in await store.query_requests(RequestQuery(key="k"))]
    key = store.key_by_id(_only_key(store))
    assert key is not None
    rows = [limit_usage_json(u) for u in await store.counters(key[0], time.time())]
    usage = {row["metric"]: row for row in rows}
    return entries, usage


def _only_key(store: SQLiteStore) -> str:
    (key_id,) = store._keys
    return key_id


# -- the journal file ----------------------------------------------------------------------


def test_a_line_holds_everything_a_settlement_needs() -> None:
    from capgate.core.engine import Charge
    from capgate.core.limits import Scope

    key = Scope(ScopeKind.KEY, "kid", "name", extra={"team": "t", "user": "u"})
    info = RequestInfo("r", "kid", "m", "p", "um", "messages", True, 1.5, 400)
    charges = (Charge("key:kid:cost", 7, Metric.COST_USD, 9),)
    res = Reservation("r", info, charges, WORST, key, 321)
    outcome = Outcome(499, "cancelled", None, 5, 1.0, None, 2, "gone", "um2", ("x",))
    back_res, back_outcome = journal.decode(journal.encode(res, outcome))
    assert back_outcome == outcome
    assert (back_res.id, back_res.info, back_res.charges, back_res.worst) == (
        res.id, info, charges, WORST,
    )  # fmt: skip
    assert back_res.max_output == 321
    assert (back_res.key.id, back_res.key.name, back_res.key.extra) == ("kid", "name", key.extra)
    with_usage = Outcome(200, "ok", Usage(1, 2, 3, 4, 5), 1, 1.0)
    assert journal.decode(journal.encode(res, with_usage))[1] == with_usage
    # A response cache's hit keeps its mark and what it saved when replayed after a crash.
    hit = Outcome(200, "ok", Usage(1, 2), 0, 1.0, cache="hit", saved_nano=12_345)
    assert journal.decode(journal.encode(res, hit))[1] == hit
    miss = Outcome(200, "ok", Usage(1, 2), 7, 1.0, cache="miss")
    assert journal.decode(journal.encode(res, miss))[1] == miss


def test_a_line_is_written_as_before() -> None:
    """The line's bytes are those older processes wrote and read (encode is tuned for
    speed: it must not change what it writes)."""
    from capgate.core.engine import Charge
    from capgate.core.limits import Scope

    key = Scope(ScopeKind.KEY, "kid", "name", extra={"team": "t"})
    charges = (Charge("key:kid:cost", 7, Metric.COST_USD, 9), Charge("c", 7, Metric.TOKENS, 3))
    plain = RequestInfo("r", "kid", "m", "p", "um", "chat", False, 1.5)
    hooked = RequestInfo("r", "kid", "m", "p", "um", "chat", True, 1.5, 400, "s", "pr", "rule")
    outcome = Outcome(200, "ok", Usage(1, 2), 5, 1.0, None, 1, None, "um2", ("x",))
    cached = Outcome(200, "ok", None, 5, 1.0, 0.5, 2, "e", None, (), 0, "hit", 7)
    assert journal.encode(Reservation("r", plain, charges, WORST, key), outcome) == (
        b'{"id":"r","info":["r","kid","m","p","um","chat",false,1.5,null],'
        b'"key":["kid","name",null,"t"],'
        b'"charges":[["key:kid:cost",7,"cost_usd",9],["c",7,"tokens",3]],'
        b'"worst":[1,1000,2000,33000000,1],"max_output":null,"fail_open":false,'
        b'"outcome":[200,"ok",5,1.0,null,1,null,"um2",["x"]],"usage":[1,2,0,0,0]}\n'
    )
    assert journal.encode(Reservation("r", hooked, (), WORST, key, 9, None, True), cached) == (
        b'{"id":"r","info":["r","kid","m","p","um","chat",true,1.5,400,"s","pr","rule"],'
        b'"key":["kid","name",null,"t"],"charges":[],'
        b'"worst":[1,1000,2000,33000000,1],"max_output":9,"fail_open":true,'
        b'"outcome":[200,"ok",5,1.0,0.5,2,"e",null,[]],"requests":0,"cache":["hit",7],'
        b'"usage":null}\n'
    )


def test_a_reservation_row_holds_what_its_transaction_decided(tmp_path: Path) -> None:
    """The row's info (what a sweep charges) is encoded before the transaction: it is
    encoded again when the key changed meanwhile (here in another process) or the budget
    clamped the request's output."""
    import sqlite3

    import orjson

    from capgate.core.engine import OutputFlex

    async def test() -> None:
        path = str(tmp_path / "capgate.db")
        first, second = SQLiteStore(path), SQLiteStore(path)
        await first.start()
        await second.start()
        try:
            key_id = await _key(first)
            await second.create_scope(ScopeKind.TEAM, "t2", ScopeFields())
            await second.update_scope(ScopeKind.KEY, "k", ScopeFields(team="t2"))
            assert first._keys[key_id][0].extra["team"] == "t"  # not reloaded yet
            moved = await _reserve(first, key_id, 1)
            assert moved.key.extra["team"] == "t2"
            flex = OutputFlex(200_000, 1, 1, 1000, 3_000_000_000, 15_000_000)
            info = RequestInfo("req_2", key_id, "m", "p", "m", "messages", False, time.time())
            clamped = await first.reserve(info, flex.amounts(200_000), flex)
            assert isinstance(clamped, Reservation) and clamped.max_output == 64_266
        finally:
            await second.close()
            await first.close()
        conn = sqlite3.connect(path)
        rows = dict(conn.execute("SELECT id, info FROM reservations").fetchall())
        conn.close()
        assert orjson.loads(rows["req_1"])["team"] == "t2"
        row = orjson.loads(rows["req_2"])
        assert (row["max_output"], row["worst"]) == (64_266, list(astuple(clamped.worst)))

    run(test)


def test_the_file_starts_over_when_nothing_waits_and_rotates_when_large(tmp_path: Path) -> None:
    from capgate.core.limits import Scope

    key = Scope(ScopeKind.KEY, "kid", "name")
    info = RequestInfo("r", "kid", "m", "p", "um", "messages", False, 1.0)
    res = Reservation("r", info, (), WORST, key)
    size = len(journal.encode(res, OUTCOME))
    # Two lines a file; cut back when nothing waits and the file holds two lines or more.
    book = journal.Journal(tmp_path / "j", "owner1", rotate_bytes=2 * size, truncate_bytes=size)
    book.open()
    first = book.append(res, OUTCOME)
    path = tmp_path / "j" / "owner1.jsonl"
    assert len(path.read_bytes().splitlines()) == 1  # written at once, no buffering
    book.done(first)
    assert path.read_bytes() == b""  # nothing waits: cut back
    tokens = [book.append(res, OUTCOME) for _ in range(5)]
    files = sorted(p.name for p in (tmp_path / "j").iterdir())
    assert files == ["owner1.1.jsonl", "owner1.2.jsonl", "owner1.jsonl"]
    assert book.waiting == 5
    for token in tokens[:-1]:
        book.done(token)
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["owner1.2.jsonl"]  # done: deleted
    book.close()  # one still waits: its file stays for the next start
    (left,) = (tmp_path / "j").iterdir()
    assert len(list(journal.read(left))) == 1
    left.write_bytes(left.read_bytes() + b'{"id": "cut sh')  # killed while writing
    assert len(list(journal.read(left))) == 1


def test_the_liveness_lock_lives_as_long_as_its_process(tmp_path: Path) -> None:
    procs = tmp_path / "db-procs"
    code = (
        "import sys, time; from pathlib import Path; "
        "from capgate.store.liveness import ProcessLock; "
        "ProcessLock(Path(sys.argv[1]), 'child').acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(procs)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert is_alive(procs, "child")
        assert is_alive(procs, "child")  # asking does not take the lock away
        os.kill(child.pid, signal.SIGSTOP)  # stalled, not dead
        assert is_alive(procs, "child")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert not is_alive(procs, "child")  # the kernel dropped it
        assert not is_alive(procs, "never-started")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()
    mine = ProcessLock(procs, "me")
    mine.acquire()
    assert is_alive(procs, "me")
    mine.release()
    assert not is_alive(procs, "me")


# -- settling exactly once -----------------------------------------------------------------


async def _test_settle_journals_before_it_returns(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.start()
    try:
        res = await _reserve(store, await _key(store), 1)
        pending = store.settle(res, OUTCOME)
        (path,) = journal.journal_dir(store.path).iterdir()
        (line,) = path.read_bytes().splitlines()  # on file before anything was awaited
        assert journal.decode(line)[0].id == res.id
        assert store.health().settlements_waiting == 1
        await pending
        assert store.health().settlements_waiting == 0
    finally:
        await store.close()
    assert not journal.journal_dir(store.path).exists() or not any(
        journal.journal_dir(store.path).iterdir()
    )


def test_settle_journals_before_it_returns(tmp_path: Path) -> None:
    run(_test_settle_journals_before_it_returns, tmp_path)


def _plant(store: SQLiteStore, owner: str, *lines: bytes) -> Path:
    """A journal left by a process that died (no liveness lock)."""
    path = journal.journal_dir(store.path) / f"{owner}.jsonl"
    path.write_bytes(b"".join(lines))
    return path


async def _test_a_journal_replayed_twice_settles_once(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.start()
    try:
        key_id = await _key(store)
        res = [await _reserve(store, key_id, n) for n in range(3)]
        lines = [journal.encode(r, OUTCOME) for r in res]
        for _ in range(2):
            path = _plant(store, "dead0001", *lines)
            await store._beat()
            assert not path.exists()  # replayed, committed, deleted
            entries, usage = await _books(store)
            assert sorted(e["request_id"] for e in entries) == ["req_0", "req_1", "req_2"]
            assert all(e["outcome"] == "ok" and e["flags"] == [] for e in entries)
            assert {e["output_tokens"] for e in entries} == {50}
            assert usage["cost_usd"]["used"] == "0.00315" and usage["cost_usd"]["reserved"] == "0"
            assert usage["output_tokens"]["used"] == 150
    finally:
        await store.close()


def test_a_journal_replayed_twice_settles_once(tmp_path: Path) -> None:
    run(_test_a_journal_replayed_twice_settles_once, tmp_path)


async def _test_a_late_settlement_reconciles_the_swept_entry(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    first = SQLiteStore(db, lease_seconds=1)
    await first.start()
    # Another process, its clock a minute ahead: every lease but its own has expired.
    sweeper = SQLiteStore(db, lease_seconds=1, clock=lambda: time.time() + 60)
    await sweeper.start()
    try:
        res = await _reserve(first, await _key(first), 1)
        await sweeper._beat()
        entries, usage = await _books(sweeper)
        assert entries == [] and usage["cost_usd"]["reserved"] == "0.033"  # alive: kept
        first._alive.release()
        await sweeper._beat()
        (swept,), usage = await _books(sweeper)
        assert swept["outcome"] == "lease_expired" and swept["output_tokens"] == 2000
        assert usage["cost_usd"]["used"] == "0.033" and usage["output_tokens"]["used"] == 2000

        await first.settle(res, OUTCOME)  # it was alive after all: the truth arrives late
        (entry,), usage = await _books(sweeper)
        assert entry["request_id"] == "req_1" and entry["outcome"] == "ok"
        assert entry["flags"] == ["late_settlement"]
        assert (entry["input_tokens"], entry["output_tokens"], entry["cost_usd"]) == (
            100, 50, "0.00105",
        )  # fmt: skip
        assert usage["cost_usd"]["used"] == "0.00105" and usage["cost_usd"]["reserved"] == "0"
        assert usage["output_tokens"]["used"] == 50

        path = _plant(sweeper, "dead0002", journal.encode(res, OUTCOME))  # and once more
        await sweeper._beat()
        assert not path.exists()
        assert await _books(sweeper) == ([entry], usage)  # nothing moved
    finally:
        await sweeper.close()
        first._alive.acquire()
        await first.close()


def test_a_late_settlement_reconciles_the_swept_entry(tmp_path: Path) -> None:
    run(_test_a_late_settlement_reconciles_the_swept_entry, tmp_path)


def test_the_lock_and_journal_live_beside_the_database(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    assert procs_dir(db) == tmp_path / "c.db-procs"
    assert journal.journal_dir(db) == tmp_path / "c.db-settlements"


@pytest.mark.parametrize("where", ["parent is a file", "path is a directory"])
def test_a_store_that_cannot_be_opened_says_so(tmp_path: Path, where: str) -> None:
    from capgate.errors import StoreUnavailable

    (tmp_path / "file").write_text("")
    (tmp_path / "dir.db").mkdir()
    db = tmp_path / "file" / "c.db" if where == "parent is a file" else tmp_path / "dir.db"
    store = SQLiteStore(str(db))
    with pytest.raises(StoreUnavailable, match=f"cannot open the database {db}"):
        asyncio.run(store.start())


async def _test_a_journal_that_cannot_be_replayed_does_not_stop_the_lease(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.start()
    try:
        res = await _reserve(store, await _key(store), 1)
        bad = replace(res, info=replace(res.info, started_at=None))  # type: ignore[arg-type]
        assert journal.decode(journal.encode(bad, OUTCOME))[0].info.started_at is None
        path = _plant(store, "dead0003", journal.encode(bad, OUTCOME))  # NOT NULL fails
        before = time.time()
        await store._beat()
        assert path.exists()  # kept for a second look
        beat = await store._read(
            lambda conn: conn.execute(
                "SELECT heartbeat_at FROM processes WHERE id=?", (store.owner,)
            ).fetchone()[0]
        )
        assert beat >= before  # the lease was renewed all the same
        entries, usage = await _books(store)
        assert entries == [] and usage["cost_usd"]["reserved"] == "0.033"  # nothing half done
    finally:
        await store.close()


def test_a_journal_that_cannot_be_replayed_does_not_stop_the_lease(tmp_path: Path) -> None:
    run(_test_a_journal_that_cannot_be_replayed_does_not_stop_the_lease, tmp_path)


async def _test_a_full_disk_does_not_stop_a_settlement(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    await store.start()
    try:
        res = await _reserve(store, await _key(store), 1)
        full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        os.dup2(full, store._journal._fd)
        os.close(full)
        await store.settle(res, OUTCOME)  # not journaled (logged), still written
        (entry,), usage = await _books(store)
        assert entry["outcome"] == "ok" and usage["cost_usd"]["used"] == "0.00105"
        assert store.health().settlements_waiting == 0
    finally:
        await store.close()


def test_a_full_disk_does_not_stop_a_settlement(tmp_path: Path) -> None:
    need(Path("/dev/full").exists(), "needs /dev/full")
    run(_test_a_full_disk_does_not_stop_a_settlement, tmp_path)
