"""Settling with retries, shared by both engines: a settlement is journaled first, then
written again and again (backing off) until it commits; the journal forgets it then."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from capgate.errors import StoreUnavailable
from capgate.store import journal
from capgate.store.base import Outcome, Reservation

# A settlement that could not be written is tried again after 0.2 s, doubling up to this.
SETTLE_RETRY_MAX_S = 5.0


class SettleRetry:
    """Mixed into SQLiteStore and PostgresStore, which provide `_write_settlement` (and may
    override `_settled`)."""

    _journal: journal.Journal
    _retries: dict[str, asyncio.TimerHandle | None]  # settlement id -> its next try's timer
    _closing: bool

    def _write_settlement(self, res: Reservation, outcome: Outcome) -> asyncio.Future[Any]:
        """Start writing the settlement; StoreUnavailable when the store is closing."""
        raise NotImplementedError

    def _settled(self, res: Reservation, outcome: Outcome, result: Any) -> None:
        """After the settlement committed (with what the write returned)."""

    def settle(self, reservation: Reservation, outcome: Outcome) -> asyncio.Future[None]:
        """Journal the settlement (before the answer's last bytes are sent), then write it,
        again and again until it commits. The future completes then."""
        generation = self._journal.append(reservation, outcome)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._try_settle(reservation, outcome, generation, done, 0)
        return done

    def _try_settle(
        self,
        res: Reservation,
        outcome: Outcome,
        generation: int | None,
        done: asyncio.Future[None],
        tries: int,
    ) -> None:
        if res.id in self._retries:
            self._retries[res.id] = None
        try:
            fut = self._write_settlement(res, outcome)
        except StoreUnavailable as exc:  # shutting down: the journal keeps it
            if not done.done():
                done.set_exception(exc)
            return

        def written(fut: asyncio.Future[Any]) -> None:
            exc = fut.exception()
            if exc is None:
                self._retries.pop(res.id, None)
                self._journal.done(generation)
                self._settled(res, outcome, fut.result())
                if not done.done():
                    done.set_result(None)
                return
            if self._closing:
                if not done.done():
                    done.set_exception(exc)
                return
            delay = min(SETTLE_RETRY_MAX_S, 0.2 * 2**tries)
            # Logged under the engine's module, as before this was shared.
            logging.getLogger(type(self).__module__).error(
                "settlement of %s not written (%s); retrying in %.1f s", res.id, exc, delay
            )
            self._retries[res.id] = asyncio.get_running_loop().call_later(
                delay, self._try_settle, res, outcome, generation, done, tries + 1
            )

        fut.add_done_callback(written)
