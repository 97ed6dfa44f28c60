"""The body log of one process: which requests log their bodies, and the background
work that redacts and writes them and deletes old ones.

A request logs its body and answer when any scope it counts against (its key, the key's
user, team or the team's org) has `log_bodies` on, or when `server.log_bodies` turns it
on for every request. The gateway only keeps a bounded capture on the request path
(`capture.py`); redacting and writing happen in this process's background task, after
the request's own task has handed it over, so a slow or failing write never delays or
fails a request. What fails is counted (`capgate_body_log_writes_total{result}`) and
logged with the request id only, never a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from capgate.bodylog.assemble import assemble
from capgate.bodylog.capture import BodyCapture, cut
from capgate.bodylog.redact import Redactor
from capgate.core.limits import Scope
from capgate.errors import CapgateError
from capgate.store.bodies import BodyRecord, BodyStore

log = logging.getLogger(__name__)

QUEUE = 1000  # captures waiting to be written; more are dropped (and counted)
RETENTION_EVERY_S = 3600.0  # how often old bodies are looked for
RETENTION_BATCH = 1000  # rows per delete: no transaction holds the write lock for long
DAY_S = 86_400.0


class _Store(BodyStore, Protocol):
    """The body store and the key cache's view of which scopes log bodies."""

    named_log_bodies: bool

    def scopes_above(self, key: Scope) -> list[Scope]: ...


class BodyLog:
    def __init__(
        self,
        store: _Store,
        redactor: Redactor,
        max_bytes: int,
        retention_days: float,
        everything: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._redact = redactor
        self.max_bytes = max_bytes
        self._retention_s = retention_days * DAY_S
        self._everything = everything
        self._clock = clock
        self._queue: asyncio.Queue[BodyCapture] = asyncio.Queue(QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self.results: dict[str, int] = {"written": 0, "failed": 0, "dropped": 0}

    def wanted(self, key: Scope) -> bool:
        """Whether a request of `key` logs its body (see the module's docstring)."""
        if self._everything or key.log_bodies:
            return True
        store = self._store
        return store.named_log_bodies and any(s.log_bodies for s in store.scopes_above(key))

    def capture(self, request_id: str, raw: bytes) -> BodyCapture:
        return BodyCapture.of(request_id, raw, self.max_bytes, self._clock())

    def submit(self, capture: BodyCapture) -> None:
        """Hand a finished capture to the background writer; never blocks."""
        try:
            self._queue.put_nowait(capture)
        except asyncio.QueueFull:
            self.results["dropped"] += 1
            log.warning("body log: queue full, body of request %s not logged", capture.request_id)

    def record(self, capture: BodyCapture) -> BodyRecord:
        """The capture redacted and cut to the cap (CPU only: run in a thread)."""
        cap = self.max_bytes
        request, cut_request = cut(
            self._redact(capture.request.decode("utf-8", "replace")), cap, capture.request_bytes
        )
        answer: str | None = None
        cut_answer = False
        if capture.answer_parts and capture.stream is not None:
            text = self._redact(assemble(capture.stream, capture.answer))
            answer, cut_answer = cut(text, cap, len(text.encode()))
            if capture.answer_kept < capture.answer_bytes and not cut_answer:
                answer += (
                    f"\n[TRUNCATED: assembled from the first {capture.answer_kept} of the "
                    f"stream's {capture.answer_bytes} bytes]"
                )
                cut_answer = True
        elif capture.answer_parts:
            answer, cut_answer = cut(
                self._redact(capture.answer.decode("utf-8", "replace")), cap, capture.answer_bytes
            )
        return BodyRecord(
            capture.request_id, capture.created_at, request, answer,
            capture.request_bytes, capture.answer_bytes, cut_request or cut_answer,
        )  # fmt: skip

    # -- background --------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="capgate-body-log"),
            asyncio.create_task(self._retention_loop(), name="capgate-body-retention"),
        ]

    async def close(self) -> None:
        """Write what is queued (a few seconds at most), then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), 5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _write_loop(self) -> None:
        while True:
            capture = await self._queue.get()
            try:
                await self.write(capture)
            except Exception as exc:  # noqa: BLE001 - the writer outlives any one body (only its type is logged: an error may quote it)
                self.results["failed"] += 1
                log.warning(
                    "body log: body of request %s not logged: %s",
                    capture.request_id, type(exc).__name__,
                )  # fmt: skip
            finally:
                self._queue.task_done()

    async def write(self, capture: BodyCapture) -> None:
        try:
            record = await asyncio.to_thread(self.record, capture)
            await self._store.write_body(record)
        except (CapgateError, OSError, ValueError) as exc:
            self.results["failed"] += 1
            # The message names the store's problem; a body is never in it.
            log.warning(
                "body log: body of request %s not logged: %s",
                capture.request_id, type(exc).__name__,
            )  # fmt: skip
        else:
            self.results["written"] += 1

    async def _retention_loop(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(RETENTION_EVERY_S)

    async def prune(self) -> int:
        """Delete bodies older than the retention, in batches; how many were deleted."""
        before = self._clock() - self._retention_s
        deleted = 0
        try:
            while True:
                n = await self._store.delete_bodies(before, RETENTION_BATCH)
                deleted += n
                if n < RETENTION_BATCH:
                    break
                await asyncio.sleep(0.05)  # let requests' writes go between batches
        except CapgateError as exc:
            log.warning("body log: old bodies not deleted now: %s", exc.message)
        if deleted:
            log.info("body log: %d bodies older than the retention deleted", deleted)
        return deleted
