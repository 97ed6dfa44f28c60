"""The response cache's pure parts (capgate.cache, docs/cache.md): the key, the bounded
LRU + TTL store, the scope setting, which requests get a slot. No server; end to end:
tests/test_cache.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from capgate.cache.key import namespace, prompt_text, request_key
from capgate.cache.memory import AnswerStore, KeptAnswer
from capgate.cache.service import ResponseCache, setting_of
from capgate.core.caching import CacheSetting
from capgate.core.limits import Scope, ScopeKind
from capgate.core.money import Usage
from capgate.errors import InvalidRequest

BODY: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 100,
    "temperature": 0.2,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "t", "input_schema": {"type": "object", "b": 1, "a": 2}}],
}
SPACE = namespace("key", "k1", None)


def key_of(body: dict[str, Any], space: str = SPACE, stream: bool = False) -> bytes:
    return request_key(space, "messages", "claude-x-up", stream, body)


def test_the_key_ignores_ids_order_and_the_stream_flag_field_only() -> None:
    same = {
        **BODY,
        "model": "alias",
        "metadata": {"user_id": "u-7"},
        "user": "someone",
        "tools": [{"input_schema": {"a": 2, "b": 1, "type": "object"}, "name": "t"}],
    }
    assert key_of(same) == key_of(BODY)
    assert len(key_of(BODY)) == 32


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 101},
        {"temperature": 0.3},
        {"system": "be long"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"tools": []},
        {"tool_choice": {"type": "any"}},
        {"stop_sequences": ["x"]},
        {"top_p": 0.5},
        {"stream_options": {"include_usage": True}},
        {"some_future_field": 1},
    ],
)
def test_every_other_field_changes_the_key(change: dict[str, Any]) -> None:
    assert key_of({**BODY, **change}) != key_of(BODY)


def test_owner_endpoint_model_and_mode_are_in_the_key() -> None:
    assert key_of(BODY, namespace("key", "k2", None)) != key_of(BODY)
    assert key_of(BODY, namespace("team", "k1", None)) != key_of(BODY)
    assert key_of(BODY, stream=True) != key_of(BODY)
    assert request_key(SPACE, "chat", "claude-x-up", False, BODY) != key_of(BODY)
    assert request_key(SPACE, "messages", "claude-y", False, BODY) != key_of(BODY)
    # A shared name replaces the owner: two owners naming it share.
    assert namespace("team", "a", "docs") == namespace("key", "b", "docs") == "shared:docs"
    # Parts are length-prefixed: moving a character between them changes the key.
    assert request_key("ab", "c", "m", False, BODY) != request_key("a", "bc", "m", False, BODY)


def test_prompt_text_for_the_similarity_index() -> None:
    body = {"system": [{"type": "text", "text": "sys"}], "messages": BODY["messages"]}
    assert prompt_text(body) == "sys\nhi"


def answer(size: int, expires_at: float = 100.0) -> KeptAnswer:
    return KeptAnswer(200, "application/json", b"x" * size, False, Usage(1, 2), 5, "m", expires_at)


def test_the_store_expires_and_evicts_the_least_recently_used() -> None:
    now = [0.0]
    store = AnswerStore(4 * (1000 + 256), clock=lambda: now[0])
    for name in (b"a", b"b", b"c", b"d"):
        assert store.put(name, answer(1000))
    assert store.bytes == 4 * 1256 and len(store) == 4
    assert store.get(b"a") is not None  # used: now the newest
    assert store.put(b"e", answer(1000))
    assert store.get(b"b") is None and store.evictions == 1  # the oldest unused went
    assert all(store.get(k) is not None for k in (b"a", b"c", b"d", b"e"))
    assert not store.put(b"big", answer(1100))  # over a quarter of the bound: not kept
    assert store.put(b"a", answer(10))  # replaced: its bytes counted once
    assert store.bytes == 3 * 1256 + 266
    now[0] = 100.0
    assert store.get(b"a") is None and store.bytes == 3 * 1256  # expired: dropped


def test_the_setting_is_checked() -> None:
    assert CacheSetting(3600).to_json() == {
        "ttl_s": 3600,
        "owner": "key",
        "shared": None,
        "charge": "free",
        "semantic": False,
    }
    assert CacheSetting.from_json(CacheSetting(60, "team", "x", "full", True).to_json()) == (
        CacheSetting(60, "team", "x", "full", True)
    )
    assert not CacheSetting.from_json({"ttl_s": 60}).semantic  # a setting stored before it
    for bad in (
        lambda: CacheSetting(0),
        lambda: CacheSetting(31 * 86400),
        lambda: CacheSetting(60, "provider"),
        lambda: CacheSetting(60, charge="half"),
        lambda: CacheSetting(60, shared=""),
    ):
        with pytest.raises(ValueError):
            bad()


KEY = Scope(ScopeKind.KEY, "k1", "key-1")
TEAM = Scope(ScopeKind.TEAM, "t1", "team-1", cache=CacheSetting(60, "team"))


def slot(cache: ResponseCache, key: Scope, header: str | None, above: list[Scope]) -> Any:
    return cache.slot(key, lambda: above, header, "messages", "m", False, BODY)


def test_which_requests_get_a_slot() -> None:
    cache = ResponseCache(1 << 20)
    assert slot(cache, KEY, None, []) is None  # nothing opted in
    assert slot(cache, KEY, "on", []) is None  # the header cannot turn it on
    got = slot(cache, KEY, None, [TEAM])
    assert got.space == "owner:team:t1" and not got.refresh  # the team's setting, its owner
    assert setting_of(KEY, lambda: [TEAM]) == (TEAM.cache, TEAM)
    assert slot(cache, KEY, " Off ", [TEAM]) is None
    assert slot(cache, KEY, "refresh", [TEAM]).refresh
    with pytest.raises(InvalidRequest, match="x-capgate-cache must be one of"):
        slot(cache, KEY, "yes", [TEAM])
    # A key's own setting wins; an owner kind the key has no scope of: the key owns.
    own = Scope(ScopeKind.KEY, "k1", "key-1", cache=CacheSetting(60, "org"))
    assert slot(cache, own, None, [TEAM]).space == "owner:key:k1"


def test_lookup_keep_charge_and_the_similarity_seam() -> None:
    now = [0.0]

    class Similar:
        def __init__(self) -> None:
            self.added: list[tuple[str, str, str, str]] = []
            self.removed: list[str] = []

        async def lookup(
            self, owner: str, model: str, endpoint: str, body: dict[str, Any]
        ) -> str | None:
            close = self.added and body.get("temperature") == 1 and owner == self.added[0][0]
            return self.added[0][3] if close else None

        def add(
            self, owner: str, model: str, endpoint: str, body: dict[str, Any], entry_id: str
        ) -> None:
            self.added.append((owner, model, endpoint, entry_id))

        def remove(self, entry_id: str) -> None:
            self.removed.append(entry_id)

        def close(self) -> None:
            pass

    similar = Similar()
    cache = ResponseCache(1 << 20, clock=lambda: now[0], similar=similar)
    first = slot(cache, KEY, None, [TEAM])
    assert cache.lookup(first) is None
    cache.keep(first, "application/json", b"{}", False, Usage(3, 4), 70, "m-1")
    assert similar.added == []  # the setting does not ask for the semantic cache
    found = cache.lookup(first)
    assert found is not None and found.expires_at == 60 and found.cost_nano == 70
    assert cache.charge(first, found) == (Usage(), 0)
    full = Scope(ScopeKind.TEAM, "t1", "team-1", cache=CacheSetting(60, "team", charge="full"))
    assert cache.charge(slot(cache, KEY, None, [full]), found) == (Usage(3, 4), 70)
    assert cache.lookup(slot(cache, KEY, "refresh", [TEAM])) is None
    # With `semantic`: kept answers are indexed, and another exact key (temperature
    # differs) that the index finds close gets the kept answer.
    semantic = Scope(ScopeKind.TEAM, "t1", "team-1", cache=CacheSetting(60, "team", semantic=True))
    kept = slot(cache, KEY, None, [semantic])
    cache.keep(kept, "application/json", b"{}", False, Usage(3, 4), 70, "m-1")
    owner = "owner:team:t1|messages|whole"
    assert similar.added == [(owner, "m", "messages", kept.key.hex())]
    other = cache.slot(
        KEY, lambda: [semantic], None, "messages", "m", False, {**BODY, "temperature": 1}
    )
    assert other is not None and other.key != kept.key and cache.lookup(other) is None
    assert asyncio.run(cache.lookup_similar(other)) is cache.lookup(kept)
    plain = cache.slot(
        KEY, lambda: [TEAM], None, "messages", "m", False, {**BODY, "temperature": 1}
    )
    assert asyncio.run(cache.lookup_similar(plain)) is None  # a scope without semantic
    elsewhere = Scope(ScopeKind.TEAM, "t2", "team-2", cache=CacheSetting(60, "team", semantic=True))
    assert asyncio.run(cache.lookup_similar(slot(cache, KEY, None, [elsewhere]))) is None
    now[0] = 60.0
    assert cache.lookup(first) is None
    # The same key kept again (replaced), then expired: each time gone from the index.
    assert similar.removed == [first.key.hex(), first.key.hex()]
