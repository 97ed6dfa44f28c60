"""Settlements handed to the store without waiting for them, and the wait for the last
ones at shutdown. Shared by every call of a server process."""

from __future__ import annotations

import asyncio
import logging
import random

from capgate.logs import AccessLog
from capgate.store.base import Outcome, Reservation, Store

log = logging.getLogger(__name__)

DRAIN_SECONDS = 15.0  # how long shutdown waits for settlements the store cannot write yet


class Settler:
    def __init__(self, store: Store, access: AccessLog) -> None:
        self._store = store
        self._access = access
        self._pending: set[asyncio.Future[None]] = set()

    def settle(self, reservation: Reservation, outcome: Outcome) -> None:
        """Hand the settlement to the store, which journals it at once and retries it
        until it commits (the reservation stays held meanwhile, so a failing store never
        lets money leak, and an answered request is never lost)."""
        pending = self._store.settle(reservation, outcome)
        self._access.finished(reservation, outcome, pending)
        self._pending.add(pending)

        def done(fut: asyncio.Future[None]) -> None:
            self._pending.discard(fut)
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("settlement of %s: %s", reservation.id, fut.exception())

        pending.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for queued settlements (shutdown), at most DRAIN_SECONDS: what the store
        cannot write by then stays in its journal, and the next start writes it."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=DRAIN_SECONDS)
        if self._pending:
            log.warning(
                "%d settlements not written yet; the journal keeps them", len(self._pending)
            )


class Backoff:
    """Exponential backoff with jitter (50-150 % of base * 2^tries), at least retry-after."""

    def __init__(self, base_s: float, rng: random.Random | None = None) -> None:
        self._base = base_s
        self._rng = rng or random.Random()

    def __call__(self, tries: int, retry_after: float | None) -> float:
        wait: float = self._base * (2**tries) * (0.5 + self._rng.random())
        return max(wait, retry_after or 0.0)
