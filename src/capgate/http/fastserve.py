"""The fast path: the three gateway routes served on a raw `asyncio.Protocol`, everything
else handed to aiohttp (issue #19; docs/performance.md, "A fast path for the gateway
routes").

Every connection starts here. Its first bytes are read as a request head
(`fasthead.read_head`, checked as they arrive): a plain gateway call is served here (the
route's handler started at its head as aiohttp's is, its `read()` waiting for the body up
to its Content-Length; its answer written in one write, or streamed in chunks with
backpressure; answered before its body was whole, the connection closes after the
answer); anything else hands the *connection* to aiohttp
(`edge._Connection`) with every byte read so far, and aiohttp owns it from then on. So
aiohttp stays the complete server, and this one only has to be exact for the common case.

The edge's rules hold here as there (`http/edge.py`): the head within `header_timeout_s`
of connecting, and within `idle_timeout_s` of the previous answer on a kept-alive
connection; fast and aiohttp connections count together against `max_connections`.
Requests on a connection are answered in order; a client that goes away does not cancel
its handler (its writes fail with ConnectionResetError, as aiohttp's do), and its
connection stays the edge's until the handler ends (shutdown waits for it, the cap counts
it). At shutdown a body still uploading is waited for like any handler (up to the
runner's timeout, then cancelled) and answered if it comes; aiohttp's connections do not
answer such a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.helpers import parse_content_type
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDictProxy

from capgate.deadlines import Deadlines
from capgate.http.door import AnswerStream, Handler
from capgate.http.fasthead import (
    HAND_OFF,
    Dates,
    Head,
    Scan,
    answer_head,
    read_head,
    whole_answer,
)

if TYPE_CHECKING:
    from capgate.http.edge import EdgeServer

log = logging.getLogger("capgate.http")

READ_PAUSE_BYTES = 64 * 1024  # buffered while a request is served: stop reading
# A request answered before its whole body came (a bad key's 401): the rest of the body
# is read and dropped for up to this long before the connection closes (aiohttp's
# lingering time), so that the client finishes sending and reads the answer, where closing
# at once with its bytes unread would reset the connection under it.
LINGER_S = 10.0
_STATUSES = frozenset(status.value for status in HTTPStatus)


@dataclass(frozen=True)
class FastRoutes:
    """What the fast path serves: the gateway's handlers by path (already wrapped by
    tracing when it is on), the body limit, and headers every answer carries (HSTS)."""

    handlers: Mapping[str, Handler]
    max_body: int
    extra_headers: tuple[tuple[str, str], ...] = ()


def head_deadlines() -> Deadlines[FastConnection]:
    """A server's deadlines for the heads its fast connections wait for: within
    `header_timeout_s` of connecting, within `idle_timeout_s` of the previous answer. A
    connection adds and removes an entry per request; one loop timer watches them all."""
    return Deadlines(FastConnection._late, log, "closing a connection whose head is late failed")


class FastRequest:
    """A gateway request read by the fast path (a `door.GatewayRequest`). Its handler
    runs as soon as the head is in (as aiohttp's); `read()` waits for the body when it
    has not all arrived yet, so a request refused on its head (401, 415) is answered
    without reading its body."""

    __slots__ = ("_body", "_conn", "_length", "_stream", "_waiting", "headers", "path")

    method = "POST"

    def __init__(self, conn: FastConnection, head: Head, body: bytes | None) -> None:
        self._conn = conn
        self.path = head.path
        self.headers: CIMultiDictProxy[str] = head.headers
        self._length = head.length
        self._body = body  # None while it arrives
        self._waiting: asyncio.Future[bytes] | None = None
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
        return self._length

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        if self._conn.gone:
            raise ConnectionResetError("the client went away")
        if self._waiting is None:
            self._waiting = self._conn._loop.create_future()
            self._conn.resume_reading()
        return await self._waiting

    def arrived(self, body: bytes) -> None:
        """The whole body is in (`FastConnection._take_body`)."""
        self._body = body
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(body)

    def lost(self) -> None:
        """The client went away before its whole body came (as aiohttp's, an error)."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(ConnectionResetError("the client went away"))

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

    def __init__(
        self,
        edge: EdgeServer,
        routes: FastRoutes,
        dates: Dates,
        heads: Deadlines[FastConnection],
    ) -> None:
        self._edge = edge
        self._routes = routes
        self._dates = dates
        self._heads = heads  # the server's head deadlines (`head_deadlines`)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scan = Scan()  # how far the head being read has been checked
        self._upload: FastRequest | None = None  # being answered, its body not yet whole
        self.gone = False  # the client went away
        self._discard = 0  # bytes of an unread body still to drop before closing
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._timer: asyncio.TimerHandle | None = None  # lingering (`_linger`)
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
        return self._task is None

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
        self.gone = True
        self._stop_timer()
        if self._task is None:  # else its handler runs on: the edge forgets it after
            self._edge.forget(self)  # (shutdown waits for it, the cap counts it)
        if self._upload is not None:
            self._upload.lost()
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
        if self._discard:  # lingering: the rest of a body nobody reads
            self._discard -= min(self._discard, len(data))
            if not self._discard:
                self.force_close()
            return
        self._buffer += data
        if self._task is None:
            self._next()
        elif self._upload is not None:
            self._take_body(self._upload)
        elif len(self._buffer) > READ_PAUSE_BYTES:
            self._pause_reading()

    # -- requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Read the next request's head from the buffer and start its handler; its body
        may still be on its way (`FastRequest.read` waits for it)."""
        if self._closing or not self._buffer:
            return
        head = read_head(self._buffer, self._routes.max_body, self._scan)
        if head is None:
            return
        if isinstance(head, str):
            assert head == HAND_OFF
            self._hand_off()
            return
        self._stop_timer()  # the head is in: its body has no timer, as with aiohttp
        self._scan.reset()
        if not head.keep_alive:
            self._closing = True
        end = head.size + head.length
        if len(self._buffer) >= end:  # the common case: head and body came together
            request = FastRequest(self, head, self._slice(head.size, end))
        else:
            del self._buffer[: head.size]
            request = self._upload = FastRequest(self, head, None)
        handler = self._routes.handlers[head.path]
        self._task = self._loop.create_task(self._serve(request, handler))

    def _slice(self, start: int, end: int) -> bytes:
        """The buffer's bytes [start, end) taken out of it (one copy)."""
        with memoryview(self._buffer) as view:
            body = bytes(view[start:end])
        del self._buffer[:end]
        return body

    def _take_body(self, request: FastRequest) -> None:
        if len(self._buffer) >= request._length:
            self._upload = None
            request.arrived(self._slice(0, request._length))
        elif request._waiting is None and len(self._buffer) > READ_PAUSE_BYTES:
            self._pause_reading()  # until its handler reads it (as aiohttp's)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    async def _serve(self, request: FastRequest, handler: Handler) -> None:
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                if self.gone and isinstance(exc, ConnectionError):  # its body never came
                    log.debug("client went away during %s", request.path)
                    return
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
            if self._upload is not None:  # answered before its body was read (a 401): the
                upload, self._upload = self._upload, None  # rest of it is dropped, and
                self._closing = True  # nothing after it is served
                self._linger(upload._length - len(self._buffer))
            if self.gone:
                self._edge.forget(self)
            self._after()

    def _linger(self, left: int) -> None:
        """Read and drop the `left` bytes of a body answered without it, then close (at
        most LINGER_S from now)."""
        self._buffer.clear()
        if left <= 0 or self._transport is None:
            return
        self._discard = left
        self.resume_reading()
        self._stop_timer()
        self._timer = self._loop.call_later(LINGER_S, self.force_close)

    def _after(self) -> None:
        """An answer is out: close, or go on with the next request."""
        if self._discard:
            return  # closes when the rest of the body is dropped (_linger)
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
        if self._upload is not None:  # answered before its whole body came: closes after
            self._closing = True
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
        if self._upload is not None:  # streamed before its whole body came: closes after
            self._closing = True
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
        """The next head is due within `seconds`: watched by the server's one timer for
        all its connections (`head_deadlines`), not a loop timer made and cancelled per
        request."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = self._loop
        self._deadline = deadline = loop.time() + seconds
        self._heads.add(self, loop, deadline)

    def _stop_timer(self) -> None:
        self._heads.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self, now: float) -> float:
        """The head's deadline passed (`head_deadlines`); nothing more to watch."""
        if self.waiting:  # no whole head in time
            self.force_close()
        return math.inf

    def _hand_off(self) -> None:
        """aiohttp takes the connection, with every byte read so far."""
        transport = self._transport
        if transport is None:
            return
        self._stop_timer()
        self._scan.reset()
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
