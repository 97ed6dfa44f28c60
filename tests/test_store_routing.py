"""The runtime providers and routes of the store port (`RoutingStore`), on every engine:
integrity checked in the transaction, the version every process polls, the key rotation."""

from __future__ import annotations

import os

import pytest

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.secret_box import Sealed, SecretBox, SecretUnreadable, fingerprint
from capgate.store.base import Store
from capgate.store.routing_rows import StoredProvider, StoredRoute
from store_engines import MakeStore, make_store, run, run_two

__all__ = ["make_store"]


OLD = SecretBox(os.urandom(32))


def provider(name: str, secret: str | None = "up-key", box: SecretBox = OLD) -> StoredProvider:
    sealed = box.seal(name, secret) if secret else None
    settings = {"base_url": "https://api.example.com/v1", "timeout_s": 30.0}
    return StoredProvider(name, "openai", settings, sealed, secret and fingerprint(secret))


def route(match: str, *providers: str) -> StoredRoute:
    return StoredRoute(match, {"targets": [{"provider": p} for p in providers]})


def test_changes_bump_the_version_the_other_process_reads(make_store: MakeStore) -> None:
    async def test(first: Store, second: Store) -> None:
        start = await second.routing_version()
        await first.put_provider(provider("p1"), create=True, actor="t")
        await first.put_route(route("m-*", "p1", "cfg"), create=True,
                              config_providers={"cfg"}, actor="t")  # fmt: skip
        assert await second.routing_version() == start + 2
        seen = await second.runtime_routing()
        assert seen.version == start + 2
        assert [p.name for p in seen.providers] == ["p1"]
        assert seen.providers[0].secret is not None
        assert OLD.open("p1", seen.providers[0].secret) == "up-key"
        assert seen.routes[0].settings["targets"][1] == {"provider": "cfg"}
        audit = [a.action for a in await second.audit(10)]
        assert audit[:2] == ["route-create", "provider-create"]
        assert "up-key" not in str(await second.audit(10))

    run_two(make_store, test)


def test_integrity_is_checked_in_the_transaction(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await store.put_provider(provider("p1"), create=True, actor="t")
        with pytest.raises(Conflict):
            await store.put_provider(provider("p1"), create=True, actor="t")
        with pytest.raises(NotFound):
            await store.put_provider(provider("nope"), create=False, actor="t")
        with pytest.raises(InvalidRequest, match="ghost"):
            await store.put_route(route("m", "p1", "ghost"), create=True,
                                  config_providers=(), actor="t")  # fmt: skip
        await store.put_route(route("m", "p1"), create=True, config_providers=(), actor="t")
        with pytest.raises(Conflict):
            await store.put_route(route("m", "p1"), create=True, config_providers=(), actor="t")
        version = await store.routing_version()
        with pytest.raises(Conflict, match="'m'"):
            await store.delete_provider("p1", "t")
        assert await store.routing_version() == version  # a refusal changes nothing
        await store.delete_route("m", "t")
        await store.delete_provider("p1", "t")
        with pytest.raises(NotFound):
            await store.delete_route("m", "t")
        assert (await store.runtime_routing()).providers == ()

    run(make_store, test)


def test_rotation_reseals_everything_or_nothing(make_store: MakeStore) -> None:
    new = SecretBox(os.urandom(32))

    async def test(store: Store) -> None:
        await store.put_provider(provider("a", "key-a"), create=True, actor="t")
        await store.put_provider(provider("b", None), create=True, actor="t")
        await store.put_provider(provider("c", "key-c"), create=True, actor="t")
        version = await store.routing_version()

        def reseal(p: StoredProvider) -> Sealed:
            assert p.secret is not None
            return new.seal(p.name, OLD.open(p.name, p.secret))

        assert await store.reseal_provider_secrets(reseal, "t") == 2
        rows = {p.name: p for p in (await store.runtime_routing()).providers}
        assert rows["b"].secret is None
        for name in ("a", "c"):
            sealed = rows[name].secret
            assert sealed is not None and sealed.key_id == new.key_id
            assert new.open(name, sealed) == f"key-{name}"
            assert rows[name].fingerprint == fingerprint(f"key-{name}")
        assert await store.routing_version() == version  # running processes keep theirs

        # A secret that does not open (resealing with the old box again) rolls all back.
        with pytest.raises(SecretUnreadable):
            await store.reseal_provider_secrets(reseal, "t")
        after = {p.name: p.secret for p in (await store.runtime_routing()).providers}
        assert after == {name: p.secret for name, p in rows.items()}

    run(make_store, test)


def test_runtime_rules_replace_whole_and_reset(make_store: MakeStore) -> None:
    rules = [{"name": "small", "when": {"max_tokens": "<= 10"}, "then": {"model": "m-small"}}]

    async def test(first: Store, second: Store) -> None:
        assert (await second.runtime_routing()).rules is None
        start = await second.routing_version()
        await first.put_rules(rules, "alice")
        seen = await second.runtime_routing()
        assert seen.version == start + 1
        assert seen.rules is not None
        assert (seen.rules.rules, seen.rules.actor) == (rules, "alice")
        assert seen.rules.updated_at > 0
        await first.put_rules([], "bob")  # an empty list is a list: no rules at all
        seen = await second.runtime_routing()
        assert seen.rules is not None and seen.rules.rules == []
        await first.put_rules(None, "carol")
        assert (await second.runtime_routing()).rules is None
        audit = await second.audit(10)
        assert [a.action for a in audit[:3]] == ["rules-reset", "rules-set", "rules-set"]
        assert audit[2].after == {"rules": rules}
        assert audit[1].before == {"rules": rules}
        assert audit[0].actor == "carol"
        assert await second.routing_version() > seen.version

    run_two(make_store, test)
