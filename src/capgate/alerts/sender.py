"""Sending the queued webhook deliveries: each signed at sending time, retried with
exponential backoff (bounded: `max_attempts`, at most `MAX_BACKOFF_S` apart), every
attempt written to the delivery log. A delivery is leased to one sender while it is
tried; if its process dies, any other takes it over once the lease has run out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from capgate import __version__
from capgate.alerts.payload import SIGNATURE_HEADER, sign
from capgate.alerts.setup import AlertSetup, Webhook
from capgate.alerts.targets import GuardedResolver, PrivateTarget, check_url
from capgate.store.alerting import AlertDelivery, AlertStore, DeliveryAttempt

log = logging.getLogger(__name__)

LEASE_S = 60.0  # a delivery's lease: well beyond one attempt's timeout
TIMEOUT_S = 10.0  # one attempt, connecting included
MAX_BACKOFF_S = 3600.0


def backoff(attempts: int, base_s: float) -> float:
    """Seconds before the next try after `attempts` failed ones: base, 2x, 4x ... capped."""
    return float(min(base_s * 2 ** (attempts - 1), MAX_BACKOFF_S))


class Sender:
    def __init__(
        self,
        store: AlertStore,
        owner: str,
        max_attempts: int,
        retry_base_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.owner = owner
        self._max_attempts = max_attempts
        self._base = retry_base_s
        self._clock = clock
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_private)
        if session is None:
            resolver = None if allow_private else GuardedResolver()
            connector = aiohttp.TCPConnector(resolver=resolver, limit=20)
            session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
            )
            self._sessions[allow_private] = session
        return session

    async def run_due(self, setup: AlertSetup, allow_private: bool) -> None:
        """Take the deliveries due now and start sending each (not waiting for them)."""
        now = self._clock()
        for delivery in await self._store.take_deliveries(self.owner, now, now + LEASE_S):
            if delivery.id in self._in_flight:
                continue
            self._in_flight.add(delivery.id)
            hook = setup.webhook(delivery.webhook)
            task = asyncio.create_task(self._deliver(delivery, hook, allow_private))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every send started so far has ended (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(self, delivery: AlertDelivery, hook: Webhook | None, allow: bool) -> None:
        try:
            status, error, final = await self._attempt(delivery, hook, allow)
            attempts = delivery.attempts + 1
            now = self._clock()
            if status is not None and 200 <= status < 300:
                outcome, next_at = "delivered", now
            elif final or attempts >= self._max_attempts:
                outcome, next_at = "failed", now
            else:
                outcome, next_at = "pending", now + backoff(attempts, self._base)
            if outcome != "delivered":
                log.warning("alert delivery %s to %s: %s", delivery.id, delivery.webhook, error)
            attempt = DeliveryAttempt(delivery.id, outcome, attempts, next_at, status, error, now)
            await self._store.record_attempt(attempt)
        except Exception:  # the store is down: the lease runs out, it is tried again
            log.exception("recording alert delivery %s failed", delivery.id)
        finally:
            self._in_flight.discard(delivery.id)

    async def _attempt(
        self, delivery: AlertDelivery, hook: Webhook | None, allow_private: bool
    ) -> tuple[int | None, str | None, bool]:
        """(HTTP status, error, whether retrying is pointless)."""
        if hook is None:
            return None, f"webhook {delivery.webhook!r} no longer exists", True
        try:
            check_url(hook.url, allow_private)
        except ValueError as exc:
            return None, str(exc).removeprefix("url: "), True
        body = delivery.body.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": f"capgate/{__version__}",
            SIGNATURE_HEADER: sign(hook.secret, body, int(self._clock())),
            "X-Capgate-Delivery": str(delivery.id),
        }
        session = self._session(allow_private)
        try:
            async with session.post(
                hook.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                ok = 200 <= response.status < 300
                return response.status, None if ok else f"HTTP {response.status}", False
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, PrivateTarget)  # not worth retrying
            return None, f"cannot connect: {exc.os_error}", refused
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The URL may be a credential (Slack's are): never in the log or the error.
            shown = str(exc).replace(hook.url, "<webhook url>")
            return None, f"{type(exc).__name__}: {shown}".rstrip(": "), False

    async def close(self) -> None:
        """Stop sending: what is under way stays pending (its lease runs out)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
