"""The Store port's contract (store/base.py): one suite, run against every engine
(tests/store_engines.py), in-process, through the port only. The same calls must give
the same answers on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, Status
from capgate.core.money import Usage
from capgate.core.windows import WindowKind, parse_window, window_at
from capgate.errors import Conflict, InvalidRequest, NotFound, refusal_status
from capgate.keys import display_prefix, hook_display, key_hash, new_hook_token, new_key
from capgate.store.base import (
    LOGIN_MAX_FAILURES,
    LOGIN_WINDOW_S,
    Enrolment,
    Outcome,
    RequestInfo,
    RequestQuery,
    Reservation,
    ScopeFields,
    SettingsChanged,
    Store,
    unheld,
)
from capgate.store.records import (
    LEDGER_COLUMNS,
    EventBatch,
    KeyActivity,
    LedgerEntry,
    LimitUsage,
    UsageRow,
    scope_json,
)
from capgate.store.sqlite_schema import migrate
from store_engines import MakeStore, make_store, run, run_two

__all__ = ["make_store"]  # the fixture, parametrized over the engines

USD = 1_000_000_000
BASE = datetime(2026, 1, 15, 12, 0, tzinfo=UTC).timestamp()  # entries' times, a fixed day


def info(
    request_id: str, key: Scope, *, model: str = "m-a", at: float | None = None
) -> RequestInfo:
    return RequestInfo(
        request_id, key.id, model, "p", model + "-up", "messages", True,
        time.time() if at is None else at,
    )  # fmt: skip


async def make_key(store: Store, name: str, *limits: Limit, **fields: object) -> Scope:
    key_id, raw = new_key()
    return await store.create_scope(
        ScopeKind.KEY, name, ScopeFields(limits=limits, **fields),  # type: ignore[arg-type]
        scope_id=key_id, secret_hash=key_hash(raw), prefix=display_prefix(raw),
    )  # fmt: skip


async def admitted(store: Store, request: RequestInfo, worst: Amounts) -> Reservation:
    res = await store.reserve(request, worst)
    assert isinstance(res, Reservation), res
    return res


async def entry(
    store: Store,
    key: Scope,
    request_id: str,
    at: float,
    *,
    model: str = "m-a",
    cost: int = 1000,
    outcome: str = "ok",
    status: int = 200,
    latency: float = 10.0,
) -> None:
    """One settled ledger entry: 10 input and 5 output tokens, `cost` nano-dollars."""
    res = await admitted(store, info(request_id, key, model=model, at=at), Amounts(1, 10, 5, cost))
    await store.settle(res, Outcome(status, outcome, Usage(10, 5), cost, latency))


def used(rows: list[LimitUsage], metric: Metric) -> tuple[int, int]:
    (found,) = [u for u in rows if u.limit.metric is metric]
    return found.used, found.reserved


def test_a_ledger_entry_has_every_column_of_the_ledger(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "schema.db", isolation_level=None)
    migrate(conn)
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(requests)"))
    conn.close()
    assert columns == LEDGER_COLUMNS == tuple(f.name for f in fields(LedgerEntry))


# -- the hot path ---------------------------------------------------------------------------


def test_reserve_then_settle_counts_once(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        cost, requests = (
            Limit(Metric.COST_USD, WindowKind.DAY, USD),
            Limit(Metric.REQUESTS, WindowKind.MINUTE, 100),
        )
        key = await make_key(store, "k", cost, requests)
        cached = store.key_by_id(key.id)
        assert cached is not None and cached[0] == key
        request = info("r1", key)
        res = await admitted(store, request, Amounts(1, 1000, 2000, 30_000_000))
        assert res.id == "r1" and res.key.id == key.id
        now = time.time()
        held = await store.counters(key, now)
        assert [(u.limit, u.used, u.reserved) for u in held] == [
            (cost, 0, 30_000_000),
            (requests, 0, 1),
        ]
        assert held[0].resets_at == window_at(WindowKind.DAY, now, "UTC").resets_at
        assert (await store.metrics_snapshot(now, ledger=False)).reservations_held == 1
        outcome = Outcome(200, "ok", Usage(900, 400, 50, 10), 7_000_000, 12.5, ttft_ms=3.25)
        await store.settle(res, outcome)
        await store.settle(res, outcome)  # a retried settlement changes nothing
        after = await store.counters(key, time.time())
        assert [(u.used, u.reserved) for u in after] == [(7_000_000, 0), (1, 0)]
        (got,) = await store.query_requests(RequestQuery())
        assert got == LedgerEntry(
            id=got.id, request_id="r1", created_at=request.started_at, key_id=key.id,
            key_name="k", user=None, team=None, model="m-a", provider="p",
            upstream_model="m-a-up", endpoint="messages", stream=True, status=200,
            outcome="ok", input_tokens=900, output_tokens=400, cache_read_tokens=50,
            cache_write_tokens=10, cost_nano=7_000_000, latency_ms=12.5, ttft_ms=3.25,
            attempts=1, refusal=None, error=None, max_tokens_clamped=None, flags=(),
        )  # fmt: skip
        assert (await store.metrics_snapshot(now, ledger=False)).reservations_held == 0
        store.health()  # no I/O, never raises

    run(make_store, test)


def test_a_refusal_is_recorded_and_holds_nothing(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        key = await make_key(store, "k", Limit(Metric.REQUESTS, WindowKind.MINUTE, 1))
        await admitted(store, info("a", key), Amounts(1))
        refused = await store.reserve(info("b", key), Amounts(1))
        assert isinstance(refused, Refusal)
        assert (refused.code, refused.scope_kind, refused.scope_name) == (
            "limit_exceeded",
            "key",
            "k",
        )
        silent = await store.reserve(info("c", key), Amounts(1), record_refusal=False)
        assert isinstance(silent, Refusal)
        assert used(await store.counters(key, time.time()), Metric.REQUESTS) == (0, 1)
        (got,) = await store.query_requests(RequestQuery(outcome="refused"))
        assert (got.request_id, got.key_name, got.status) == ("b", "k", refusal_status(refused))
        assert got.refusal is not None and got.refusal["code"] == "limit_exceeded"
        assert got.refusal["limit"]["metric"] == "requests" and got.cost_nano == 0

        await store.set_status(ScopeKind.KEY, "k", Status.PAUSED)
        paused = await store.reserve(info("d", key), Amounts(1))
        assert isinstance(paused, Refusal) and paused.code == "paused"
        gone = await make_key(store, "gone")
        await store.delete_scope(ScopeKind.KEY, "gone")
        assert store.key_by_id(gone.id) is None
        deleted = await store.reserve(info("e", gone), Amounts(1))
        assert isinstance(deleted, Refusal) and deleted.code == "revoked"

    run(make_store, test)


def test_rereserve_moves_the_hold_or_leaves_it(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        key = await make_key(store, "k", Limit(Metric.COST_USD, WindowKind.DAY, USD // 10))
        first = await admitted(store, info("r", key), Amounts(1, cost_nano=40_000_000))
        moved = await store.rereserve(
            first, info("r", key, model="m-b"), Amounts(1, 0, 0, 60_000_000)
        )
        assert isinstance(moved, Reservation) and moved.info.model == "m-b"
        assert used(await store.counters(key, time.time()), Metric.COST_USD) == (0, 60_000_000)
        refused = await store.rereserve(moved, info("r", key), Amounts(1, cost_nano=150_000_000))
        assert isinstance(refused, Refusal) and refused.code == "limit_exceeded"
        assert used(await store.counters(key, time.time()), Metric.COST_USD) == (0, 60_000_000)
        assert await store.query_requests(RequestQuery()) == []  # a refused move: no entry
        await store.settle(moved, Outcome(200, "ok", Usage(10, 10), 5_000_000, 1.0))
        assert used(await store.counters(key, time.time()), Metric.COST_USD) == (5_000_000, 0)
        (got,) = await store.query_requests(RequestQuery())
        assert (got.model, got.cost_nano) == ("m-b", 5_000_000)
        late = await store.rereserve(moved, info("r", key), Amounts(1, cost_nano=1))
        assert isinstance(late, Refusal) and late.code == "lease_expired"

    run(make_store, test)


def test_a_config_change_reaches_another_process(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        key = await make_key(one, "k", Limit(Metric.REQUESTS, WindowKind.MINUTE, 10))
        await two.refresh()
        assert two.key_by_id(key.id) is not None
        await one.set_status(ScopeKind.KEY, "k", Status.PAUSED)
        refused = await two.reserve(info("x", key), Amounts(1))  # no refresh needed
        assert isinstance(refused, Refusal) and refused.code == "paused"
        await one.set_status(ScopeKind.KEY, "k", Status.ACTIVE)
        res = await admitted(two, info("y", key), Amounts(1))
        await two.settle(res, Outcome(200, "ok", Usage(1, 1), 0, 1.0))
        assert used(await one.counters(key, time.time()), Metric.REQUESTS) == (1, 0)
        assert [e.request_id for e in await one.query_requests(RequestQuery())] == ["y", "x"]

    run_two(make_store, test)


def test_a_rotation_keeps_the_key_and_reaches_another_process(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        key = await make_key(one, "k", Limit(Metric.REQUESTS, WindowKind.MINUTE, 10))
        await two.refresh()
        (_, old_hash) = two.key_by_id(key.id) or (None, b"")
        first = await one.rotate_key("k", b"h" * 32, 60.0, actor="ops")
        assert first.id == key.id and first.limits == key.limits
        assert one.key_by_id(key.id) == (first, b"h" * 32)
        await two.refresh()
        cached = two.key_by_id(key.id)
        assert cached is not None and cached[1] == b"h" * 32
        (old,) = two.retired_secrets(key.id)
        assert old.hash == old_hash and old.valid_until == pytest.approx(time.time() + 60, abs=5)
        assert first.extra["rotated_at"] == old.rotated_at
        assert first.extra["old_valid_until"] == old.valid_until
        # A second rotation with no grace ends the first old secret's grace too.
        await one.rotate_key("k", b"i" * 32, 0.0)
        await two.refresh()
        newer, older = two.retired_secrets(key.id)
        assert (newer.hash, older.hash) == (b"h" * 32, old_hash)
        assert older.valid_until == newer.valid_until <= time.time()
        (audit, *_) = await one.audit(10)
        assert (audit.action, audit.target) == ("rotate", "key:k")
        assert audit.after is not None and audit.after["rotated_at"] is not None
        assert "hash" not in str(audit.before) + str(audit.after)
        with pytest.raises(NotFound):
            await one.rotate_key("nope", b"j" * 32, 0.0)
        await one.set_status(ScopeKind.KEY, "k", Status.REVOKED)
        with pytest.raises(InvalidRequest, match="revoked"):
            await one.rotate_key("k", b"j" * 32, 0.0)

    run_two(make_store, test)


# -- scopes, members, audit ----------------------------------------------------------------


def test_scope_admin_and_its_audit(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        budget = Limit(Metric.COST_USD, WindowKind.MONTH, USD)
        team = await store.create_scope(
            ScopeKind.TEAM, "t", ScopeFields(limits=(budget,)), actor="alice"
        )
        assert (team.kind, team.name, team.limits, team.status) == (
            ScopeKind.TEAM, "t", (budget,), Status.ACTIVE,
        )  # fmt: skip
        with pytest.raises(Conflict):
            await store.create_scope(ScopeKind.TEAM, "t", ScopeFields())
        with pytest.raises(InvalidRequest):
            await make_key(store, "k", team="nope")
        assert await store.list_scopes(ScopeKind.KEY) == []  # nothing half made
        key = await make_key(store, "k", team="t", metadata={"a": 1})
        assert key.extra["team"] == "t" and key.extra["metadata"] == {"a": 1}
        assert await store.get_scope(ScopeKind.KEY, "k") == key
        with pytest.raises(Conflict):
            await store.delete_scope(ScopeKind.TEAM, "t")  # a key still names it
        changed = await store.update_scope(
            ScopeKind.KEY, "k", ScopeFields(models=("m-*",), clear=frozenset({"team"})), "bob"
        )
        assert changed.models == ("m-*",) and changed.extra["team"] is None
        assert changed.extra["metadata"] == {"a": 1}  # untouched fields stay
        await store.set_status(ScopeKind.KEY, "k", Status.PAUSED, "bob")
        await store.set_status(ScopeKind.KEY, "k", Status.ACTIVE, "bob")
        revoked = await store.set_status(ScopeKind.KEY, "k", Status.REVOKED, "bob")
        assert revoked.status is Status.REVOKED
        with pytest.raises(InvalidRequest):
            await store.set_status(ScopeKind.KEY, "k", Status.ACTIVE)
        await store.delete_scope(ScopeKind.TEAM, "t", "carol")
        for call in (
            store.get_scope(ScopeKind.TEAM, "t"),
            store.update_scope(ScopeKind.TEAM, "t", ScopeFields()),
            store.set_status(ScopeKind.TEAM, "t", Status.PAUSED),
            store.reset_usage(ScopeKind.TEAM, "t"),
            store.delete_scope(ScopeKind.TEAM, "t"),
            store.members(ScopeKind.TEAM, "t"),
        ):
            with pytest.raises(NotFound):
                await call

        log = await store.audit(100)
        assert [(a.actor, a.action, a.target) for a in log] == [
            ("carol", "delete", "team:t"),
            ("bob", "revoke", "key:k"),
            ("bob", "resume", "key:k"),
            ("bob", "pause", "key:k"),
            ("bob", "update", "key:k"),
            ("admin", "create", "key:k"),
            ("alice", "create", "team:t"),
        ]
        assert [a.id for a in log] == sorted((a.id for a in log), reverse=True)
        assert log[6].before is None and log[6].after == scope_json(team)
        assert log[5].before is None and log[5].after == scope_json(key)
        assert log[4].before == scope_json(key) and log[4].after == scope_json(changed)
        assert log[3].after is not None and log[3].after["status"] == "paused"
        assert log[2].before == log[3].after and log[1].after == scope_json(revoked)
        assert log[0].before == scope_json(team) and log[0].after is None
        assert [a.action for a in await store.audit(2)] == ["delete", "revoke"]

    run(make_store, test)


def test_scopes_are_listed_by_name_and_members_named(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await store.create_scope(ScopeKind.ORG, "o", ScopeFields())
        for team in ("tb", "ta"):
            await store.create_scope(ScopeKind.TEAM, team, ScopeFields(org="o"))
        for user in ("u2", "u1"):
            await store.create_scope(ScopeKind.USER, user, ScopeFields())
        await make_key(store, "k3", team="ta", user="u2")
        await make_key(store, "k1", team="ta", user="u1")
        await make_key(store, "k2", team="ta", user="u1")
        key = await make_key(store, "k0", team="tb")
        assert [s.name for s in await store.list_scopes(ScopeKind.TEAM)] == ["ta", "tb"]
        assert [s.name for s in await store.list_scopes(ScopeKind.KEY)] == ["k0", "k1", "k2", "k3"]
        assert await store.members(ScopeKind.TEAM, "ta") == {
            "keys": ["k1", "k2", "k3"],
            "users": ["u1", "u2"],
        }
        assert await store.members(ScopeKind.USER, "u1") == {"keys": ["k1", "k2"]}
        assert await store.members(ScopeKind.ORG, "o") == {"teams": ["ta", "tb"]}
        assert await store.members(ScopeKind.KEY, "k1") == {}
        assert [(s.kind, s.name) for s in store.scopes_above(key)] == [
            (ScopeKind.TEAM, "tb"),
            (ScopeKind.ORG, "o"),
        ]
        with pytest.raises(Conflict):
            await store.delete_scope(ScopeKind.ORG, "o")  # teams still name it

    run(make_store, test)


def test_counters_of_every_window_and_reset_usage(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        team_budget = Limit(Metric.COST_USD, WindowKind.MONTH, USD)
        await store.create_scope(ScopeKind.TEAM, "t", ScopeFields(limits=(team_budget,)))
        limits = (
            Limit(Metric.COST_USD, WindowKind.DAY, USD),
            Limit(Metric.OUTPUT_TOKENS, parse_window("rolling-5h"), 10_000),
            Limit(Metric.REQUESTS, WindowKind.TOTAL, 100, model="m-b*"),
            Limit(Metric.CONCURRENT, WindowKind.TOTAL, 5),
        )
        key = await make_key(store, "k", *limits, team="t", timezone="Asia/Tokyo")
        first = await admitted(store, info("a", key), Amounts(1, 10, 100, 3000))
        await store.settle(first, Outcome(200, "ok", Usage(10, 40), 2000, 1.0))
        await admitted(store, info("b", key), Amounts(1, 10, 100, 3000))  # still held
        now = time.time()
        rows = await store.counters(key, now)
        assert [u.limit for u in rows] == list(limits)
        assert [(u.used, u.reserved) for u in rows] == [(2000, 3000), (40, 100), (0, 0), (0, 1)]
        assert [u.resets_at for u in rows] == [
            window_at(limit.window, now, "Asia/Tokyo").resets_at for limit in limits
        ]
        assert rows[0].remaining == USD - 5000
        team = await store.get_scope(ScopeKind.TEAM, "t")
        assert [(u.used, u.reserved) for u in await store.counters(team, now)] == [(2000, 3000)]
        await store.reset_usage(ScopeKind.KEY, "k")
        after = await store.counters(key, time.time())
        assert [(u.used, u.reserved) for u in after] == [(0, 3000), (0, 100), (0, 0), (0, 1)]
        assert used(await store.counters(team, now), Metric.COST_USD) == (2000, 3000)
        assert (await store.audit(1))[0].action == "reset-usage"

    run(make_store, test)


# -- reading the ledger ----------------------------------------------------------------------


async def _ledger(store: Store) -> tuple[Scope, Scope]:
    """k1 (team t, user u): five `ok` entries a minute apart from BASE, 1000 nano each;
    k2: an `error` (502) and an `ok` at BASE + 1 day, and a refusal (paused)."""
    await store.create_scope(ScopeKind.TEAM, "t", ScopeFields())
    await store.create_scope(ScopeKind.USER, "u", ScopeFields())
    k1 = await make_key(store, "k1", team="t", user="u")
    k2 = await make_key(store, "k2")
    for n in range(5):
        await entry(store, k1, f"k1-{n}", BASE + 60 * n, latency=10.0 * (n + 1))
    day2 = BASE + 86400
    await entry(store, k2, "k2-0", day2, model="m-b", cost=7000, outcome="error", status=502)
    await entry(store, k2, "k2-1", day2 + 1, model="m-b", cost=9000, latency=100.0)
    await store.set_status(ScopeKind.KEY, "k2", Status.PAUSED)
    refused = await store.reserve(info("k2-2", k2, model="m-b", at=day2 + 2), Amounts(1))
    assert isinstance(refused, Refusal)
    await store.set_status(ScopeKind.KEY, "k2", Status.ACTIVE)
    return k1, k2


def test_queries_filter_and_page_by_cursor(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await _ledger(store)

        async def ids(**filters: object) -> list[str]:
            query = RequestQuery(**filters)  # type: ignore[arg-type]
            return [e.request_id for e in await store.query_requests(query)]

        everything = await store.query_requests(RequestQuery())
        assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
        assert [e.request_id for e in everything] == [
            "k2-2", "k2-1", "k2-0", "k1-4", "k1-3", "k1-2", "k1-1", "k1-0",
        ]  # fmt: skip
        k1 = ["k1-4", "k1-3", "k1-2", "k1-1", "k1-0"]
        assert await ids(key="k1") == await ids(team="t") == await ids(user="u") == k1
        assert await ids(model="m-b") == ["k2-2", "k2-1", "k2-0"]
        assert await ids(provider="p", outcome="error") == await ids(status=502) == ["k2-0"]
        assert await ids(outcome="refused") == ["k2-2"]
        assert await ids(request_id="k1-3") == ["k1-3"]
        assert await ids(since=BASE + 60, until=BASE + 180) == ["k1-2", "k1-1"]
        assert await ids(key="k1", model="m-b") == []
        pages, cursor = [], None
        while True:
            page = await store.query_requests(RequestQuery(limit=3, cursor=cursor))
            pages.append([e.request_id for e in page])
            if len(page) < 3:
                break
            cursor = page[-1].id
        assert pages == [["k2-2", "k2-1", "k2-0"], ["k1-4", "k1-3", "k1-2"], ["k1-1", "k1-0"]]

    run(make_store, test)


def test_usage_grouped_and_ordered(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await _ledger(store)
        by_key = await store.usage("key", None, None)
        assert by_key == [
            UsageRow("k2", 3, 1, 1, 20, 10, 0, 0, 16_000),
            UsageRow("k1", 5, 0, 0, 50, 25, 0, 0, 5000),
        ]
        by_team = await store.usage("team", None, None)
        assert [(r.group, r.cost_nano) for r in by_team] == [(None, 16_000), ("t", 5000)]
        by_day = await store.usage("day", None, None)
        assert [(r.group, r.requests) for r in by_day] == [("2026-01-16", 3), ("2026-01-15", 5)]
        by_outcome = await store.usage("outcome", BASE + 86400, None)
        assert [(r.group, r.requests) for r in by_outcome] == [
            ("ok", 1), ("error", 1), ("refused", 1),
        ]  # fmt: skip
        assert await store.usage("model", BASE, BASE + 120) == [
            UsageRow("m-a", 2, 0, 0, 20, 10, 0, 0, 2000)
        ]
        # Equal costs: the group decides, the None group first.
        day4 = BASE + 3 * 86400
        await entry(store, await make_key(store, "k4", team="t"), "k4-0", day4, cost=0)
        await entry(store, await make_key(store, "k3"), "k3-0", day4, cost=0)
        ties = await store.usage("team", day4, None)
        assert [(r.group, r.cost_nano) for r in ties] == [(None, 0), ("t", 0)]
        ties = await store.usage("key", day4, None)
        assert [(r.group, r.cost_nano) for r in ties] == [("k3", 0), ("k4", 0)]

    run(make_store, test)


def test_summary_series_and_key_activity(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        k1, k2 = await _ledger(store)
        summary = await store.summary(RequestQuery())
        assert (summary.requests, summary.refused, summary.errors, summary.keys) == (8, 1, 1, 2)
        assert (summary.input_tokens, summary.output_tokens, summary.cost_nano) == (70, 35, 21_000)
        assert summary.refusals_by_reason == {"paused": 1}
        assert summary.error_rate == round(1 / 7, 6)
        # ok latencies 10, 20, 30, 40, 50, 100: nearest rank p50 = 3rd, p95 = 6th
        assert (summary.latency_p50_ms, summary.latency_p95_ms) == (30.0, 100.0)
        only = await store.summary(RequestQuery(key="k1", since=BASE + 60, until=BASE + 121))
        assert (only.requests, only.cost_nano, only.keys, only.latency_p50_ms) == (2, 2000, 1, 20.0)
        empty = await store.summary(RequestQuery(key="nobody"))
        assert (empty.requests, empty.cost_nano, empty.latency_p50_ms, empty.error_rate) == (
            0, 0, None, 0.0,
        )  # fmt: skip

        rows = await store.series_rows(RequestQuery(since=BASE, until=BASE + 2 * 86400), "key", 120)
        got = {
            (r.bucket, r.group, r.requests, r.cost_nano, r.tokens, r.refused, r.errors)
            for r in rows
        }
        day2 = int(BASE) + 86400
        assert got == {
            (int(BASE), "k1", 2, 2000, 30, 0, 0),
            (int(BASE) + 120, "k1", 2, 2000, 30, 0, 0),
            (int(BASE) + 240, "k1", 1, 1000, 15, 0, 0),
            (day2, "k2", 3, 16_000, 30, 1, 1),
        }
        whole = await store.series_rows(RequestQuery(key="k2"), None, 86400)
        assert [(r.bucket, r.group, r.requests) for r in whole] == [
            (day2 // 86400 * 86400, None, 3)
        ]

        activity = await store.key_activity(BASE + 86400, BASE)
        assert activity[k1.id] == KeyActivity(0, 5000, BASE + 240)
        assert activity[k2.id] == KeyActivity(16_000, 16_000, BASE + 86400 + 2)
        idle = await make_key(store, "idle")
        assert (await store.key_activity(BASE, BASE))[idle.id] == KeyActivity(0, 0, None)

    run(make_store, test)


def test_a_set_of_teams_filters_the_ledger_and_its_folded_days(make_store: MakeStore) -> None:
    """`RequestQuery.teams` (a team admin of several teams): the entries, totals and series
    of any of those teams, kept or folded into ledger_daily, never another team's."""

    async def test(store: Store) -> None:
        await _ledger(store)  # k1 in team t (5 entries), k2 in none (3)
        for team in ("t2", "t3"):
            await store.create_scope(ScopeKind.TEAM, team, ScopeFields())
        await entry(store, await make_key(store, "k5", team="t2"), "k5-0", BASE + 30, cost=4000)
        await entry(store, await make_key(store, "k6", team="t3"), "k6-0", BASE + 31, cost=8000)

        async def ids(**filters: object) -> list[str]:
            query = RequestQuery(**filters)  # type: ignore[arg-type]
            return [e.request_id for e in await store.query_requests(query)]

        both = ["k5-0", "k1-4", "k1-3", "k1-2", "k1-1", "k1-0"]  # newest id first
        assert await ids(teams=frozenset({"t", "t2"})) == both
        assert await ids(teams=frozenset({"t2"})) == ["k5-0"]
        assert await ids(teams=frozenset({"t2", "nope"}), team="t2") == ["k5-0"]
        assert await ids(teams=frozenset({"t2"}), team="t") == []
        assert await ids(teams=frozenset()) == []
        assert await ids(teams=frozenset({"t", "t2"}), limit=2, cursor=None) == both[:2]

        async def totals(teams: frozenset[str]) -> tuple[int, int, int]:
            found = await store.summary(RequestQuery(teams=teams))
            return found.requests, found.cost_nano, found.keys

        assert await totals(frozenset({"t", "t2"})) == (6, 9000, 2)
        assert await totals(frozenset({"t3"})) == (1, 8000, 1)
        rows = await store.series_rows(RequestQuery(teams=frozenset({"t", "t2"})), "team", 86400)
        assert sorted((r.group, r.requests, r.cost_nano) for r in rows) == [
            ("t", 5, 5000), ("t2", 1, 4000),
        ]  # fmt: skip
        # Folded days (ledger pruning) are filtered the same way.
        old = await store.old_entries(BASE + 86400, 100)
        assert await store.fold_entries([e.id for e in old], BASE + 86400) == 7
        assert await ids(teams=frozenset({"t", "t2"})) == []
        assert await totals(frozenset({"t", "t2"})) == (6, 9000, 2)
        assert await totals(frozenset({"t3"})) == (1, 8000, 1)
        rows = await store.series_rows(RequestQuery(teams=frozenset({"t", "t2"})), None, 86400)
        assert [(r.requests, r.cost_nano) for r in rows] == [(6, 9000)]

    run(make_store, test)


