"""Which requests the response cache serves, and what it keeps (docs/cache.md).

A request is cacheable when its scopes opted in: the innermost of its key, user, team and
org that has a `cache` setting decides (its ttl, owner, shared name and charge). The
`x-capgate-cache` header only narrows that: `off` (neither read nor kept), `refresh` (not
read, kept again), `on` (the default). A request of a scope without a setting is never
cached, whatever it sends.

The owner is the scope the setting names (`owner: key|user|team|org`, the key by
default), so two keys of two teams never share an answer unless both settings name the
same `shared` cache. When the key has no scope of the owner's kind (`owner: team` for a
key in no team), the key itself owns its answers: the narrower choice.

The semantic cache (capgate.semantic, through cache/similar.py) plugs in as `similar`:
tried after the exact lookup misses, for the scopes whose setting turns `semantic` on, it
names the exact entry whose prompt is close enough. An entry the exact cache drops
(evicted, expired, replaced) is removed from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from capgate.cache.key import namespace, request_key
from capgate.cache.memory import AnswerStore, KeptAnswer
from capgate.core.caching import CacheSetting
from capgate.core.limits import Scope
from capgate.core.money import Usage
from capgate.errors import InvalidRequest

HEADER = "x-capgate-cache"  # what a client asks of the cache for one request
MODES = ("on", "off", "refresh")


class SimilarAnswers(Protocol):
    """A similarity index over kept answers (the semantic cache's port). `owner`: the
    exact cache's namespace with the endpoint and whether it streams, so that an answer
    is only ever given in the shape it was kept in; `model`: the upstream model."""

    async def lookup(
        self, owner: str, model: str, endpoint: str, body: dict[str, Any]
    ) -> str | None:
        """The id of a kept entry whose prompt is close to `body`'s, or None."""

    def add(
        self, owner: str, model: str, endpoint: str, body: dict[str, Any], entry_id: str
    ) -> None:
        """Index the entry `entry_id` (an exact cache key, hex) under its prompt; must not
        block (the embedding may run later)."""

    def remove(self, entry_id: str) -> None:
        """The entry has left the exact cache."""

    def close(self) -> None:
        """The server stops."""


@dataclass(frozen=True, slots=True)
class CacheSlot:
    """One cacheable request: where its answer is looked up and kept."""

    key: bytes
    space: str  # the owner's namespace (key.namespace)
    model: str  # the upstream model the key names: only its answers are kept
    setting: CacheSetting
    refresh: bool  # not read, only kept again
    body: dict[str, Any]  # the client's body, for the similarity index's text
    endpoint: str = "messages"
    stream: bool = False

    @property
    def similar_owner(self) -> str:
        """The similarity index's owner: the namespace, the endpoint and the shape."""
        return f"{self.space}|{self.endpoint}|{'stream' if self.stream else 'whole'}"


def setting_of(key: Scope, above: Callable[[], list[Scope]]) -> tuple[CacheSetting, Scope] | None:
    """The setting that applies to `key`'s requests and the scope that set it."""
    if key.cache is not None:
        return key.cache, key
    for scope in above():
        if scope.cache is not None:
            return scope.cache, scope
    return None


class ResponseCache:
    """The process's cache: its answers, and its counts for /metrics."""

    def __init__(
        self,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        similar: SimilarAnswers | None = None,
    ) -> None:
        self.answers = AnswerStore(max_bytes, clock, self._dropped)
        self.similar = similar
        self._clock = clock

    def slot(
        self,
        key: Scope,
        above: Callable[[], list[Scope]],
        header: str | None,
        endpoint: str,
        upstream_model: str,
        stream: bool,
        body: dict[str, Any],
    ) -> CacheSlot | None:
        """The request's slot, or None when it is not cached. InvalidRequest for a bad
        header (before anything is held)."""
        found = setting_of(key, above)
        if found is None:
            return None
        mode = "on" if header is None else header.strip().lower()
        if mode not in MODES:
            raise InvalidRequest(
                f"{HEADER} must be one of {', '.join(MODES)}, not {str(header)[:40]!r}.",
                headers={"x-capgate-refusal": "bad_cache_header"},
            )
        if mode == "off":
            return None
        setting, _ = found
        owner = key
        if setting.owner != "key":
            owner = next((s for s in above() if s.kind.value == setting.owner), key)
        space = namespace(owner.kind.value, owner.id, setting.shared)
        cache_key = request_key(space, endpoint, upstream_model, stream, body)
        return CacheSlot(
            cache_key, space, upstream_model, setting, mode == "refresh", body, endpoint, stream
        )

    def lookup(self, slot: CacheSlot) -> KeptAnswer | None:
        """The kept answer for `slot`'s very request."""
        if slot.refresh:
            return None
        return self.answers.get(slot.key)

    async def lookup_similar(self, slot: CacheSlot) -> KeptAnswer | None:
        """After an exact miss: the kept answer of a close paraphrase, when the slot's
        setting asks for it. An id whose answer is gone is a miss, and is removed."""
        if slot.refresh or not slot.setting.semantic or self.similar is None:
            return None
        similar = self.similar
        entry_id = await similar.lookup(slot.similar_owner, slot.model, slot.endpoint, slot.body)
        if entry_id is None:
            return None
        found = self.answers.get(bytes.fromhex(entry_id))
        if found is None:
            similar.remove(entry_id)
        return found

    def keep(
        self,
        slot: CacheSlot,
        content_type: str,
        body: bytes,
        stream: bool,
        usage: Usage,
        cost_nano: int,
        model: str | None,
    ) -> None:
        """A successful answer of `slot`'s request, as its client got it."""
        expires = self._clock() + slot.setting.ttl_s
        entry = KeptAnswer(200, content_type, body, stream, usage, cost_nano, model, expires)
        kept = self.answers.put(slot.key, entry)
        if kept and slot.setting.semantic and self.similar is not None:
            self.similar.add(
                slot.similar_owner, slot.model, slot.endpoint, slot.body, slot.key.hex()
            )

    def _dropped(self, key: bytes) -> None:
        if self.similar is not None:
            self.similar.remove(key.hex())

    def charge(self, slot: CacheSlot, answer: KeptAnswer) -> tuple[Usage, int]:
        """What a hit is charged: nothing (`charge: free`), or what the answer cost."""
        if slot.setting.charge == "full":
            return answer.usage, answer.cost_nano
        return Usage(), 0
