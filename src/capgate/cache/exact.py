"""The response cache on the call path's seam (`http/extensions.py`, AnswerCache): asked
whether a key's requests may be cached before anything is computed for it, asked for an
answer once the request is reserved, told the answer of a forwarded one."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from capgate.cache.service import HEADER, MODES, CacheSlot, ResponseCache, setting_of
from capgate.core.limits import Scope
from capgate.errors import InvalidRequest
from capgate.http.extensions import CachedAnswer, CallFacts, FinalAnswer


class ExactCache:
    """`ResponseCache` as an AnswerCache. `above`: the store's `scopes_above`; `named`:
    whether any user, team or org sets `cache` (the store's `named_cache`)."""

    def __init__(
        self,
        cache: ResponseCache,
        above: Callable[[Scope], list[Scope]],
        named: Callable[[], bool],
    ) -> None:
        self.cache = cache
        self._above = above
        self._named = named

    def wanted(self, key: Scope, headers: Mapping[str, str]) -> bool:
        """Whether `key`'s request may be answered from, or kept in, the cache: one
        attribute read for a key whose scopes set no cache. InvalidRequest for a bad
        `x-capgate-cache` header (before anything is held)."""
        if key.cache is None and not self._named():
            return False
        header = headers.get(HEADER)
        if header is None:
            return setting_of(key, lambda: self._above(key)) is not None
        mode = header.strip().lower()
        if mode not in MODES:
            raise InvalidRequest(
                f"{HEADER} must be one of {', '.join(MODES)}, not {header[:40]!r}.",
                headers={"x-capgate-refusal": "bad_cache_header"},
            )
        return mode != "off" and setting_of(key, lambda: self._above(key)) is not None

    def _slot(self, facts: CallFacts) -> CacheSlot | None:
        key = facts.key
        return self.cache.slot(
            key, lambda: self._above(key), facts.headers.get(HEADER), facts.endpoint.value,
            facts.model, facts.stream, dict(facts.body),
        )  # fmt: skip

    async def lookup(self, facts: CallFacts) -> CachedAnswer | None:
        slot = self._slot(facts)
        if slot is None:
            return None
        kept, mark = self.cache.lookup(slot), "hit"
        if kept is None:
            kept, mark = await self.cache.lookup_similar(slot), "hit-similar"
        if kept is None:
            return None
        usage, cost = self.cache.charge(slot, kept)
        return CachedAnswer(
            kept.body, kept.content_type, usage, cost, kept.model, kept.status, kept.cost_nano,
            mark,
        )  # fmt: skip

    def close(self) -> None:
        if self.cache.similar is not None:
            self.cache.similar.close()

    def remember(self, facts: CallFacts, answer: FinalAnswer) -> None:
        slot = self._slot(facts)
        if slot is not None:
            self.cache.keep(
                slot, answer.content_type, answer.body, facts.stream, answer.usage,
                answer.cost_nano, answer.model,
            )  # fmt: skip
