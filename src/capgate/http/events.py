"""`GET /admin/events`: the live feed, as Server-Sent Events.

Several processes (and nodes) may serve one database, and any of them may have admitted
a request, so the feed reads the store rather than listening in-process: while at least
one client is connected, one poller per process reads the ledger and audit entries above
its cursor every `POLL_SECONDS` (`EventSource.events_after`), and hands each new one to
every connection. Ids grow in commit order, so reading by increasing id misses nothing.

Each event's `id:` is the cursor after it (`<ledger id>-<audit id>`); a client that
reconnects with `Last-Event-ID` gets what it missed (up to `BACKFILL` rows). A comment
line every `HEARTBEAT_SECONDS` keeps proxies from closing an idle stream. On shutdown
every stream ends at once, so the server does not wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from capgate.core.bounds import MAX_INT
from capgate.errors import InvalidRequest
from capgate.http.admin_json import audit_json, entry_json
from capgate.store.base import EventSource
from capgate.store.records import EventBatch

POLL_SECONDS = 0.3
HEARTBEAT_SECONDS = 15.0
BACKFILL = 1000
QUEUE_MAX = 5000

log = logging.getLogger(__name__)

_REQUEST_FIELDS = (
    "id", "created_at", "request_id", "key", "user", "team", "model", "provider",
    "upstream_model", "endpoint", "stream", "status", "outcome", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_ms",
    "ttft_ms", "refusal", "error",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame, and what decides who may see it: a ledger entry's team (a team
    admin sees only their teams' entries), or an audit entry (only unscoped admins)."""

    data: bytes
    team: str | None = None
    audit: bool = False

    def visible_to(self, teams: frozenset[str] | None) -> bool:
        return teams is None or (not self.audit and self.team in teams)


def format_events(
    batch: EventBatch, cursor: tuple[int, int]
) -> tuple[list[Frame], tuple[int, int]]:
    """SSE frames for new ledger and audit entries (each kind oldest first), and the
    cursor after them."""
    request_id, audit_id = cursor
    frames = []
    for entry in batch.entries:
        request_id = max(request_id, entry.id)
        shown = entry_json(entry)
        data = {name: shown[name] for name in _REQUEST_FIELDS}
        data["tokens"] = entry.input_tokens + entry.output_tokens
        frames.append(Frame(_frame("request", data, (request_id, audit_id)), entry.team))
    for item in batch.audit:
        audit_id = max(audit_id, item.id)
        frames.append(Frame(_frame("audit", audit_json(item), (request_id, audit_id)), audit=True))
    return frames, (request_id, audit_id)


def _frame(event: str, data: dict[str, Any], cursor: tuple[int, int]) -> bytes:
    return b"event: %s\nid: %d-%d\ndata: %s\n\n" % (
        event.encode(), cursor[0], cursor[1], orjson.dumps(data),
    )  # fmt: skip


def parse_cursor(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    first, _, second = value.partition("-")
    if not (first.isdigit() and second.isdigit()):
        return None
    if max(len(first), len(second)) > 19 or max(int(first), int(second)) > MAX_INT:
        raise InvalidRequest("Last-Event-ID: not an event id this feed sent")
    return int(first), int(second)


class EventHub:
    def __init__(
        self,
        source: EventSource,
        poll_seconds: float = POLL_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._source = source
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        # Each client's queue, and the teams it may see (None: every event).
        self._queues: dict[asyncio.Queue[bytes | None], frozenset[str] | None] = {}
        self._cursor = (0, 0)
        self._poller: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._queues)

    async def stream(
        self, request: web.Request, teams: frozenset[str] | None = None
    ) -> web.StreamResponse:
        """The feed; `teams`: only these teams' ledger entries, no audit entries."""
        if self._closed:
            raise web.HTTPServiceUnavailable()
        resume = parse_cursor(request.headers.get("last-event-id"))  # a 400 before the stream
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        live_from = await self._subscribe(queue, teams)
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-store",
                "x-accel-buffering": "no",  # nginx: pass each event on at once
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: capgate live feed\n\n")
            if resume is not None:
                await self._backfill(response, resume, live_from, teams)
            await self._relay(response, queue)
        except ConnectionResetError:  # the client went away
            pass
        finally:
            self._queues.pop(queue, None)
            if not self._queues:
                await self._stop_poller()
        return response

    async def _relay(
        self, response: web.StreamResponse, queue: asyncio.Queue[bytes | None]
    ) -> None:
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), self._heartbeat)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if frame is None:  # shutting down, or this client fell too far behind
                return
            await response.write(frame)

    async def _backfill(
        self,
        response: web.StreamResponse,
        since: tuple[int, int],
        until: tuple[int, int],
        teams: frozenset[str] | None,
    ) -> None:
        """What a reconnecting client missed, up to where the live frames take over."""
        since = (max(since[0], until[0] - BACKFILL), max(since[1], until[1] - BACKFILL))
        batch = await self._source.events_after(*since, limit=BACKFILL)
        missed = EventBatch(
            tuple(e for e in batch.entries if e.id <= until[0]),
            tuple(a for a in batch.audit if a.id <= until[1]),
        )
        frames, _ = format_events(missed, since)
        for frame in frames:
            if frame.visible_to(teams):
                await response.write(frame.data)

    async def _subscribe(
        self, queue: asyncio.Queue[bytes | None], teams: frozenset[str] | None
    ) -> tuple[int, int]:
        """Join the poller (starting it if needed); returns the cursor from which this
        queue receives every event."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._poller is None:
                self._cursor = await self._source.latest_ids()
                self._poller = asyncio.create_task(self._run())
            self._queues[queue] = teams
            return self._cursor

    async def _stop_poller(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                rows = await self._source.events_after(*self._cursor)
            except Exception:
                log.exception("live feed: reading new events failed")
                continue
            frames, self._cursor = format_events(rows, self._cursor)
            for frame in frames:
                self._publish(frame)

    def _publish(self, frame: Frame) -> None:
        for queue, teams in list(self._queues.items()):
            if not frame.visible_to(teams):
                continue
            try:
                queue.put_nowait(frame.data)
            except asyncio.QueueFull:  # a stuck client: end its stream; it will reconnect
                self._queues.pop(queue, None)
                queue.get_nowait()
                queue.put_nowait(None)

    async def close(self) -> None:
        """End every stream (the server is stopping) and stop polling."""
        self._closed = True
        for queue in list(self._queues):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        await self._stop_poller()
