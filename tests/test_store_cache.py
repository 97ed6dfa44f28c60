"""The response cache's part of the store (capgate.cache), on every engine
(tests/store_engines.py): a scope's `cache` setting kept, cleared and audited, seen by the
key cache; the ledger's cache facts (hit | miss, saved) written by one settlement and by
settlements grouped in one batch (PostgreSQL's capgate_batch), and read back."""

from __future__ import annotations

import asyncio
import time

from capgate.core.caching import CacheSetting
from capgate.core.engine import Amounts
from capgate.core.limits import Limit, Metric, ScopeKind
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.store.base import Outcome, RequestQuery, ScopeFields, Store
from store_engines import MakeStore, make_store, run
from test_store_contract import admitted, info, make_key

__all__ = ["make_store"]


def test_the_cache_setting_is_kept_cleared_and_audited(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        setting = CacheSetting(600, "team", "docs", "full")
        team = await store.create_scope(ScopeKind.TEAM, "eng", ScopeFields(cache=setting))
        assert team.cache == setting and store.named_cache is True
        key = await make_key(store, "k", team="eng")
        assert key.cache is None
        cached = store.key_by_id(key.id)
        assert cached is not None
        assert [s.cache for s in store.scopes_above(cached[0])] == [setting]
        own = await store.update_scope(ScopeKind.KEY, "k", ScopeFields(cache=CacheSetting(5)))
        assert own.cache == CacheSetting(5)
        cleared = await store.update_scope(
            ScopeKind.TEAM, "eng", ScopeFields(clear=frozenset({"cache"}))
        )
        assert cleared.cache is None and store.named_cache is False
        assert (await store.get_scope(ScopeKind.KEY, "k")).cache == CacheSetting(5)
        audit = (await store.audit(1))[0]
        assert audit.before is not None and audit.after is not None
        assert audit.before["cache"] == setting.to_json() and audit.after["cache"] is None

    run(make_store, test)


def test_the_ledger_keeps_the_cache_facts(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        key = await make_key(store, "k", Limit(Metric.REQUESTS, WindowKind.DAY, 100))
        worst = Amounts(1, 100, 100, 1_000_000)
        one = await admitted(store, info("r-hit", key), worst)
        await store.settle(one, Outcome(200, "ok", Usage(), 0, 1.0, cache="hit", saved_nano=777))
        # Several at once: grouped in one write (on PostgreSQL, one capgate_batch call).
        many = [await admitted(store, info(f"r-{i}", key), worst) for i in range(5)]
        await asyncio.gather(
            *(
                store.settle(res, Outcome(200, "ok", Usage(1, 2), 30, 1.0, cache="miss"))
                for res in many
            )
        )
        await store.flush()
        entries = {e.request_id: e for e in await store.query_requests(RequestQuery())}
        hit = entries["r-hit"]
        assert (hit.cache, hit.saved_nano, hit.cost_nano) == ("hit", 777, 0)
        assert {(entries[f"r-{i}"].cache, entries[f"r-{i}"].saved_nano) for i in range(5)} == {
            ("miss", 0)
        }
        plain = await admitted(store, info("r-plain", key), worst)
        await store.settle(plain, Outcome(200, "ok", Usage(1, 2), 30, 1.0))
        (got,) = await store.query_requests(RequestQuery(request_id="r-plain"))
        assert (got.cache, got.saved_nano) == (None, 0)
        (usage,) = await store.counters(key, time.time())
        assert usage.used == 7  # every one counts as a request, hits too

    run(make_store, test)


def test_usage_and_summary_sum_the_hits_and_what_they_saved_folded_or_not(
    make_store: MakeStore,
) -> None:
    async def test(store: Store) -> None:
        keys = [await make_key(store, name) for name in ("k-a", "k-b")]
        worst = Amounts(1, 100, 100, 1_000_000)
        facts = [(0, "hit", 1_234), (0, "hit", 5_000_001), (0, "miss", 0), (1, None, 0),
                 (1, "hit", 999_999_999)]  # fmt: skip
        for i, (which, cache, saved) in enumerate(facts):
            held = await admitted(store, info(f"s-{i}", keys[which]), worst)
            await store.settle(held, Outcome(200, "ok", Usage(1, 2), 30, 1.0, cache=cache,
                                             saved_nano=saved))  # fmt: skip
        await store.flush()
        entries = await store.query_requests(RequestQuery())
        assert sum(e.saved_nano for e in entries if e.cache == "hit") == 1_005_001_234

        async def reads() -> tuple[object, ...]:
            usage = {
                r.group: (r.cache_hits, r.saved_nano) for r in await store.usage("key", None, None)
            }
            models = [(r.cache_hits, r.saved_nano) for r in await store.usage("model", None, None)]
            summary = await store.summary(RequestQuery())
            return usage, models, (summary.cache_hits, summary.saved_nano)

        kept = await reads()
        assert kept == (
            {"k-a": (2, 5_001_235), "k-b": (1, 999_999_999)},
            [(3, 1_005_001_234)],
            (3, 1_005_001_234),
        )
        # Folded into daily sums (ledger pruning): the same totals.
        old = await store.old_entries(time.time() + 10, 100)
        assert await store.fold_entries([e.id for e in old], time.time() + 10) == 5
        assert await store.query_requests(RequestQuery()) == []
        assert await reads() == kept

    run(make_store, test)
