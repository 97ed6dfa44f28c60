"""The semantic cache (capgate.semantic, docs/semantic-cache.md) as the exact cache's
`similar`: created, and numpy and the model loaded, on the first request of a scope whose
cache setting turns `semantic` on. A server without such a scope never imports it.

Only Messages, Chat Completions and Responses bodies that `eligible` accepts are looked
up or indexed. Indexing embeds the prompt, so it runs as a task after the answer was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from capgate.core.caching import MAX_TTL_S

if TYPE_CHECKING:
    from capgate.semantic.eligibility import Question
    from capgate.semantic.service import SemanticCache

log = logging.getLogger(__name__)
_DIALECTS = {"messages": "anthropic", "chat": "openai", "responses": "openai"}


class SemanticAnswers:
    def __init__(
        self,
        threshold: float,
        max_entries: int,
        max_temperature: float,
        clock: Any = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._max_entries = max_entries
        self._max_temperature = max_temperature
        self._clock = clock
        self._semantic: SemanticCache | None = None
        self._unavailable = False  # capgate[semantic] is not installed: every lookup misses
        self._tasks: set[asyncio.Task[bool]] = set()  # indexing under way

    def _cache(self) -> SemanticCache | None:
        if self._semantic is None and not self._unavailable:
            try:
                from capgate.semantic.service import SemanticCache

                self._semantic = SemanticCache.create(
                    max_entries=self._max_entries, ttl=MAX_TTL_S, threshold=self._threshold
                )  # the exact cache's TTL decides; the index only drops what it was not told
            except (ImportError, RuntimeError) as e:  # SemanticUnavailable is a RuntimeError
                self._unavailable = True
                log.warning("semantic cache off, a scope asks for it: %s", e)
        return self._semantic

    def _question(self, endpoint: str, body: dict[str, Any]) -> Question | None:
        dialect = _DIALECTS.get(endpoint)
        if dialect is None:
            return None
        from capgate.semantic.eligibility import eligible

        return eligible(body, dialect, max_temperature=self._max_temperature)

    async def lookup(
        self, owner: str, model: str, endpoint: str, body: dict[str, Any]
    ) -> str | None:
        question = self._question(endpoint, body)
        semantic = None if question is None else self._cache()
        if question is None or semantic is None:
            return None
        found = await semantic.lookup(owner, model, question, self._clock())
        return None if found is None else found[0]

    def add(
        self, owner: str, model: str, endpoint: str, body: dict[str, Any], entry_id: str
    ) -> None:
        question = self._question(endpoint, body)
        semantic = None if question is None else self._cache()
        if question is None or semantic is None:
            return
        task = asyncio.get_running_loop().create_task(
            semantic.add(owner, model, question, entry_id, self._clock())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def remove(self, entry_id: str) -> None:
        if self._semantic is not None:
            self._semantic.remove(entry_id)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._semantic is not None:
            self._semantic.close()
