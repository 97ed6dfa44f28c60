"""The HTTP edge, below the routes: what aiohttp answers by itself, and how long a
connection may hold a file descriptor without asking for anything.

- A request aiohttp cannot parse (broken chunking, two Content-Lengths, a header line
  over 8 KiB, a NUL in a header) is answered 400 in JSON, in the dialect its path names
  (`dialect_of_path`), with one log line that names the kind of error and never the
  request's bytes. A router 404 / 405 is JSON the same way (`json_errors`).
- The head of a request must arrive within `header_timeout_s` of connecting, and an idle
  keep-alive connection is closed after `idle_timeout_s`: a client that trickles header
  bytes cannot keep its connection.
- At most `max_connections` at once (and never more than the open-file limit allows):
  one more connection closes the longest-waiting idle one, so `/health` and real clients
  still get in while slow clients hold the rest; when every connection is busy with a
  request, the new one is closed.
- With `fast` routes (`server.fast_path`), every connection starts on the fast path
  (`http/fastserve.py`), which serves plain gateway calls itself and hands anything else
  to aiohttp's `_Connection`, with the same rules: the cap counts both kinds together.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import resource
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from capgate.errors import CapgateError
from capgate.http.dialects import dialect_of_path, error_response
from capgate.http.fasthead import Dates
from capgate.http.fastserve import FastConnection, FastRoutes, head_deadlines

log = logging.getLogger("capgate.http")

FD_HEADROOM = 128  # descriptors kept for the database, logs, upstream connections


class _Refused(CapgateError):
    """An error aiohttp found before any route ran; its status as aiohttp chose it."""

    kind = "invalid_request_error"
    retryable = False

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        if status == 404:
            self.kind = "not_found_error"
        elif status >= 500:
            self.kind = "api_error"


_REASONS = {
    404: "No such route.",
    405: "This route does not take that method.",
    413: "The request body is too large.",
}


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 4xx (router 404 / 405, ...) in the path's dialect, as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = _REASONS.get(exc.status, exc.reason)
        return error_response(dialect_of_path(request.path), _Refused(exc.status, message, headers))


# Possessive, with no two parts taking the same bytes, and matched within the first 8 KiB
# only: a long path that never ends in " HTTP/1.x" costs one pass, not one per position.
_REQUEST_LINE = re.compile(rb"[A-Z]{3,7} (/[^ ?#\r\n]*+)(?:[?#][^ \r\n]*+)? HTTP/1\.[01]\r?\n")
_REQUEST_LINE_BYTES = 8192


class _Connection(RequestHandler):
    """One client connection (aiohttp's handler) with the edge's rules."""

    def __init__(
        self,
        manager: EdgeServer,
        *,
        head_deadline: float | None = None,
        opened: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._path: str | None = None  # of the request being read, for the error dialect
        self._head_timer: asyncio.TimerHandle | None = None
        # Handed over by the fast path: its head deadline and age carry on.
        self._head_deadline = head_deadline
        self.opened = self._loop.time() if opened is None else opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        deadline = self._head_deadline
        if deadline is None:
            deadline = self._loop.time() + self._edge.header_timeout_s
        self._head_timer = self._loop.call_at(deadline, self._head_late)
        self._edge.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.waiting:  # no whole request head yet
            self.force_close()

    @property
    def waiting(self) -> bool:
        """Waiting for a request (none in progress): may be closed without losing one."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def data_received(self, data: bytes) -> None:
        if data[:1].isupper():  # a request line, maybe: its path names the dialect
            line = _REQUEST_LINE.match(data, 0, _REQUEST_LINE_BYTES)
            # Only a whole request line: a body read before aiohttp's handler answers the
            # head's error (a loop turn later) may begin with a capital too (test_http_edge).
            if line is not None:
                self._path = line.group(1).decode("latin-1")
        super().data_received(data)
        # Only once a whole head is parsed: a connection the fast path hands over gets its
        # bytes before aiohttp's start() task has run (no waiter yet, so not `waiting`).
        if self._head_timer is not None and self._request_count:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's error answer, as JSON: a 4xx (the request could not be parsed) with
        one log line naming only the kind of error, a 5xx with its traceback — but a client
        that went away before its request was read is no error of capgate's (a load
        generator stopping, a tool killed mid-upload): one debug line."""
        if isinstance(exc, ConnectionError) and (
            self.transport is None or self.transport.is_closing()
        ):
            log.debug("client went away during %s", request.path)
            return web.Response(status=499)  # nobody is left to read it
        if status >= 500:
            log.error("unhandled error answering %s", request.path, exc_info=exc)
            text = "capgate: internal error (logged)."
        else:
            kind = type(exc).__name__ if exc is not None else "error"
            log.warning("refused a malformed HTTP request from %s (%s)", request.remote, kind)
            text = f"Malformed HTTP request ({kind})."
        if request.writer.output_size > 0:  # an answer has begun: the connection is broken
            raise ConnectionError("cannot send an error after the answer has begun")
        dialect = dialect_of_path(self._path or "/")
        response = error_response(dialect, _Refused(status, text))
        response.force_close()
        return response


Edge = _Connection | FastConnection


class EdgeServer(web.Server):
    """aiohttp's server with `_Connection`s, the fast path in front of them when `fast`
    routes are given, and the connection cap."""

    def __init__(
        self,
        handler: Any,
        *,
        max_connections: int,
        header_timeout_s: float,
        idle_timeout_s: float,
        fast: FastRoutes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._fast_routes = fast
        self._fast: dict[FastConnection, None] = {}  # open, in the order they came
        self._dates = Dates()
        self._heads = head_deadlines()

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self._fast_routes is not None:
            return FastConnection(self, self._fast_routes, self._dates, self._heads)
        return _Connection(self, loop=self._loop, **self._kwargs)

    def aiohttp_connection(self, head_deadline: float, opened: float) -> _Connection:
        """aiohttp's handler for a connection the fast path hands over."""
        return _Connection(
            self, loop=self._loop, head_deadline=head_deadline, opened=opened, **self._kwargs
        )

    def admit(self, new: Edge) -> None:
        """Keep at most `max_connections` (fast and aiohttp's together): close the idle
        one that came first, else (all busy) the new one."""
        if isinstance(new, FastConnection):
            self._fast[new] = None
        if len(self._connections) + len(self._fast) <= self.max_connections:
            return
        idle = [
            other
            for other in itertools.chain(self._connections, self._fast)
            if other is not new and isinstance(other, Edge) and other.waiting
        ]
        if idle:
            min(idle, key=lambda other: other.opened).force_close()
        else:
            new.force_close()

    def internal_error(self, path: str) -> web.Response:
        """The fast path's 500 for a handler that failed (logged), in the path's dialect."""
        error = _Refused(500, "capgate: internal error (logged).")
        return error_response(dialect_of_path(path), error)

    def forget(self, connection: FastConnection) -> None:
        self._fast.pop(connection, None)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for connection in list(self._fast):
            connection.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        fast = [connection.shutdown(timeout) for connection in list(self._fast)]
        await asyncio.gather(super().shutdown(timeout), *fast)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server is an `EdgeServer`."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        header_timeout_s: float,
        idle_timeout_s: float,
        fast: FastRoutes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout_s, **kwargs)
        self._max_connections = max_connections
        self._header_timeout_s = header_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._fast = fast

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        edge = EdgeServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            max_connections=self._max_connections,
            header_timeout_s=self._header_timeout_s,
            idle_timeout_s=self._idle_timeout_s,
            fast=self._fast,
            **server._kwargs,
        )  # fmt: skip
        return edge


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the open-file limit cannot hold that many (raising the
    soft limit toward the hard one first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    capped = max(16, soft - FD_HEADROOM)
    log.warning(
        "server.max_connections %d is above what the open-file limit (%d) allows: %d",
        wanted, soft, capped,
    )  # fmt: skip
    return capped
