"""The semantic cache as the exact cache calls it: questions in, cached entry ids out.

Embedding a short question costs ~0.1 ms and is done on the event loop; a longer one
(over `inline_chars`; ~0.5 ms per 1,000 characters) goes to one worker thread, and when
`max_pending` embeddings already wait there the request is a miss rather than a queue
that grows. The index is only touched from the event loop, so it needs no lock. Requests
that do not use the semantic cache never reach this module.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from capgate.semantic.eligibility import Question
from capgate.semantic.embedder import Embedder, Vector, WordLlamaEmbedder
from capgate.semantic.guard import signature
from capgate.semantic.index import THRESHOLD, SemanticIndex


class SemanticCache:
    def __init__(
        self,
        embedder: Embedder,
        index: SemanticIndex,
        *,
        inline_chars: int = 1000,
        max_pending: int = 4,
    ) -> None:
        self._embedder = embedder
        self.index = index
        self._inline_chars = inline_chars
        self._max_pending = max_pending
        self._pending = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capgate-semantic")

    @classmethod
    def create(
        cls, *, max_entries: int = 10_000, ttl: float = 3600.0, threshold: float = THRESHOLD
    ) -> SemanticCache:
        """With the shipped model (~0.3 s to load; capgate[semantic] must be installed)."""
        embedder = WordLlamaEmbedder()
        index = SemanticIndex(embedder.dim, max_entries=max_entries, ttl=ttl, threshold=threshold)
        return cls(embedder, index)

    async def lookup(
        self, owner: str, model: str, question: Question, now: float
    ) -> tuple[str, float] | None:
        """(entry id, similarity) of a cached answer to an equivalent question of the same
        owner, model and context, or None."""
        if not len(self.index):
            return None
        vector = await self._embed(question.text)
        if vector is None:
            return None
        partition = (owner, model, question.context)
        return self.index.lookup(partition, vector, signature(question.text), now)

    async def add(
        self, owner: str, model: str, question: Question, entry_id: str, now: float
    ) -> bool:
        """Index a stored answer; False when the embedder was too busy to take it."""
        vector = await self._embed(question.text)
        if vector is None:
            return False
        partition = (owner, model, question.context)
        self.index.add(partition, entry_id, vector, signature(question.text), now)
        return True

    def remove(self, entry_id: str) -> bool:
        return self.index.remove(entry_id)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _embed(self, text: str) -> Vector | None:
        if len(text) <= self._inline_chars:
            return self._embedder.embed(text)
        if self._pending >= self._max_pending:
            return None
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._embedder.embed, text)
        finally:
            self._pending -= 1
