"""The logged bodies' part of the Store port (store/bodies.py) and a scope's `log_bodies`,
on every engine (tests/store_engines.py): written once per request id, read back, deleted
by age in bounded batches, seen by another process or node; the opt-in kept, audited."""

from __future__ import annotations

from typing import Any

from capgate.core.limits import ScopeKind
from capgate.store.base import ScopeFields, Store
from capgate.store.bodies import BodyRecord
from store_engines import MakeStore, make_store, run, run_two

__all__ = ["make_store"]


def body(request_id: str, at: float, text: str = "hello") -> BodyRecord:
    return BodyRecord(request_id, at, f'{{"q": "{text}"}}', "answer é", 13, 9, False)


def test_bodies_are_written_once_and_read_by_another_store(make_store: MakeStore) -> None:
    async def test(first: Store, second: Store) -> None:
        assert await first.read_body("req_a") is None
        await first.write_body(body("req_a", 1000.0))
        await first.write_body(body("req_a", 2000.0, "second"))  # the first one stays
        await first.write_body(BodyRecord("req_b", 1001.0, "{}", None, 2, 0, True))
        assert await second.read_body("req_a") == body("req_a", 1000.0)
        assert await second.read_body("req_b") == BodyRecord(
            "req_b", 1001.0, "{}", None, 2, 0, True
        )

    run_two(make_store, test)


def test_old_bodies_are_deleted_in_batches_and_newer_ones_kept(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        for i in range(25):
            await store.write_body(body(f"old{i}", 1000.0 + i))
        await store.write_body(body("new", 5000.0))
        assert await store.delete_bodies(2000.0, 10) == 10
        assert await store.delete_bodies(2000.0, 10) == 10
        assert await store.delete_bodies(2000.0, 10) == 5
        assert await store.delete_bodies(2000.0, 10) == 0
        assert await store.read_body("old24") is None
        assert await store.read_body("new") is not None
        # Oldest first: a batch never takes a newer body before an older one.
        await store.write_body(body("a", 100.0))
        await store.write_body(body("b", 200.0))
        assert await store.delete_bodies(6000.0, 1) == 1
        assert await store.read_body("a") is None and await store.read_body("b") is not None

    run(make_store, test)


def test_log_bodies_is_off_by_default_kept_and_audited(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        team = await store.create_scope(ScopeKind.TEAM, "eng", ScopeFields())
        assert team.log_bodies is False
        key = await store.create_scope(
            ScopeKind.KEY, "k", ScopeFields(team="eng"), secret_hash=b"x" * 32, prefix="p"
        )
        assert key.log_bodies is False and store.named_log_bodies is False
        changed = await store.update_scope(ScopeKind.TEAM, "eng", ScopeFields(log_bodies=True))
        assert changed.log_bodies is True
        assert (await store.get_scope(ScopeKind.TEAM, "eng")).log_bodies is True
        assert store.named_log_bodies is True  # the gateway's first, cheap check
        cached = store.key_by_id(key.id)  # the key cache, as the gateway reads it
        assert cached is not None
        above = store.scopes_above(cached[0])
        assert [s.log_bodies for s in above] == [True]
        entry = (await store.audit(1))[0]
        assert entry.before is not None and entry.after is not None
        assert (entry.before["log_bodies"], entry.after["log_bodies"]) == (False, True)

    run(make_store, test)


# -- ledger pruning: old entries folded into daily sums, every total the same -----------


async def _totals(store: Store) -> dict[str, object]:
    """Every read that sums the ledger, as it must be the same after a fold (latencies
    and flags excepted: they are the kept entries' only)."""
    from dataclasses import replace

    from capgate.store.base import RequestQuery
    from capgate.store.records import USAGE_GROUPS
    from test_store_contract import BASE

    def day_sums(rows: list[Any]) -> dict[tuple[int, str | None], list[int]]:
        out: dict[tuple[int, str | None], list[int]] = {}
        for r in rows:
            acc = out.setdefault((r.bucket, r.group), [0] * 5)
            for i, v in enumerate((r.requests, r.cost_nano, r.tokens, r.refused, r.errors)):
                acc[i] += v
        return out

    out: dict[str, object] = {}
    for group in USAGE_GROUPS:
        out[f"usage {group}"] = await store.usage(group, None, None)
    # A folded day counts whole in a range that holds its UTC midnight: ranges of whole
    # days (what the dashboard's calendar periods and `day` groups are) stay exact.
    day1 = BASE // 86400 * 86400
    out["usage key from day 2"] = await store.usage("key", day1 + 86400, None)
    out["usage key on day 1"] = await store.usage("key", day1, day1 + 86400)
    for name, query in (
        ("all", RequestQuery()),
        ("k2", RequestQuery(key="k2")),
        ("team t", RequestQuery(team="t")),
        ("model m-b", RequestQuery(model="m-b")),
        ("day 2", RequestQuery(since=day1 + 86400, until=day1 + 2 * 86400)),
    ):
        summary = await store.summary(query)
        out[f"summary {name}"] = replace(summary, latency_p50_ms=None, latency_p95_ms=None)
        rows = await store.series_rows(query, "key", 86400)
        out[f"series {name}"] = day_sums(rows)
    snap = await store.metrics_snapshot(BASE, ledger=True)
    assert snap.ledger is not None
    out["metrics"] = replace(snap.ledger, flagged={})
    return out


def test_folding_old_days_keeps_every_total(make_store: MakeStore) -> None:
    from capgate.store.base import RequestQuery
    from test_store_contract import BASE, _ledger

    async def test(store: Store) -> None:
        await _ledger(store)  # 8 entries over two days: ok, error, a refusal (paused)
        before = await _totals(store)
        cutoff = BASE + 3 * 86400
        old = await store.old_entries(cutoff, 1000)
        assert len(old) == 8 and [e.id for e in old] == sorted(e.id for e in old)
        ids = [e.id for e in old]
        assert await store.fold_entries(ids[:3], cutoff) == 3
        assert await store.fold_entries(ids, cutoff) == 5  # the first three are gone
        assert await store.fold_entries(ids, cutoff) == 0
        assert await store.query_requests(RequestQuery()) == []
        after = await _totals(store)
        for name, value in before.items():
            assert after[name] == value, name
        # A key whose entries were all folded was last used on its last folded day.
        k2 = await store.get_scope(ScopeKind.KEY, "k2")
        last = (await store.key_activity(cutoff, cutoff))[k2.id].last_used_at
        assert last == (BASE + 86400) // 86400 * 86400

    run(make_store, test)


def test_two_processes_folding_at_once_fold_each_entry_once(make_store: MakeStore) -> None:
    import asyncio

    from capgate.store.base import RequestQuery
    from test_store_contract import BASE, _ledger

    async def test(first: Store, second: Store) -> None:
        await _ledger(first)
        before = await _totals(first)
        cutoff = BASE + 3 * 86400
        ids = [e.id for e in await first.old_entries(cutoff, 1000)]
        folded = await asyncio.gather(
            *(
                store.fold_entries(ids[i::2] + ids, cutoff)
                for store in (first, second)
                for i in (0, 1)
            )
        )
        assert sum(folded) == 8
        assert await second.query_requests(RequestQuery()) == []
        assert await _totals(second) == before
        # An entry newer than the cutoff is never folded.
        assert await first.fold_entries(ids, BASE) == 0

    run_two(make_store, test)