def test_metrics_snapshot_and_the_live_feed(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        assert await store.latest_ids() == (0, 0)
        k1, _ = await _ledger(store)
        await store.update_scope(
            ScopeKind.KEY, "k1", ScopeFields(limits=(Limit(Metric.REQUESTS, WindowKind.TOTAL, 50),))
        )
        await admitted(store, info("held", k1), Amounts(1))
        snap = await store.metrics_snapshot(time.time(), ledger=True)
        assert [(s.name, u.limit.metric, u.used, u.reserved) for s, u in snap.limits] == [
            ("k1", Metric.REQUESTS, 0, 1)  # set after its five entries: counts from now
        ]
        assert snap.reservations_held == 1 and snap.ledger is not None
        assert snap.ledger.requests == {"ok": 6, "error": 1, "refused": 1}
        assert (snap.ledger.cost_nano, snap.ledger.input_tokens, snap.ledger.output_tokens) == (
            21_000, 70, 35,
        )  # fmt: skip
        assert snap.ledger.refusals == {"paused": 1} and snap.ledger.flagged == {}
        assert (await store.metrics_snapshot(time.time(), ledger=False)).ledger is None

        last_entry, last_audit = await store.latest_ids()
        batch = await store.events_after(0, 0)
        assert [e.id for e in batch.entries] == sorted(e.id for e in batch.entries)
        assert [e.request_id for e in batch.entries][:2] == ["k1-0", "k1-1"]
        assert batch.entries[-1].id == last_entry and batch.audit[-1].id == last_audit
        assert [a.action for a in batch.audit] == [
            "create", "create", "create", "create", "pause", "resume", "update",
        ]  # fmt: skip
        assert await store.events_after(last_entry, last_audit) == EventBatch()
        some = await store.events_after(batch.entries[2].id, batch.audit[4].id, limit=2)
        assert [e.request_id for e in some.entries] == ["k1-3", "k1-4"]
        assert [a.action for a in some.audit] == ["resume", "update"]

    run(make_store, test)


# -- sessions, login throttle, settings, meta --------------------------------------------------


def test_sessions_are_shared_and_expire(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        made = await one.create_session(b"h" * 32, "admin@dashboard", "tag", 3600)
        assert made.expires_at == pytest.approx(made.created_at + 3600)
        assert await two.get_session(b"h" * 32) == made
        assert await two.get_session(b"x" * 32) is None
        await one.create_session(b"e" * 32, "admin@dashboard", "tag", -1)  # already over
        assert await two.get_session(b"e" * 32) is None
        await two.delete_session(b"h" * 32)
        assert await one.get_session(b"h" * 32) is None
        await two.delete_session(b"h" * 32)  # again: nothing happens

    run_two(make_store, test)


def test_login_throttle_counts_across_processes(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        t0 = 1_000_000.0
        for n in range(LOGIN_MAX_FAILURES - 1):
            await (one if n % 2 else two).login_failed("10.0.0.1", t0 + n)
        assert await one.login_blocked("10.0.0.1", t0 + 20) is None
        await two.login_failed("10.0.0.1", t0 + 20)
        wait = await one.login_blocked("10.0.0.1", t0 + 30)
        assert wait == pytest.approx(LOGIN_WINDOW_S - 30)  # until the oldest leaves the window
        assert await two.login_blocked("10.0.0.2", t0 + 30) is None  # another address
        assert await one.login_blocked("10.0.0.1", t0 + LOGIN_WINDOW_S + 1) is None
        await one.login_succeeded("10.0.0.1")
        assert await two.login_blocked("10.0.0.1", t0 + 30) is None
        for n in range(LOGIN_MAX_FAILURES):
            await one.login_failed("10.0.0.3", t0 + n)
        assert await two.login_blocked("10.0.0.3", t0 + 10) is not None
        # A failure a window later deletes the old ones, of every address.
        await two.login_failed("10.0.0.4", t0 + LOGIN_WINDOW_S + 10)
        assert await one.login_blocked("10.0.0.3", t0 + 10) is None

    run_two(make_store, test)


def test_settings_and_meta(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        assert await one.get_settings() == {}
        stored = {"timezone": "Europe/Paris", "credit_weights": {"m-*": 2}}
        before, after = {"timezone": "UTC"}, {"timezone": "Europe/Paris"}
        await one.put_settings(stored, before, after, "admin@dashboard")
        assert await two.get_settings() == stored
        (audit,) = await two.audit(1)
        assert (audit.actor, audit.action, audit.target) == (
            "admin@dashboard",
            "settings",
            "settings",
        )
        assert (audit.before, audit.after) == (before, after)
        # A change made on what was stored: refused, nothing written, once another
        # change came between (two processes' admins at once lose neither).
        with pytest.raises(SettingsChanged):
            await two.put_settings({"timezone": "UTC"}, after, before, expected={})
        assert await one.get_settings() == stored
        assert len(await one.audit(10)) == 1
        await two.put_settings({}, after, before, expected=stored)
        assert await one.get_settings() == {}
        assert await one.get_meta("admin_key_hash") is None
        await one.set_meta("admin_key_hash", "ab" * 32)
        await two.set_meta("admin_key_hash", "cd" * 32)  # replaces
        assert await one.get_meta("admin_key_hash") == "cd" * 32

    run_two(make_store, test)


# -- hook mode ------------------------------------------------------------------------------


def enrolment(hostname: str = "laptop") -> Enrolment:
    key_id, raw = new_hook_token()
    return Enrolment(
        hostname, "linux", "dev", ("claude",), "1.0", key_id, key_hash(raw), hook_display(raw)
    )


async def hook_user(store: Store, name: str = "alice", *limits: Limit) -> Scope:
    return await store.create_scope(ScopeKind.USER, name, ScopeFields(limits=limits))


def test_install_codes_are_single_use_and_expire(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await hook_user(store)
        with pytest.raises(NotFound):
            await store.create_hook_code(b"\x01" * 32, "nobody", time.time() + 60, ())
        code = await store.create_hook_code(b"\xab" * 32, "alice", time.time() + 60, ("claude",))
        assert (code.id, code.user, code.agents) == ("abababab", "alice", ("claude",))
        old = await store.create_hook_code(b"\xcd" * 32, "alice", time.time() - 1, ())
        (listed, listed_old) = sorted(await store.list_hook_codes(), key=lambda c: c.id)
        assert listed.state(time.time()) == "open" and listed_old.id == old.id
        assert listed_old.state(time.time()) == "expired"

        first = enrolment()
        enrolled = await store.enrol_hook_machine(b"\xab" * 32, first)
        assert enrolled is not None
        machine, used_code = enrolled
        assert (machine.name, machine.id, machine.extra["user"]) == (
            "alice@laptop",
            first.key_id,
            "alice",
        )
        assert machine.extra["metadata"]["hook"]["hostname"] == "laptop"
        assert store.key_by_id(first.key_id) is not None  # in the cache at once
        assert used_code.used_at is not None and used_code.machine == first.key_id
        assert await store.enrol_hook_machine(b"\xab" * 32, enrolment()) is None  # used
        assert await store.enrol_hook_machine(b"\xcd" * 32, enrolment()) is None  # expired
        assert await store.enrol_hook_machine(b"\xee" * 32, enrolment()) is None  # unknown
        (state,) = [c for c in await store.list_hook_codes() if c.id == "abababab"]
        assert state.state(time.time()) == "used"
        (audit, *_) = await store.audit(10)
        assert (audit.action, audit.target, audit.actor) == (
            "hook-enrol",
            "key:alice@laptop",
            "hook",
        )

        again = await store.create_hook_code(b"\x02" * 32, "alice", time.time() + 60, ())
        second = await store.enrol_hook_machine(b"\x02" * 32, enrolment("laptop"))
        assert second is not None and second[0].name == "alice@laptop-2"
        (m1, m2) = sorted(await store.list_hook_machines(), key=lambda m: m.key_id != first.key_id)
        assert (m1.key_id, m1.hook_version, m1.tampered_at) == (first.key_id, "1.0", None)
        assert m2.last_seen is not None

        await store.delete_hook_code(again.id)
        with pytest.raises(NotFound):
            await store.delete_hook_code(again.id)
        assert {c.id for c in await store.list_hook_codes()} == {"abababab", old.id}

    run(make_store, test)


def test_an_install_code_is_redeemed_once_by_two_processes_at_once(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        await hook_user(one)
        for n in range(5):
            code = bytes([n]) * 32
            await one.create_hook_code(code, "alice", time.time() + 60, ())
            got = await asyncio.gather(
                one.enrol_hook_machine(code, enrolment(f"h{n}")),
                two.enrol_hook_machine(code, enrolment(f"h{n}")),
            )
            assert sum(g is not None for g in got) == 1, got
        assert len(await two.list_hook_machines()) == 5
        assert len([k for k in await one.list_scopes(ScopeKind.KEY)]) == 5

    run_two(make_store, test)


def test_machines_are_touched_and_marked_tampered(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await hook_user(store)
        await store.create_hook_code(b"\x03" * 32, "alice", time.time() + 60, ())
        e = enrolment()
        assert await store.enrol_hook_machine(b"\x03" * 32, e) is not None
        (before,) = await store.list_hook_machines()
        await store.touch_hook_machine(e.key_id, "1.0")  # within a minute, same version
        assert (await store.list_hook_machines())[0].last_seen == before.last_seen
        await store.touch_hook_machine(e.key_id, "1.1")  # a new version is written at once
        (after,) = await store.list_hook_machines()
        assert after.hook_version == "1.1" and after.last_seen is not None
        assert before.last_seen is not None and after.last_seen >= before.last_seen
        await store.mark_hook_tampered(e.key_id, ("/etc/capgate-hook/hook.py",))
        (marked,) = await store.list_hook_machines()
        assert marked.tampered_at is not None
        assert marked.tamper_files == ("/etc/capgate-hook/hook.py",)
        (audit, *_) = await store.audit(5)
        assert (audit.action, audit.target) == ("hook-tamper", "key:alice@laptop")
        with pytest.raises(NotFound):
            await store.mark_hook_tampered("nosuchkey", ())

    run(make_store, test)


def test_a_kill_and_a_resume_are_one_change_each(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        user = await one.create_scope(ScopeKind.USER, "bob", ScopeFields(metadata={"x": 1}))
        key = await make_key(one, "bob@laptop", user="bob")
        killed = await one.kill_user("bob", True, "carol")
        assert (killed.status, killed.extra["metadata"]) == (
            Status.PAUSED,
            {"x": 1, "hook_logout": True},
        )
        await two.refresh()  # the other process sees the kill whole
        entry = two.key_by_id(key.id)
        assert entry is not None
        (above,) = two.scopes_above(entry[0])
        assert (above.status, above.extra["metadata"]["hook_logout"]) == (Status.PAUSED, True)
        resumed = await two.resume_user("bob", "dave")
        assert (resumed.status, resumed.extra["metadata"]) == (Status.ACTIVE, {"x": 1})
        assert await one.get_scope(ScopeKind.USER, "bob") == resumed
        log = [a for a in await one.audit(10) if a.target == "user:bob"]
        assert [(a.actor, a.action) for a in log] == [
            ("dave", "resume"), ("carol", "kill"), ("admin", "create"),
        ]  # fmt: skip
        assert log[1].before == scope_json(user) and log[1].after == scope_json(killed)
        assert log[0].before == scope_json(killed) and log[0].after == scope_json(resumed)
        with pytest.raises(NotFound):
            await one.kill_user("nobody", True)
        await one.set_status(ScopeKind.USER, "bob", Status.REVOKED)
        with pytest.raises(InvalidRequest):
            await two.kill_user("bob", False)
        with pytest.raises(InvalidRequest):
            await two.resume_user("bob")
        assert [a.action for a in await one.audit(2)] == ["revoke", "resume"]

    run_two(make_store, test)


def test_a_lease_is_settled_by_id_from_another_process_once(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        limits = (
            Limit(Metric.REQUESTS, WindowKind.DAY, 10),
            Limit(Metric.CREDITS, WindowKind.DAY, 100),
            Limit(Metric.TOKENS, WindowKind.DAY, 1_000_000),
        )
        key = await make_key(one, "alice@laptop", *limits)
        lease = "hp-" + "0" * 32
        request = replace(info(lease, key), session="s1", prompt="p1")
        await admitted(one, request, Amounts(1, 20_000, 2_000, 5_000, 3))
        rows = await two.counters(key, time.time())
        assert [(u.used, u.reserved) for u in rows] == [(0, 1), (0, 3), (0, 22_000)]
        assert await two.lease_held(lease)
        assert await two.leases_before(time.time() + 1) == [lease]
        assert await two.leases_before(time.time() - 60) == []
        assert await two.session_leases(key.id, "s1") == [lease]
        assert await two.session_leases(key.id, "s2") == []
        assert await two.session_leases("other", "s1") == []
        prompt = Outcome(200, "ok", None, 0, 5.0)
        assert await two.settle_lease(lease, prompt) is True
        assert await one.settle_lease(lease, prompt) is False  # gone: settled once
        assert not await one.lease_held(lease)
        rows = await one.counters(key, time.time())
        assert [(u.used, u.reserved) for u in rows] == [(1, 0), (3, 0), (0, 0)]
        (got,) = await one.query_requests(RequestQuery())
        assert (got.request_id, got.session, got.prompt, got.outcome) == (lease, "s1", "p1", "ok")
        assert (got.input_tokens, got.cost_nano, got.key_name) == (0, 0, "alice@laptop")

    run_two(make_store, test)


def test_reported_calls_count_once_even_past_a_limit(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        limits = (
            Limit(Metric.REQUESTS, WindowKind.DAY, 10),
            Limit(Metric.COST_USD, WindowKind.DAY, 1_000),
        )
        key = await make_key(one, "m", *limits)
        await one.set_status(ScopeKind.KEY, "m", Status.PAUSED)  # the call happened anyway
        (scope, _) = one.key_by_id(key.id) or (key, b"")

        def call(request_id: str, flags: tuple[str, ...]) -> tuple[Reservation, Outcome]:
            request = replace(info(request_id, key), session="s", prompt="p")
            outcome = Outcome(
                200, "ok", Usage(100, 10, 5, 3, 2), 7_000, 0.0, flags=flags, requests=0
            )
            return unheld(request, Amounts(), [scope], time.time()), outcome

        got = await one.record_unheld(
            [call("hc-1", ("hook_report",)), call("hc-2", ("hook_report",))]
        )
        assert got == [True, True]
        again = await asyncio.gather(
            two.record_unheld(
                [call("hc-1", ("hook_report", "otel")), call("hc-3", ("hook_report",))]
            ),
            one.record_unheld([call("hc-2", ("hook_report",)), call("hc-2", ("hook_report",))]),
        )
        assert again == [[False, True], [False, False]]
        rows = await two.counters(key, time.time())
        assert [(u.used, u.reserved) for u in rows] == [(0, 0), (21_000, 0)]  # past $0.000001
        entries = await two.query_requests(RequestQuery())
        assert sorted(e.request_id for e in entries) == ["hc-1", "hc-2", "hc-3"]
        assert {e.flags for e in entries} == {("hook_report",)}
        assert {(e.input_tokens, e.cache_read_tokens, e.cache_write_tokens) for e in entries} == {
            (100, 5, 5)
        }

    run_two(make_store, test)
