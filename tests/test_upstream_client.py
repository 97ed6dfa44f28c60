"""The upstream HTTP client (providers/upstream.py) against scripted raw servers.

The gateway tests run it end to end against the mock upstream (answers, streams, faults,
timeouts, fallbacks); these pin down the HTTP edges a real provider or a proxy in front of
it may show: every way a body can end, keep-alive and when not to reuse, headers split
across packets, compression, each timeout, the connection limit, back-pressure, TLS, and
header injection. Every test runs on the stdlib loop and on uvloop (what `serve` uses).
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from capgate.deadlines import Deadlines
from capgate.errors import UpstreamFailed, UpstreamTimeout
from capgate.providers import upstream
from capgate.providers.upstream import HIGH_WATER, Answer, Pool, header_lines
from conftest import self_signed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 20))

    return runner


class Server:
    """A raw TCP server: `handler` per connection; counts connections and requests."""

    def __init__(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl = ssl_ctx
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{port}/base"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and content-length body), recorded."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        data = head + await reader.readexactly(length)
        self.requests.append(data)
        return data


def pool(url: str, **kw: Any) -> Pool:
    options: dict[str, Any] = {"limit": 10, "connect_s": 2.0, "read_s": 2.0, "total_s": 5.0}
    options.update(kw)
    return Pool("up", url, **options)


async def post(p: Pool, body: bytes = b'{"x":1}', path: str = "/v1/x") -> Answer:
    return await p.post(p.head(path, [("content-type", "application/json")]), body)


def ok(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(extra)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def answering(answer: bytes, ssl_ctx: ssl.SSLContext | None = None) -> Server:
    """A server that answers every request on a connection with `answer`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.request(reader)
            writer.write(answer)
            await writer.drain()

    server = Server(handler, ssl_ctx)
    return server


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given(run: Any) -> None:
    async def main() -> None:
        answer = ok(b'{"ok":true}', b"request-id: r-1\r\nx-ratelimit: 5\r\n")
        async with answering(answer) as srv:
            p = pool(srv.url)
            for _ in range(3):
                a = await post(p, b'{"hello":"world"}')
                assert a.status == 200
                assert a.headers == {"content-type": "application/json", "request-id": "r-1"}
                assert await a.read() == b'{"ok":true}'
            await p.close()
        assert srv.connections == 1
        first = srv.requests[0]
        assert first.startswith(b"POST /base/v1/x HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in first
        assert b"\r\ncontent-type: application/json\r\n" in first
        assert first.endswith(b"content-length: 17\r\n\r\n" + b'{"hello":"world"}')

    run(main())


def test_a_chunked_stream_arrives_piece_by_piece(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            data = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await release.wait()
            release.clear()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection until the client closes it

    release = asyncio.Event()
    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            got = []
            async for chunk in a.chunks():
                got.append(chunk)
                release.set()
            assert got == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
            await p.close()

    run(main())


def test_a_body_that_ends_with_the_connection_is_whole_and_not_reused(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        )
        writer.write(b'{"part":1,')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b'"part2":2}')
        await writer.drain()
        writer.close()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            for _ in range(2):
                a = await post(p)
                assert await a.read() == b'{"part":1,"part2":2}'
            await p.close()
        assert srv.connections == 2

    run(main())


def test_headers_split_byte_by_byte_and_an_interim_answer(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        for byte in ok(b"[1,2,3]", b"Retry-After: 7\r\nX-Should-Retry: true\r\n"):
            writer.write(bytes([byte]))
            await writer.drain()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            assert a.status == 200
            assert a.headers["retry-after"] == "7"
            assert a.headers["x-should-retry"] == "true"
            assert await a.read() == b"[1,2,3]"
            await p.close()

    run(main())


def test_gzip_answers_are_decoded_and_unknown_encodings_refused(run: Any) -> None:
    packed = gzip.compress(b'{"usage":{"output_tokens":3}}')
    answers = [
        ok(packed, b"content-encoding: gzip\r\n"),
        ok(b"????", b"content-encoding: br\r\n"),
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            await srv.request(reader)
            writer.write(answers.pop(0))
            await writer.drain()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            assert await a.read() == b'{"usage":{"output_tokens":3}}'
            with pytest.raises(UpstreamFailed, match="br-encoded"):
                await post(p)
            await p.close()

    run(main())


def test_nothing_sent_in_time_is_a_timeout_and_so_is_a_stalled_body(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await srv.request(reader)
        if b"stall-body" in data:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            await writer.drain()
        await reader.read()  # then nothing more

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url, read_s=0.2)
            with pytest.raises(UpstreamTimeout, match=r'provider "up" sent nothing for 0.2 s'):
                await post(p, b"silent")
            a = await post(p, b"stall-body")
            with pytest.raises(UpstreamTimeout, match="sent nothing"):
                await a.read()
            await p.close()
        assert srv.connections == 2  # a timed-out connection is never reused

    run(main())


def test_one_timer_watches_every_request_of_a_pool(run: Any) -> None:
    """Requests in flight together, each timed out at its own time by the pool's one
    timer: a silent one fails read_s after it was sent, whatever the others do; one that
    answers in time is not failed, and nothing stays watched."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await srv.request(reader)
        if b"late-ok" in data:
            await asyncio.sleep(0.25)  # past the first request's deadline, within its own
            writer.write(ok(b"{}"))
            await writer.drain()
        await reader.read()  # then nothing more

    srv = Server(handler)

    async def timed(p: Pool, body: bytes) -> tuple[float, BaseException | None]:
        start = asyncio.get_running_loop().time()
        try:
            answer = await post(p, body)
            await answer.read()
        except UpstreamTimeout as exc:
            return asyncio.get_running_loop().time() - start, exc
        return asyncio.get_running_loop().time() - start, None

    async def main() -> None:
        async with srv:
            p = pool(srv.url, read_s=0.3)
            first = asyncio.ensure_future(timed(p, b"silent"))
            await asyncio.sleep(0.1)
            second = asyncio.ensure_future(timed(p, b"late-ok"))
            await asyncio.sleep(0.1)
            third = asyncio.ensure_future(timed(p, b"silent"))
            (t1, e1), (t2, e2), (t3, e3) = await asyncio.gather(first, second, third)
            assert isinstance(e1, UpstreamTimeout) and 0.29 <= t1 < 0.45
            assert e2 is None and t2 < 0.3  # answered after the first one failed
            assert isinstance(e3, UpstreamTimeout) and 0.29 <= t3 < 0.45
            assert len(p._deadlines) == 0
            await p.close()

    run(main())


def test_a_trickle_still_ends_at_the_request_timeout(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:  # a byte every 50 ms: never idle for read_s, never done
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url, read_s=0.2, total_s=0.5)
            start = asyncio.get_running_loop().time()
            a = await post(p)
            got = b""
            with pytest.raises(UpstreamTimeout, match="took longer than the request timeout"):
                async for chunk in a.chunks():
                    got += chunk
            assert got.startswith(b"xxx")
            assert 0.45 <= asyncio.get_running_loop().time() - start < 2
            await p.close()

    run(main())


def test_no_connection_means_not_sent(run: Any) -> None:
    async def main() -> None:
        async with Server(lambda r, w: asyncio.sleep(0)) as srv:
            url = srv.url
        p = pool(url)  # the server is gone: connection refused
        with pytest.raises(UpstreamFailed, match=r'provider "up" is unreachable') as caught:
            await post(p)
        assert caught.value.sent is False
        await p.close()

    run(main())


def test_a_body_cut_short_fails_and_the_connection_is_dropped(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await srv.request(reader)
        if b"cut" in data:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            await writer.drain()
            return  # closes
        writer.write(ok(b"{}"))
        await writer.drain()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p, b"cut")
            with pytest.raises(UpstreamFailed, match="closed the connection") as caught:
                await a.read()
            assert caught.value.sent is True
            assert await (await post(p)).read() == b"{}"
            await p.close()
        assert srv.connections == 2

    run(main())


def test_malformed_http_fails_cleanly(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            with pytest.raises(UpstreamFailed, match="malformed HTTP"):
                await post(p)
            await p.close()

    run(main())


def test_the_connection_limit_queues_requests_in_order_and_times_out(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await srv.request(reader)
            await asyncio.sleep(0.05)
            writer.write(ok(data[-2:]))
            await writer.drain()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url, limit=2)

            async def one(i: int) -> bytes:
                return await (await post(p, b"%02d" % i)).read()

            answers = await asyncio.gather(*(one(i) for i in range(8)))
            assert answers == [b"%02d" % i for i in range(8)]
            assert srv.most_open == 2
            # one slot held by an unread answer, the other too: the next waits, then fails
            held = [await post(p, b"h1"), await post(p, b"h2")]
            tight = pool(srv.url, limit=1, connect_s=0.2)
            kept = await post(tight, b"k1")
            with pytest.raises(UpstreamFailed, match="connections stayed busy") as caught:
                await post(tight, b"k2")
            assert caught.value.sent is False
            kept.close()
            assert await (await post(tight, b"k3")).read() == b"k3"  # the slot came back
            for a in held:
                await a.read()
            await p.close()
            await tight.close()

    run(main())


def test_closing_an_unread_answer_drops_its_connection(run: Any) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # EOF: the client dropped the connection
        closed.set()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            chunks = a.chunks()
            assert await anext(chunks) == b"hello"
            a.close()
            await chunks.aclose()
            await asyncio.wait_for(closed.wait(), 2)
            await p.close()

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_reused(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(ok(b"{}"))  # keep-alive by default, yet closed right after
        await writer.drain()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            assert await (await post(p)).read() == b"{}"
            await asyncio.sleep(0.1)  # the close arrives while the connection is idle
            assert await (await post(p)).read() == b"{}"
            await p.close()
        assert srv.connections == 2

    run(main())


def test_a_slow_reader_pauses_the_upstream(run: Any) -> None:
    size = 8 * HIGH_WATER
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        done.set()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            await asyncio.sleep(0.3)  # read nothing for a while
            assert not done.is_set()  # the server is held back ...
            assert a._size < 2 * HIGH_WATER  # ... and little is buffered here
            total = 0
            async for chunk in a.chunks():
                total += len(chunk)
            assert total == size
            await p.close()

    run(main())


def test_tls_verifies_the_certificate(run: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        async with answering(ok(b"{}"), server_ctx) as srv:
            trusted = pool(srv.url, ssl_context=ssl.create_default_context(cafile=str(cert)))
            assert await (await post(trusted)).read() == b"{}"
            default = pool(srv.url)  # the system's CAs do not know this certificate
            with pytest.raises(UpstreamFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate") as c:
                await post(default)
            assert c.value.sent is False
            await trusted.close()
            await default.close()

    run(main())


def test_header_lines_refuse_line_breaks() -> None:
    assert header_lines([("anthropic-beta", "a,b")]) == b"anthropic-beta: a,b\r\n"
    for name, value in [("x", "1\r\nx-api-key: stolen"), ("x\ny", "1"), ("x:y", "1")]:
        with pytest.raises(UpstreamFailed, match="cannot be sent"):
            header_lines([(name, value)])


def test_bad_base_urls_are_refused() -> None:
    for url in ("ftp://example.com", "http://", "example.com"):
        with pytest.raises(ValueError, match="not an http"):
            pool(url)


def test_a_connection_idle_too_long_is_not_reused(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "IDLE_S", 0.1)

    async def main() -> None:
        async with answering(ok(b"{}")) as srv:
            p = pool(srv.url)
            await (await post(p)).read()
            await (await post(p)).read()
            assert srv.connections == 1
            await asyncio.sleep(0.15)  # the server might close it any moment now
            await (await post(p)).read()
            assert srv.connections == 2
            await p.close()

    run(main())


def test_oversized_headers_are_refused(run: Any) -> None:
    huge = b"x-filler: " + b"y" * upstream.MAX_HEAD_BYTES + b"\r\n"

    async def main() -> None:
        async with answering(ok(b"{}", huge)) as srv:
            p = pool(srv.url)
            with pytest.raises(UpstreamFailed, match="headers over"):
                await post(p)
            await p.close()

    run(main())


# -- regressions found in review -----------------------------------------------------------


def test_a_whole_answer_larger_than_the_buffer_mark_is_read(run: Any) -> None:
    size = 3 * HIGH_WATER + 123

    async def main() -> None:
        async with answering(ok(b"x" * size)) as srv:
            p = pool(srv.url, read_s=1.0)
            assert len(await (await post(p)).read()) == size
            assert len(await (await post(p)).read()) == size  # and the connection is fine
            await p.close()
        assert srv.connections == 1

    run(main())


def test_a_failure_is_never_reported_as_an_end(run: Any) -> None:
    packed = gzip.compress(b'{"ok":1}' * 50)
    corrupt = packed[:10] + b"\xff" * 20 + packed[30:]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await srv.request(reader)
        if b"gzip" in data:
            writer.write(ok(corrupt, b"content-encoding: gzip\r\n"))
        else:  # a body that ends with the connection, then silence
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\ndata: partial\n\n")
        await writer.drain()
        await asyncio.sleep(3)

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url, read_s=0.3)
            with pytest.raises(UpstreamFailed, match="corrupt"):
                await (await post(p, b"gzip")).read()
            got = b""
            with pytest.raises(UpstreamTimeout):  # not a normal end when we close it
                async for chunk in (await post(p, b"plain")).chunks():
                    got += chunk
                    await asyncio.sleep(0.6)  # a slow consumer while the timeout fires
            assert got == b"data: partial\n\n"
            await p.close()

    run(main())


def test_an_answer_after_the_answer_is_ignored_and_the_connection_dropped(run: Any) -> None:
    async def main() -> None:
        extra = ok(b"first") + b"HTTP/1.1 500 Oops\r\ncontent-length: 6\r\n\r\nsecond"
        async with answering(extra) as srv:
            p = pool(srv.url)
            a = await post(p)
            assert (a.status, await a.read()) == (200, b"first")
            b = await post(p)
            assert (b.status, await b.read()) == (200, b"first")
            await p.close()
        assert srv.connections == 2  # the first connection was not trusted again

    run(main())


def test_a_slow_reader_is_not_a_slow_upstream_and_its_connection_is_not_reused_paused(
    run: Any,
) -> None:
    size = 4 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await srv.request(reader)
            if b"small" in data:
                writer.write(ok(b"{}"))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                writer.write(b"y" * size)
            await writer.drain()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url, read_s=0.3)
            total = 0
            async for chunk in (await post(p, b"big")).chunks():
                # The reader dawdles (once longer than read_s) while the upstream, held
                # back, waits: not the upstream's fault.
                await asyncio.sleep(0.5 if not total else 0.05)
                total += len(chunk)
            assert total == size
            await p.close()

    run(main())


def test_an_answer_closed_unread_while_reading_was_held_back_frees_a_clean_connection(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "HIGH_WATER", 10)  # any body pauses reading

    async def main() -> None:
        async with answering(ok(b"z" * 100)) as srv:
            p = pool(srv.url, read_s=0.5)
            held = await post(p)
            await asyncio.sleep(0.1)  # the whole answer is in, reading is paused
            held.close()
            assert await (await post(p)).read() == b"z" * 100
            await p.close()

    run(main())


def test_the_end_of_a_stream_is_known_only_when_it_has_come(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"14\r\nevent: message_stop\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    srv = Server(handler)

    async def main() -> None:
        async with srv:
            p = pool(srv.url)
            a = await post(p)
            chunks = a.chunks()
            assert await anext(chunks) == b"event: message_stop\n"
            assert not a.complete  # the relay sends the final event now, not at the end
            assert await anext(chunks, None) is None
            assert a.complete
            await p.close()

    run(main())


def silent() -> Server:
    """A server that takes requests and never answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    return Server(handler)


async def timed_out(p: Pool, wait: float = 0.0) -> float:
    """How long after it was sent a request to `silent()` timed out."""
    await asyncio.sleep(wait)
    start = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        await post(p)
    return asyncio.get_running_loop().time() - start


def test_timeouts_due_one_by_one_cost_a_heap_not_a_scan(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many silent requests sent at staggered times: each firing of the pool's timer looks
    at the requests due, not at every request, so each is checked about once, not once
    per firing (O(n²) in all)."""
    n = 150
    checks = 0
    check = upstream._Connection._check

    def counted(conn: upstream._Connection, now: float) -> float:
        nonlocal checks
        checks += 1
        return check(conn, now)

    monkeypatch.setattr(upstream._Connection, "_check", counted)

    async def main() -> None:
        async with silent() as srv:
            p = pool(srv.url, limit=n, read_s=0.1)
            took = await asyncio.gather(*(timed_out(p, i * 0.001) for i in range(n)))
            assert all(0.099 <= t < 0.3 for t in took)
            assert len(p._deadlines) == 0
            await p.close()

    run(main())
    assert checks <= 2 * n, checks  # one timer scanning them all: thousands


def test_a_sub_millisecond_timeout_fires_once_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's timers work in ms and may fire up to 0.5 ms early: what the timer was set
    for counts as due then, so it does not spin re-arming at zero delay."""
    fires = 0
    fire = Deadlines._fire

    def counted(deadlines: Deadlines[upstream._Connection]) -> None:
        nonlocal fires
        fires += 1
        fire(deadlines)

    monkeypatch.setattr(Deadlines, "_fire", counted)

    async def main() -> None:
        async with silent() as srv:
            p = pool(srv.url, read_s=0.0304)
            for _ in range(3):
                await timed_out(p)
            await p.close()

    uvloop.run(asyncio.wait_for(main(), 20))
    assert fires <= 3 * 3, fires


def test_a_request_that_fails_to_be_checked_leaves_the_others_watched(
    run: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error while one request's timeouts are checked is logged, and that request looked
    at again a read timeout later; the timer still fires for the others."""
    check = upstream._Connection._check
    broken: list[upstream._Connection] = []

    def once_broken(conn: upstream._Connection, now: float) -> float:
        if not broken:
            broken.append(conn)
            raise RuntimeError("boom")
        return check(conn, now)

    monkeypatch.setattr(upstream._Connection, "_check", once_broken)

    async def main() -> None:
        async with silent() as srv:
            p = pool(srv.url, read_s=0.1)
            first, second = await asyncio.wait_for(
                asyncio.gather(timed_out(p), timed_out(p, 0.02)), 2
            )
            assert 0.19 <= first < 0.5  # checked again a read timeout after the error
            assert 0.099 <= second < 0.3
            assert len(p._deadlines) == 0
            await p.close()

    run(main())
    assert "checking a request's timeouts failed" in caplog.text


def test_a_pool_used_again_in_a_new_loop_works(run: Any) -> None:
    """A pool outlives its loop (tests, tools): used in the next one, it answers there
    (the idle connection left in the old loop is dropped)."""
    made: list[Pool] = []

    async def main(last: bool) -> None:
        async with answering(ok(b"{}")) as srv:
            if not made:
                made.append(pool(srv.url))
            p = made[0]
            assert srv.server is not None
            p.port = srv.server.sockets[0].getsockname()[1]  # another server each time
            a = await post(p)
            assert (a.status, await a.read()) == (200, b"{}")
            if last:
                await p.close()

    run(main(last=False))
    run(main(last=True))  # a new loop
    gc.collect()  # a warning about the dropped connection would fail the test here
