"""The logged bodies' part of the Store port (store/bodies.py) and a scope's `log_bodies`,
on every engine (tests/store_engines.py): written once per request id, read back, deleted
by age in bounded batches, seen by another process or node; the opt-in kept, audited."""

from __future__ import annotations

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
