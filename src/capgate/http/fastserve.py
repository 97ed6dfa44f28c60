"""The fast path: the three gateway routes served on a raw `asyncio.Protocol`, everything
else handed to aiohttp (issue #19; docs/performance.md, "A fast path for the gateway
routes").

Every connection starts here. Its first bytes are read as a request head
(`fasthead.read_head`): a plain gateway call is served here (the body read to its
Content-Length, the route's handler run, its answer written in one write, or streamed
in chunks with backpressure); anything else hands the *connection* to aiohttp
(`edge._Connection`) with every byte read so far, and aiohttp owns it from then on. So
aiohttp stays the complete server, and this one only has to be exact for the common case.

The edge's rules hold here as there (`http/edge.py`): the head within `header_timeout_s`
of connecting, and within `idle_timeout_s` of the previous answer on a kept-alive
connection; fast and aiohttp connections count together against `max_connections`.
Requests on a connection are answered in order; a client that goes away does not cancel
its handler (its writes fail with ConnectionResetError, as aiohttp's do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.helpers import parse_content_type
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDictProxy

from capgate.http.door import AnswerStream, Handler
from capgate.http.fasthead import HAND_OFF, Dates, Head, answer_head, read_head, whole_answer

if TYPE_CHECKING:
    from capgate.http.edge import EdgeServer

log = logging.getLogger("capgate.http")

READ_PAUSE_BYTES = 64 * 1024  # buffered while a request is served: stop reading
_STATUSES = frozenset(status.value for status in HTTPStatus)


@dataclass(frozen=True)
class FastRoutes:
    """What the fast path serves: the gateway's handlers by path (already wrapped by
    tracing when it is on), the body limit, and headers every answer carries (HSTS)."""

    handlers: Mapping[str, Handler]
    max_body: int
    extra_headers: tuple[tuple[str, str], ...] = ()


class FastRequest:
    """A gateway request read by the fast path (a `door.GatewayRequest`)."""

    __slots__ = ("_body", "_conn", "_stream", "headers", "path")

    method = "POST"

    def __init__(self, conn: FastConnection, head: Head, body: bytes) -> None:
        self._conn = conn
        self.path = head.path
        self.headers: CIMultiDictProxy[str] = head.headers
        self._body = body
        self._stream: FastStream | None = None

    @property
    def content_type(self) -> str:
        raw = self.headers.get("content-type")
        if raw is None:
            return "application/octet-stream"  # as aiohttp (RFC 2616)
        if raw == "application/json":
            return raw
        return parse_content_type(raw)[0]

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    async def read(self) -> bytes:
        return self._body

    async def open_stream(
        self, status: int, headers: Mapping[str, str]
    ) -> tuple[web.StreamResponse, AnswerStream]:
        stream = self._stream = FastStream(self._conn, self._conn.stream_head(status, headers))
        return web.StreamResponse(status=status, headers=headers), stream


class FastStream:
    """A chunked answer. Its head goes out with the first chunk (one write); a write
    waits while the client reads slower than the answer comes (the transport paused)."""

    __slots__ = ("_conn", "_head", "ended")

    def __init__(self, conn: FastConnection, head: bytes) -> None:
        self._conn = conn
        self._head = head
        self.ended = False

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(b"%x\r\n%b\r\n" % (len(data), data))

    async def write_eof(self, data: bytes = b"") -> None:
        if self.ended:
            return
        chunk = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        await self._send(chunk + b"0\r\n\r\n")
        self.ended = True

    async def _send(self, data: bytes) -> None:
        head, self._head = self._head, b""
        self._conn.write(head + data if head else data)
        await self._conn.drain()


class FastConnection(asyncio.Protocol):
    """One client connection, served here until something unusual arrives."""

    def __init__(self, edge: EdgeServer, routes: FastRoutes, dates: Dates) -> None:
        self._edge = edge
        self._routes = routes
        self._dates = dates
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: Head | None = None  # read, its body not yet whole
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # of the head being read
        self._closing = False  # close after the answer in progress
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.opened = self._loop.time()

    # -- the edge's view ---------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Waiting for a request (none in progress): may be closed without losing one."""
        return self._task is None and self._head is None

    def force_close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        """Shutting down: close now when idle, else after the answer in progress."""
        self._closing = True
        if self._task is None:
            self.force_close()

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - as aiohttp's
        """Let the answer in progress finish (at most `timeout`), then close."""
        self._closing = True
        task = self._task
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=timeout)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.force_close()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        tcp_keepalive(self._transport)  # type: ignore[arg-type]
        self._wait_head(self._edge.header_timeout_s)
        self._edge.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._stop_timer()
        self._edge.forget(self)
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next()
        elif len(self._buffer) > READ_PAUSE_BYTES and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    # -- requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Read the next request from the buffer; serve it when whole."""
        head = self._head
        if head is None:
            if self._closing or not self._buffer:
                return
            found = read_head(self._buffer, self._routes.max_body)
            if found is None:
                return
            if isinstance(found, str):
                assert found == HAND_OFF
                self._hand_off()
                return
            self._stop_timer()  # the head is in: its body has no timer, as with aiohttp
            head = self._head = found
        end = head.size + head.length
        if len(self._buffer) < end:
            return
        body = bytes(self._buffer[head.size : end])
        del self._buffer[:end]
        self._head = None
        if not head.keep_alive:
            self._closing = True
        request = FastRequest(self, head, body)
        handler = self._routes.handlers[head.path]
        self._task = self._loop.create_task(self._serve(request, handler))

    async def _serve(self, request: FastRequest, handler: Handler) -> None:
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                log.error("unhandled error answering %s", request.path, exc_info=exc)
                self._closing = True
                stream = request._stream
                if stream is None or stream._head:  # nothing sent yet: the error can be
                    request._stream = None
                    self._answer_error(request.path)
                return
            stream = request._stream
            if stream is None:
                self._answer(response, request.path)
                # A client that sends requests without reading the answers: the next one
                # waits until this one has left (as aiohttp waits for a drain).
                with contextlib.suppress(ConnectionResetError):
                    await self.drain()
            elif not stream.ended:  # returned unfinished (the upstream broke): ended here,
                with contextlib.suppress(ConnectionResetError):  # as aiohttp ends it
                    await stream.write_eof()
        finally:
            self._task = None
            self._after()

    def _after(self) -> None:
        """An answer is out: close, or go on with the next request."""
        if self._closing or self._transport is None:
            self.force_close()
            return
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        self._wait_head(self._edge.idle_timeout_s)
        self._next()

    def _answer(self, response: web.StreamResponse, path: str) -> None:
        if not isinstance(response, web.Response):
            log.error("the fast path cannot write a %s on %s", type(response).__name__, path)
            self._closing = True
            self._answer_error(path)
            return
        extra = self._routes.extra_headers
        try:
            data = whole_answer(response, self._closing, extra, self._dates.now())
        except (TypeError, ValueError) as exc:
            log.error("unwritable answer on %s", path, exc_info=exc)
            self._closing = True
            self._answer_error(path)
            return
        self._write_quietly(data)

    def _answer_error(self, path: str) -> None:
        response = self._edge.internal_error(path)
        data = whole_answer(response, True, self._routes.extra_headers, self._dates.now())
        self._write_quietly(data)

    def _write_quietly(self, data: bytes) -> None:
        """A whole answer: nobody to tell when the client has gone (as aiohttp)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def stream_head(self, status: int, headers: Mapping[str, str]) -> bytes:
        reason = HTTPStatus(status).phrase if status in _STATUSES else ""
        framing = "Transfer-Encoding: chunked\r\n"
        return answer_head(
            status, reason, dict(headers), framing, self._closing, self._routes.extra_headers,
            self._dates.now(), False,
        )  # fmt: skip

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)

    async def drain(self) -> None:
        if not self._writing_paused:
            return
        if self._transport is None:
            raise ConnectionResetError("Cannot write to closing transport")
        self._drained = self._loop.create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    # -- timers and the hand-off -------------------------------------------------------

    def _wait_head(self, seconds: float) -> None:
        self._stop_timer()
        self._deadline = self._loop.time() + seconds
        self._timer = self._loop.call_at(self._deadline, self._late)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        if self.waiting:  # no whole head in time
            self.force_close()

    def _hand_off(self) -> None:
        """aiohttp takes the connection, with every byte read so far."""
        transport = self._transport
        if transport is None:
            return
        self._stop_timer()
        data, self._buffer = bytes(self._buffer), bytearray()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._edge.forget(self)
        self._transport = None
        connection = self._edge.aiohttp_connection(self._deadline, self.opened)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        connection.data_received(data)
