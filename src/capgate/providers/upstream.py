"""The upstream HTTP client: HTTP/1.1 over pooled keep-alive connections, parsed by
httptools (llhttp, the parser of Node.js), with nothing the gateway does not use.

Why not aiohttp's client, which capgate used before: `bench/clients.py` posts the same
request to the same fast upstream with each client and measures the CPU it costs. aiohttp's
`ClientSession.post` + `read()` took 3-4x the CPU of this client at 64 requests at a time
(~150-175 µs against ~40-60 µs per request) and ~2x one at a time; httpx took ~40x. A
proxy's whole budget per request is a few hundred µs, so the upstream client was the
largest single item in capgate's profile (docs/performance.md).

What it does: one `Pool` per provider (origin, optional TLS); `post` takes a pooled
connection or opens one (at most `max_connections`, then requests wait their turn), writes
the request in one go and waits for the status line and headers. The answer's body is
read whole (`read`) or as it arrives (`chunks`); gzip/deflate bodies are decoded. A
connection goes back to the pool only after a complete answer that allows keep-alive;
anything else closes it. Idle connections older than `IDLE_S` are not reused (servers
close idle keep-alive connections; reusing one at that moment fails the request).

Timeouts: `connect_s` for getting a connection (waiting for a free one included);
`read_s` between two reads of the answer (and from sending to the first byte); `total_s`
for the whole request, body included. One timer per pool (`capgate.deadlines`), set at the
earliest time one of its requests could be late and re-armed only when it fires (arriving
data just notes the time): a request adds and removes an entry, a streamed answer pays
nothing per chunk.

Errors are `UpstreamFailed` (`sent=False` when the request never left: no connection)
and `UpstreamTimeout`, the gateway's own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import httptools

from capgate.deadlines import Deadlines
from capgate.errors import UpstreamFailed, UpstreamTimeout

log = logging.getLogger(__name__)

IDLE_S = 30.0  # never reuse a connection idle longer than this
MAX_HEAD_BYTES = 256 * 1024  # status line + headers
HIGH_WATER = 1024 * 1024  # buffered body bytes before reading pauses


class Answer:
    """One answer: `status` and the wanted `headers` once `Pool.post` returns; the body
    through `read()` or `chunks()`; `close()` drops it (and its connection) unread."""

    __slots__ = (
        "_body", "_conn", "_done", "_error", "_loop", "_size", "_waiter", "headers", "status",
    )  # fmt: skip
    cost_nano = None  # HTTP providers report usage, not cost: the pricing table prices it

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn: _Connection | None = conn
        self._loop = conn._loop
        self._body: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- the connection's side -----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """More body; the reader is woken once per read from the socket (`_wake`), not
        once per HTTP chunk: an SSE stream comes as one chunk per event."""
        self._body.append(data)
        self._size += len(data)

    def _finish(self) -> None:
        if self._error is None:  # a failure stands, whatever the parser does after it
            self._done = True
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
            self._wake()

    @property
    def complete(self) -> bool:
        """The whole body has arrived and been taken: nothing more will come."""
        return self._done and not self._body

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        await self._waiter

    def _take(self) -> bytes:
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        if self._size >= HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._size = 0
        return data

    # -- the reader's side ---------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        try:
            while not self._done:
                if self._error is not None:
                    raise self._error
                if self._body:  # taken as it comes, so reading never stays paused
                    parts.append(self._take())
                await self._wait()
            parts.append(self._take())
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self._release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what came since the last chunk, joined; then the
        failure, if the answer broke off."""
        try:
            while True:
                if self._body:
                    yield self._take()
                elif self._error is not None:
                    raise self._error
                elif self._done:
                    return
                else:
                    await self._wait()
        finally:
            self._release()

    def close(self) -> None:
        """Drop the answer; an unfinished one takes its connection with it."""
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self._done and self._error is None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses answers with httptools, one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._deadlines = pool._deadlines
        self._who = f'provider "{pool.name}"'
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._answer: Answer | None = None
        self._head: asyncio.Future[Answer] | None = None
        self._head_bytes = 0  # of the headers parsed
        self._raw_head = 0  # received before the headers were complete
        self._headers_done = False
        self._complete = False  # the answer's end was parsed
        self._length_known = False  # content-length or chunked: the end is in the stream
        self._decoder: Any = None
        self._unsupported = ""  # a content-encoding capgate cannot decode
        self._keep = False
        self._read_s = 0.0
        self._last = 0.0  # when the answer last sent something
        self._deadline = 0.0
        self._watched = False  # by the pool's timer (its `_deadlines`)
        self._paused = False
        self.idle_since = 0.0
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP (or uvloop) transport

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._complete:
            # Nothing asked, or more than the answer: a server must not send; the
            # connection cannot be trusted again.
            self._keep = False
            if self._answer is None:
                self._close()
            return
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamFailed(f"{self._who} sent malformed HTTP: {exc}"))
            return
        if not self._headers_done:  # all of it was head: one header may be growing
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES:
                self._head_too_large()
                return
        answer = self._answer
        if answer is not None and answer._body:
            answer._wake()

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if (  # not after a failure of ours (a timeout closes the connection), nor a reset
            answer is not None
            and exc is None
            and self._headers_done
            and not self._length_known
            and answer._error is None
        ):
            self.on_message_complete()  # a body that ends when the connection does
        self._fail(UpstreamFailed(f"{self._who} closed the connection{_because(exc)}"))
        self._pool.lost(self)

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            return  # an answer after the answer: ignored, the connection is not reused
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large()
            return
        key = name.lower()
        if key in PASSED_ON:
            assert self._answer is not None
            self._answer.headers[key.decode()] = value.decode("latin-1")
        elif key == b"content-length" or key == b"transfer-encoding":
            self._length_known = True
        elif key == b"content-encoding":
            encoding = value.decode("latin-1").strip().lower()
            if encoding in ("gzip", "x-gzip"):
                self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                self._decoder = zlib.decompressobj()
            elif encoding not in ("identity", ""):
                self._unsupported = encoding

    def on_headers_complete(self) -> None:
        answer = self._answer
        if answer is None or self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            answer.headers.clear()
            self._length_known = False
            self._decoder, self._unsupported = None, ""
            return
        answer.status = status
        self._headers_done = True
        if status in (204, 304):
            self._length_known = True
        if self._unsupported:
            self._fail(UpstreamFailed(f"{self._who} sent a {self._unsupported}-encoded answer"))
            return
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(answer)

    def on_body(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or not self._headers_done or self._complete:
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self._fail(UpstreamFailed(f"{self._who} sent a corrupt compressed answer: {exc}"))
                return
        if data:
            answer._feed(data)
            if answer._size >= HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is None or not self._headers_done or self._complete:
            self._keep = self._keep and not self._complete
            return  # an interim answer ended, or one after the answer
        self._complete = True
        self._keep = self._parser.should_keep_alive()
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                answer._feed(rest)
        self._stop_timer()
        answer._finish()

    # -- one request -----------------------------------------------------------------------

    def send(self, data: bytes, read_s: float, deadline: float) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._answer = Answer(self)
        self._head = self._loop.create_future()
        self._head_bytes = self._raw_head = 0
        self._headers_done = self._complete = self._length_known = self._keep = False
        self._decoder, self._unsupported = None, ""
        self._read_s, self._deadline = read_s, deadline
        self._last = now = self._loop.time()
        self._watched = True
        self._deadlines.add(self, self._loop, min(deadline, now + read_s))
        self.transport.write(data)
        return self._head

    def _head_too_large(self) -> None:
        self._fail(UpstreamFailed(f"{self._who} sent headers over {MAX_HEAD_BYTES} bytes"))

    def _check(self, now: float) -> float:
        """The pool's timer: fail when the answer is late (then inf), else when to look
        again (data may have moved it on). While reading is paused the reader is slow, not
        the upstream: only the request timeout counts then."""
        if now >= self._deadline:
            self._fail(UpstreamTimeout(f"{self._who} took longer than the request timeout"))
            return math.inf
        if self._paused:
            self._last = now
        elif now >= self._last + self._read_s:
            self._fail(UpstreamTimeout(f"{self._who} sent nothing for {self._read_s:g} s"))
            return math.inf
        return min(self._deadline, self._last + self._read_s)

    def _check_again(self, now: float) -> float:
        """When to look again after `_check` failed: a read timeout later."""
        return now + self._read_s

    def _stop_timer(self) -> None:
        if self._watched:
            self._watched = False
            self._deadlines.remove(self)

    def _fail(self, exc: UpstreamFailed) -> None:
        """The answer cannot be completed: tell whoever waits; the connection is done."""
        self._stop_timer()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        if self._answer is not None:
            self._answer._fail(exc)
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self._last = self._loop.time()  # the read timeout starts again from now
            self.transport.resume_reading()

    def release(self, complete: bool) -> None:
        """The answer is done with: back to the pool when it was read to its end and the
        server keeps the connection open; otherwise closed."""
        self._stop_timer()
        self._answer = None
        self._head = None
        reuse = (
            complete
            and self._keep
            and not self._paused  # an answer closed unread while reading was held back
            and not self.closed
            and not self._pool.closed
        )
        if not reuse:
            self._close()
        self._pool.put_back(self, reuse)


class Pool:
    """Keep-alive connections to one origin, at most `limit` at a time; requests beyond
    that wait, first come first served."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        limit: int,
        connect_s: float,
        read_s: float,
        total_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.name = name
        https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if https else 80)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = netloc if self.port == (443 if https else 80) else f"{netloc}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if https else None
        self._limit = limit
        self._connect_s, self._read_s, self._total_s = connect_s, read_s, total_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._busy = 0  # slots taken: connections handed out or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it is used in
        # The connections waiting for (more of) an answer, watched by one timer: each is
        # checked when it could be late, and watched again until its next time.
        self._deadlines: Deadlines[_Connection] = Deadlines(
            _Connection._check, log, "checking a request's timeouts failed",
            _Connection._check_again,
        )  # fmt: skip
        self.closed = False

    def head(self, path: str, headers: Iterable[tuple[str, str]]) -> bytes:
        """The request line for `path` under the base URL and these header lines (the
        length comes with the body). Precompute it for the headers that never change."""
        return f"POST {self.base_path}{path} HTTP/1.1\r\nhost: {self.origin}\r\n".encode() + (
            header_lines(headers)
        )

    async def post(self, head: bytes, body: bytes) -> Answer:
        """Send `head` (from `head()`, maybe with more `header_lines`) and `body`; the
        answer once its status and headers are in."""
        loop = self._loop
        if loop is None or loop.is_closed():  # (get_running_loop costs a getpid on 3.11)
            loop = self._bind(asyncio.get_running_loop())
        now = loop.time()
        conn = await self._acquire(loop, now)
        data = b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        try:
            return await conn.send(data, self._read_s, now + self._total_s)
        except BaseException:
            conn.release(False)
            raise

    async def _acquire(self, loop: asyncio.AbstractEventLoop, now: float) -> _Connection:
        """A connection: an idle one, or a new one; waiting for a free slot (at most
        `limit`) and connecting share one `connect_s`."""
        if self.closed:
            raise UpstreamFailed("the gateway is shutting down", sent=False)
        deadline = now + self._connect_s
        if self._waiters or self._busy >= self._limit:
            await self._wait_turn(loop, deadline)  # the slot is ours when this returns
            now = loop.time()
        else:
            self._busy += 1
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            if (
                not conn.closed
                and now - conn.idle_since < IDLE_S
                and conn.transport is not None
                and not conn.transport.is_closing()  # its FIN came in this loop turn
            ):
                return conn
            conn._close()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise self._unreachable(f"no connection within {self._connect_s:g} s") from None
            if isinstance(exc, (OSError, ValueError)):  # refused, DNS, TLS; a bad host name
                raise self._unreachable(str(exc) or type(exc).__name__) from None
            raise
        return conn

    async def _wait_turn(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()  # _free_slot skips it
            if isinstance(exc, TimeoutError):
                raise self._unreachable(
                    f"all {self._limit} connections stayed busy for {self._connect_s:g} s"
                ) from None
            raise

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """Used in `loop`: the first time, or again after the loop it was used in closed
        (tests, tools): what belonged to the old loop is dropped (the deadlines drop the
        old loop's when the new loop's first one is added)."""
        if self._loop is not None:
            self._idle.clear()
            self._waiters.clear()
            self._busy = 0
        self._loop = loop
        return loop

    def _unreachable(self, why: str) -> UpstreamFailed:
        return UpstreamFailed(
            f'provider "{self.name}" is unreachable ({self.origin}): {why}', sent=False
        )

    def put_back(self, conn: _Connection, reuse: bool) -> None:
        if reuse and self.closed:  # replaced at runtime while this answer was read
            conn._close()
        elif reuse:
            conn.idle_since = conn._loop.time()
            self._idle.append(conn)
        self._free_slot()

    def _free_slot(self) -> None:
        """A slot is free: hand it to the longest waiter, or give it back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: _busy stays
                return
        self._busy -= 1

    def lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop()._close()
        await asyncio.sleep(0)  # let the transports finish closing


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """`name: value` lines; a line break in either would smuggle in another header."""
    out = []
    for name, value in headers:
        if _UNSAFE.search(value) or _UNSAFE.search(name) or ":" in name:
            raise UpstreamFailed(f"header {name!r} cannot be sent: bad character", sent=False)
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode()


# The answer's headers worth passing on to the client (the rest is the upstream's own).
PASSED_ON = frozenset(
    {b"content-type", b"request-id", b"x-request-id", b"retry-after", b"x-should-retry"}
    | {b"x-amzn-requestid"}  # Bedrock's
)
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters (tab is allowed)


def _because(exc: BaseException | None) -> str:
    return f": {exc}" if exc is not None else ""
