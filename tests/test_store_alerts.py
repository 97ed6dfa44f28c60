"""The alerts' part of the Store port (store/alerting.py), run against every engine
(tests/store_engines.py): a claim is won exactly once even when two processes (SQLite)
or two nodes (PostgreSQL) race for it, its deliveries are queued with it, leased to one
sender at a time and taken over once the lease ends."""

from __future__ import annotations

import asyncio

import pytest

from capgate.errors import Conflict
from capgate.store.alerting import AlertChange, AlertClaim, DeliveryAttempt, NewDelivery
from capgate.store.base import Store
from store_engines import MakeStore, make_store, run, run_two

__all__ = ["make_store"]


def claim(key: str, owner: str, now: float, expires_at: float = 2e9) -> AlertClaim:
    return AlertClaim(
        key, expires_at, (NewDelivery("hook", f'{{"key": "{key}"}}'),), owner, now + 60
    )


def test_a_claim_is_won_exactly_once_by_two_racing_stores(make_store: MakeStore) -> None:
    async def test(first: Store, second: Store) -> None:
        now = 1000.0
        keys = [f"limit:team:eng:cost_usd:day:*:{i}:80" for i in range(20)]
        tries = [
            store.claim_alert(claim(key, owner, now), now)
            for key in keys
            for store, owner in ((first, "a"), (second, "b")) * 3
        ]
        won = await asyncio.gather(*tries)
        assert sum(won) == len(keys)  # one winner per key, out of six tries each
        for i, key in enumerate(keys):
            assert sum(won[i * 6 : i * 6 + 6]) == 1, key
        # One delivery per claim, queued with it.
        deliveries = await first.alert_deliveries(limit=1000)
        assert sorted(d.claim for d in deliveries) == sorted(keys)
        assert all(d.status == "pending" and d.attempts == 0 for d in deliveries)

    run_two(make_store, test)


def test_deliveries_are_leased_to_one_sender_and_taken_over_after_the_lease(
    make_store: MakeStore,
) -> None:
    async def test(first: Store, second: Store) -> None:
        now = 1000.0
        assert await first.claim_alert(claim("k1", "a", now), now)
        # b may not take a's delivery while a's lease runs; a takes its own.
        assert await second.take_deliveries("b", now, now + 60) == []
        mine = await first.take_deliveries("a", now, now + 60)
        assert [d.claim for d in mine] == ["k1"]
        # a dies: after its lease, b takes it over (and a no longer can while b holds it).
        later = now + 61
        taken = await second.take_deliveries("b", later, later + 60)
        assert [d.id for d in taken] == [mine[0].id]
        assert await first.take_deliveries("c", later, later + 60) == []
        # a failed attempt: pending again, due at next_at, lease freed.
        await second.record_attempt(
            DeliveryAttempt(taken[0].id, "pending", 1, later + 5, 500, "HTTP 500", later)
        )
        assert await first.take_deliveries("c", later + 1, later + 60) == []
        again = await first.take_deliveries("c", later + 5, later + 65)
        assert [(d.id, d.attempts, d.last_status) for d in again] == [(mine[0].id, 1, 500)]
        await first.record_attempt(
            DeliveryAttempt(again[0].id, "delivered", 2, later + 5, 200, None, later + 6)
        )
        [done] = await second.alert_deliveries(status="delivered")
        assert (done.status, done.attempts, done.delivered_at) == ("delivered", 2, later + 6)
        assert await second.take_deliveries("b", later + 100, later + 160) == []

    run_two(make_store, test)


def test_expired_claims_and_old_deliveries_are_pruned(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        now = 1000.0
        assert await store.claim_alert(claim("old", "a", now, expires_at=1500), now)
        assert await store.claim_alert(claim("total", "a", now, expires_at=2e18), now)
        [d_old, _] = sorted(await store.alert_deliveries(), key=lambda d: d.claim)
        await store.record_attempt(DeliveryAttempt(d_old.id, "failed", 8, now, 500, "x", now))
        await store.prune_alerts(1400, keep_s=1000)  # nothing expired yet
        assert not await store.claim_alert(claim("old", "a", 1400), 1400)
        await store.prune_alerts(1600, keep_s=100)
        assert await store.claim_alert(claim("old", "a", 1600), 1600)  # its window is over
        assert not await store.claim_alert(claim("total", "a", 1600), 1600)
        left = await store.alert_deliveries()
        assert d_old.id not in {d.id for d in left}  # finished and old: gone
        assert {d.claim for d in left} == {"old", "total"}  # pending ones stay

    run(make_store, test)


def test_alert_config_is_stored_audited_and_never_overwritten_blindly(
    make_store: MakeStore,
) -> None:
    async def test(first: Store, second: Store) -> None:
        assert await first.get_alert_config() == {}
        config = {"rules": [{"id": "r1", "type": "threshold"}], "webhooks": []}
        change = AlertChange("create", "alert-rule:r1", None, {"id": "r1"})
        await first.put_alert_config(config, {}, change, "ops")
        assert await second.get_alert_config() == config
        [entry, *_] = await second.audit(1)
        assert (entry.actor, entry.action, entry.target, entry.after) == (
            "ops", "create", "alert-rule:r1", {"id": "r1"},
        )  # fmt: skip
        # Made from what was stored before the first change: refused, nothing written.
        other = {"rules": [], "webhooks": [{"name": "h"}]}
        with pytest.raises(Conflict):
            await second.put_alert_config(other, {}, change, "ops")
        assert await first.get_alert_config() == config
        assert len(await first.audit(10)) == 1

    run_two(make_store, test)
