"""The fast path (http/fastserve.py, issue #19): the three gateway routes served on
capgate's own HTTP/1.1 protocol, anything unusual handed to aiohttp with the connection.
Real servers on loopback, raw sockets. Which server answered shows in `Server`: `capgate`
for the fast path, aiohttp's own name for aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from capgate.http.door import GatewayRequest
from capgate.http.edge import EdgeServer
from capgate.http.fasthead import GATEWAY_PATHS
from capgate.http.fastserve import FastRoutes
from conftest import Capgate, Upstream, gateway_config, self_signed, start_capgate

FAST = "capgate"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def fast(self) -> bool:
        return self.headers.get("server") == FAST

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """One client connection: requests written raw, answers read one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"closed; read so far: {self.buf[:300]!r}")
        self.buf += data

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if 100 <= status < 200:
            return self.answer()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return Answer(status, headers, body)
        return Answer(status, headers, self._take(int(headers["content-length"])))

    def closed_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536) == b""
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            return True


_OPENED: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def connect(server: Capgate, timeout: float = 15) -> Conn:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _OPENED.append(sock)
    return Conn(sock)


def post(
    path: str, body: dict[str, Any] | bytes, key: str, extra: str = "", version: str = "1.1"
) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\n{extra}"
    )
    if "Transfer-Encoding" not in extra:
        head += f"Content-Length: {len(raw)}\r\n"
    return head.encode() + b"\r\n" + raw


def claude(text: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6", "max_tokens": 200, "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }  # fmt: skip


def gpt(text: str, stream: bool = False, max_tokens: int = 200) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini", "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }  # fmt: skip


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    tmp = tmp_path_factory.mktemp("fast")
    # The idle timeout well above the header timeout, so that a test can tell them apart.
    settings = {"header_timeout_s": 1.5, "idle_timeout_s": 8, "max_request_mb": 1}
    started = start_capgate(tmp, gateway_config(upstream, server=settings), log=tmp / "log")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def key(server: Capgate) -> str:
    return server.create_key("fast-path")


def test_pipelined_requests_are_answered_in_order(server: Capgate, key: str) -> None:
    conn = connect(server)
    conn.send(
        post("/v1/messages", claude("one"), key)
        + post("/v1/chat/completions?x=1", gpt("two"), key)
        + post("/v1/messages?beta=true", claude("three"), key)
    )
    first, second, third = conn.answer(), conn.answer(), conn.answer()
    assert all(a.status == 200 and a.fast for a in (first, second, third))
    assert "one" in first.json()["content"][0]["text"]
    assert "two" in second.json()["choices"][0]["message"]["content"]
    assert "three" in third.json()["content"][0]["text"]


def test_a_body_arriving_byte_by_byte(server: Capgate, key: str) -> None:
    conn = connect(server)
    for byte in post("/v1/messages", claude("slowly"), key):
        conn.send(bytes([byte]))
        time.sleep(0.001)
    answer = conn.answer()
    assert answer.status == 200 and answer.fast, answer
    assert "slowly" in answer.json()["content"][0]["text"]


def test_a_gateway_request_then_others_on_one_connection(server: Capgate, key: str) -> None:
    """The connection goes to aiohttp at the first request that is not a gateway call,
    and aiohttp answers everything after it on that connection (correct, if slower)."""
    conn = connect(server)
    conn.send(post("/v1/messages", claude("a"), key))
    assert conn.answer().fast
    conn.send(HEALTH)
    health = conn.answer()
    assert health.status == 200 and not health.fast and health.headers["server"]
    conn.send(post("/v1/chat/completions", gpt("b"), key))
    after = conn.answer()
    assert after.status == 200 and not after.fast
    assert "b" in after.json()["choices"][0]["message"]["content"]
    dashboard = connect(server)
    dashboard.send(
        post("/v1/messages", claude("c"), key) + b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert dashboard.answer().fast
    page = dashboard.answer()
    assert page.status in (200, 302) and not page.fast


def test_an_admin_request_then_a_gateway_request(server: Capgate, key: str) -> None:
    conn = connect(server)
    conn.send(HEALTH + post("/v1/messages", claude("later"), key))
    assert conn.answer().status == 200
    answer = conn.answer()
    assert answer.status == 200 and not answer.fast
    assert "later" in answer.json()["content"][0]["text"]


def _chunked(raw: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(raw), raw)


@pytest.mark.parametrize("case", ["chunked", "expect", "gzip", "http10"])
def test_unusual_requests_are_served_by_aiohttp(server: Capgate, key: str, case: str) -> None:
    raw = json.dumps(gpt(case)).encode()
    if case == "chunked":
        request = post("/v1/chat/completions", b"", key, "Transfer-Encoding: chunked\r\n")
        request += _chunked(raw)
    elif case == "expect":
        request = post("/v1/chat/completions", raw, key, "Expect: 100-continue\r\n")
    elif case == "gzip":
        request = post(
            "/v1/chat/completions", gzip.compress(raw), key, "Content-Encoding: gzip\r\n"
        )
    else:
        request = post("/v1/chat/completions", raw, key, version="1.0")
    conn = connect(server)
    conn.send(request)
    answer = conn.answer()
    assert answer.status == 200 and not answer.fast, answer
    assert case in answer.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("path", "dialect"), [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")]
)
def test_a_malformed_head_is_the_json_400_of_its_dialect(
    server: Capgate, path: str, dialect: str
) -> None:
    conn = connect(server)
    conn.send(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nBad Name: y\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    )
    answer = conn.answer()
    assert answer.status == 400 and not answer.fast, answer
    data = answer.json()
    assert data["error"]["type"] == "invalid_request_error"
    assert (data.get("type") == "error") == (dialect == "anthropic")


@pytest.mark.parametrize(
    ("path", "dialect"), [("/v1/messages", "anthropic"), ("/v1/responses", "openai")]
)
def test_a_body_over_the_limit_is_the_413_of_its_dialect(
    server: Capgate, key: str, path: str, dialect: str
) -> None:
    conn = connect(server)
    head = post(path, b"", key).replace(b"Content-Length: 0", b"Content-Length: 2000000")
    conn.send(head + b"{" * 1000)
    answer = conn.answer()
    assert answer.status == 413, answer
    assert (answer.json().get("type") == "error") == (dialect == "anthropic")


def test_the_head_must_arrive_in_time(server: Capgate) -> None:
    conn = connect(server)
    conn.send(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    assert conn.closed_within(6)
    assert 1 < time.monotonic() - started < 4  # header_timeout_s: 1.5


def test_the_head_must_arrive_in_time_after_a_hand_off(server: Capgate) -> None:
    """A GET goes to aiohttp at its first line, before its head is whole: the header
    timeout (1.5 s) still ends it, not the idle timeout (8 s)."""
    conn = connect(server)
    conn.send(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()
    closed = False
    for n in range(20):  # a header line every 0.5 s, never the blank line
        if conn.closed_within(0.5):
            closed = True
            break
        with contextlib.suppress(OSError):
            conn.send(b"X-Slow-%d: 1\r\n" % n)
    assert closed
    assert 1 < time.monotonic() - started < 4


def test_more_than_128_headers_are_aiohttps_400(server: Capgate, key: str) -> None:
    many = "".join(f"X-Many-{n}: 1\r\n" for n in range(200))
    conn = connect(server)
    conn.send(post("/v1/messages", claude("many"), key, extra=many))
    answer = conn.answer()
    assert answer.status == 400 and not answer.fast, answer
    assert answer.json()["type"] == "error"  # the Anthropic dialect
    line_by_line = connect(server)  # handed off at its 129th line, before the head ends
    request = post("/v1/messages", claude("many"), key, extra=many)
    lines = request.split(b"\n")
    for line in lines[:-1]:
        try:
            line_by_line.send(line + b"\n")
        except OSError:  # aiohttp answered at its 129th header, and closed
            break
        time.sleep(0.002)
    answer = line_by_line.answer()
    assert answer.status == 400 and not answer.fast


def test_a_request_refused_on_its_head_does_not_wait_for_its_body(server: Capgate) -> None:
    """A bad key is answered at the head, as aiohttp does: the body is not waited for
    (nor held in memory), and the connection closes after the answer."""
    conn = connect(server)
    head = post("/v1/messages", b"x" * 100, "cg-not-a-key")
    conn.send(head[:-90])  # 10 bytes of its 100
    conn.sock.settimeout(3)
    answer = conn.answer()
    assert answer.status == 401 and answer.fast, answer
    assert answer.headers["connection"] == "close"
    with contextlib.suppress(OSError):
        conn.send(b"x" * 90 + post("/v1/messages", b"{}", "cg-not-a-key"))
    assert conn.closed_within(3) and conn.buf == b""  # nothing after it is served


def test_a_body_answered_without_it_is_read_to_its_end_before_closing(server: Capgate) -> None:
    """Refused at its head with most of a large body still to come: the client can send
    the rest (dropped unread) and then sees an orderly close, not a reset that could
    take the answer with it (aiohttp's lingering close)."""
    conn = connect(server)
    rest = 900 * 1024  # under the fixture's 1 MB limit, well over the socket buffers
    head = post("/v1/messages", b"x" * (rest + 10), "cg-not-a-key")
    conn.send(head[:-rest])
    conn.sock.settimeout(5)
    answer = conn.answer()
    assert answer.status == 401 and answer.headers["connection"] == "close", answer
    time.sleep(0.2)  # had the server closed with bytes unread, the next sends would fail
    conn.sock.sendall(b"x" * rest)  # every byte accepted: no EPIPE / ECONNRESET
    conn.sock.settimeout(5)
    assert conn.sock.recv(65536) == b""  # closed in order (a reset raises here)
    assert conn.buf == b""


def test_an_idle_fast_connection_is_closed(server: Capgate, key: str) -> None:
    conn = connect(server)
    conn.send(post("/v1/messages", claude("idle"), key))
    assert conn.answer().fast
    started = time.monotonic()
    assert conn.closed_within(14)
    assert 6 < time.monotonic() - started < 11  # idle_timeout_s: 8


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_slow_reader_holds_the_stream_back(server: Capgate, key: str) -> None:
    """Backpressure: a client that does not read keeps capgate's memory flat (the
    upstream waits); the whole stream then arrives intact."""
    conn = connect(server, timeout=60)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    before = _rss_kb(server.proc.pid)
    conn.send(post("/v1/chat/completions", gpt("mock:words=100000", True, 200_000), key))
    time.sleep(3)  # without backpressure capgate takes the whole stream in meanwhile
    grown = _rss_kb(server.proc.pid) - before
    answer = conn.answer()
    assert answer.status == 200 and answer.fast
    assert len(answer.body) > 20_000_000, len(answer.body)
    assert grown < 8_000, f"capgate grew by {grown} KiB while the client did not read"
    events = [e for e in answer.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    words = sum(
        len(json.loads(e[6:])["choices"][0]["delta"].get("content", "").split())
        for e in events[:-1]
        if json.loads(e[6:])["choices"]
    )
    assert words == 100_000


def _entry(server: Capgate, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = server.ledger(request_id=request_id)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{request_id} not in the ledger")


def _stream_start(conn: Conn) -> dict[str, str]:
    while b"\r\n\r\n" not in conn.buf:
        conn._fill()
    head = conn.buf.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])}


def test_a_client_gone_mid_stream_is_cancelled_and_released(server: Capgate, key_name: str) -> None:
    leaver = server.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": "5"}])
    conn = connect(server)
    conn.send(post("/v1/messages", claude("mock:words=3000 mock:stream_delay_ms=10", True), leaver))
    headers = _stream_start(conn)
    assert headers["server"] == FAST
    conn.sock.close()
    entry = _entry(server, headers["x-capgate-request-id"])
    assert (entry["status"], entry["outcome"]) == (499, "cancelled"), entry
    assert "client disconnected" in entry["error"], entry  # not "server shutting down"
    usage = {u["metric"]: u for u in server.key_usage(key_name)}["cost_usd"]
    assert float(usage["reserved"]) == 0 and float(usage["used"]) > 0


def test_tls_through_the_fast_path(upstream: Upstream, tmp_path: Path) -> None:
    cert, key_file = self_signed(tmp_path)
    settings = {"tls_cert": str(cert), "tls_key": str(key_file)}
    tls = start_capgate(tmp_path, gateway_config(upstream, server=settings))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        tls._http = type(tls._http)(
            base_url=tls.url, headers=tls._http.headers, verify=context, timeout=30
        )
        key = tls.create_key("tls")
        host, port = tls.url.removeprefix("https://").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=15)
        _OPENED.append(raw)
        conn = Conn(context.wrap_socket(raw, server_hostname=host))
        _OPENED.append(conn.sock)
        conn.send(post("/v1/messages", claude("secure"), key))
        answer = conn.answer()
        assert answer.status == 200 and answer.fast
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
        conn.send(post("/v1/messages", claude("stream", True), key))
        streamed = conn.answer()
        assert streamed.fast and b"message_stop" in streamed.body
        assert streamed.headers["strict-transport-security"] == "max-age=31536000"
        conn.send(HEALTH)  # handed to aiohttp under TLS
        health = conn.answer()
        assert health.status == 200 and not health.fast
        assert health.headers["strict-transport-security"] == "max-age=31536000"
    finally:
        tls.close()


def test_the_fast_path_can_be_turned_off(upstream: Upstream, tmp_path: Path) -> None:
    off = start_capgate(tmp_path, gateway_config(upstream), env={"CAPGATE_FAST_PATH": "false"})
    try:
        key = off.create_key("off")
        conn = connect(off)
        conn.send(post("/v1/messages", claude("plain"), key) + HEALTH)
        answer = conn.answer()
        assert answer.status == 200 and not answer.fast
        assert "plain" in answer.json()["content"][0]["text"]
        assert conn.answer().status == 200
    finally:
        off.close()


def test_the_connection_cap_counts_both_kinds(upstream: Upstream, tmp_path: Path) -> None:
    """16 connections: 8 waiting on the fast path (the oldest), 8 idle on aiohttp's.
    Each new one closes the oldest idle, whichever server holds it."""
    settings = {"max_connections": 16, "header_timeout_s": 60, "idle_timeout_s": 60}
    capped = start_capgate(tmp_path, gateway_config(upstream, server=settings))
    conns: list[Conn] = []
    try:
        fast = [connect(capped) for _ in range(8)]
        time.sleep(0.2)
        slow = []
        for _ in range(8):
            conn = connect(capped)
            conn.send(HEALTH)
            assert conn.answer().status == 200
            slow.append(conn)
        conns = fast + slow
        assert [c.closed_within(0.2) for c in conns] == [False] * 16
        conns.append(connect(capped))
        assert fast[0].closed_within(3)
        assert [c.closed_within(0.1) for c in fast[1:] + slow] == [False] * 15
        for conn in fast[1:]:
            conn.sock.close()
        time.sleep(0.3)
        for _ in range(7):  # 9 open, then 16
            conns.append(connect(capped))
        time.sleep(0.3)
        conns.append(connect(capped))  # the 17th: the oldest idle is aiohttp's now
        assert slow[0].closed_within(3)
        assert not any(c.closed_within(0.1) for c in slow[1:])
    finally:
        for conn in conns:
            conn.sock.close()
        capped.close()


def test_shutdown_lets_a_stream_in_flight_finish(upstream: Upstream, tmp_path: Path) -> None:
    db = tmp_path / "shut.db"
    first = start_capgate(tmp_path, gateway_config(upstream), db=db)
    key = first.create_key("shut")
    conn = connect(first)
    conn.send(post("/v1/messages", claude("mock:words=150 mock:stream_delay_ms=10", True), key))
    headers = _stream_start(conn)
    assert headers["server"] == FAST
    first.proc.send_signal(signal.SIGTERM)
    answer = conn.answer()  # the whole stream, after the signal
    assert b"message_stop" in answer.body
    assert first.proc.wait(30) == 0
    first.close()
    again = start_capgate(tmp_path, gateway_config(upstream), db=db)
    try:
        entry = _entry(again, headers["x-capgate-request-id"])
        assert (entry["status"], entry["outcome"]) == (200, "ok"), entry
        assert entry["output_tokens"] > 100
    finally:
        again.close()


def test_shutdown_waits_for_a_handler_whose_client_left(upstream: Upstream, tmp_path: Path) -> None:
    """The client leaves while its answer is on its way, then the server is stopped: the
    handler still finishes and settles what it cost (not a lease that expired)."""
    db = tmp_path / "left.db"
    first = start_capgate(tmp_path, gateway_config(upstream), db=db)
    key = first.create_key("left", [{"metric": "cost_usd", "window": "day", "max": "5"}])
    conn = connect(first)
    conn.send(post("/v1/messages", claude("mock:delay_ms=2500 gone"), key))
    time.sleep(0.5)
    conn.sock.close()
    time.sleep(0.3)
    started = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0
    assert time.monotonic() - started > 1  # it waited for the handler
    first.close()
    again = start_capgate(tmp_path, gateway_config(upstream), db=db)
    try:
        (entry,) = again.ledger()
        assert (entry["status"], entry["outcome"]) == (200, "ok"), entry
        usage = {u["metric"]: u for u in again.key_usage("left")}["cost_usd"]
        assert float(usage["reserved"]) == 0 and 0 < float(usage["used"]) < 0.001
    finally:
        again.close()


def test_a_body_still_uploading_at_shutdown_is_answered(upstream: Upstream, tmp_path: Path) -> None:
    """Its handler started at the head: shutdown waits for it (as for any handler, up to
    the runner's shutdown timeout), so a body that arrives meanwhile is answered, with
    `Connection: close`. (aiohttp's own connections do not answer such a request.)"""
    first = start_capgate(tmp_path, gateway_config(upstream))
    try:
        key = first.create_key("upload")
        request = post("/v1/messages", claude("uploading"), key)
        conn = connect(first)
        conn.send(request[:-10])
        time.sleep(0.3)
        first.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.send(request[-10:])
        answer = conn.answer()
        assert answer.status == 200 and answer.fast
        assert answer.headers["connection"] == "close"
        assert "uploading" in answer.json()["content"][0]["text"]
        assert first.proc.wait(30) == 0
    finally:
        first.close()


def test_a_pipelined_request_after_a_streamed_answer(server: Capgate, key: str) -> None:
    conn = connect(server)
    conn.send(
        post("/v1/messages", claude("mock:words=300 first", True), key)
        + post("/v1/chat/completions", gpt("second"), key)
    )
    streamed, after = conn.answer(), conn.answer()
    assert streamed.fast and b"message_stop" in streamed.body
    assert after.status == 200 and after.fast
    assert "second" in after.json()["choices"][0]["message"]["content"]


def test_workers_serve_on_the_fast_path(upstream: Upstream, tmp_path: Path) -> None:
    workers = start_capgate(tmp_path, gateway_config(upstream), args=("--workers", "2"))
    try:
        key = workers.create_key("workers")
        for _ in range(4):
            conn = connect(workers)
            conn.send(post("/v1/messages", claude("w"), key))
            assert conn.answer().fast
            conn.sock.close()
    finally:
        workers.close()


class _Transport(asyncio.Transport):
    """What a fast connection writes, for feeding it by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_a_failing_handler_is_a_500_in_its_dialect_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: GatewayRequest) -> web.StreamResponse:
        raise RuntimeError("broken handler")

    async def run() -> _Transport:
        routes = FastRoutes(dict.fromkeys(GATEWAY_PATHS, broken), 1000)
        server = EdgeServer(
            None, max_connections=16, header_timeout_s=5, idle_timeout_s=5, fast=routes
        )
        connection = server()
        transport = _Transport()
        connection.connection_made(transport)
        connection.data_received(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        for _ in range(100):
            await asyncio.sleep(0.01)
            if transport.closed:
                break
        connection.connection_lost(None)
        return transport

    with caplog.at_level(logging.ERROR, "capgate.http"):
        transport = asyncio.run(run())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ") and b"\r\nConnection: close" in head
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}  # OpenAI's
    assert transport.closed
    (record,) = caplog.records
    assert "unhandled error answering /v1/chat/completions" in record.getMessage()
    assert record.exc_info is not None


def test_a_client_that_does_not_read_holds_its_next_request() -> None:
    """Pipelined requests are not answered into a full send buffer: the next one waits
    until the transport takes writes again (as aiohttp waits for a drain)."""
    served: list[str] = []

    async def answer(request: GatewayRequest) -> web.StreamResponse:
        served.append(request.path)
        return web.Response(body=b"{}", content_type="application/json")

    async def run() -> tuple[int, int, int]:
        routes = FastRoutes(dict.fromkeys(GATEWAY_PATHS, answer), 1000)
        server = EdgeServer(
            None, max_connections=16, header_timeout_s=5, idle_timeout_s=5, fast=routes
        )
        connection = server()
        transport = _Transport()
        connection.connection_made(transport)
        connection.pause_writing()  # the client reads nothing
        one = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        connection.data_received(one * 3)
        await asyncio.sleep(0.1)
        before = len(served)
        connection.resume_writing()
        await asyncio.sleep(0.1)
        connection.connection_lost(None)
        return before, len(served), transport.written.count(b"HTTP/1.1 200 OK\r\n")

    assert asyncio.run(run()) == (1, 3, 3)


def test_a_body_nobody_reads_yet_is_not_read_on() -> None:
    """The handler starts at the head: until it reads the body, at most ~64 KiB of it is
    taken from the client (reading pauses, as aiohttp's), then all of it."""
    started = asyncio.Event()
    go = asyncio.Event()
    got: list[int] = []

    async def slow(request: GatewayRequest) -> web.StreamResponse:
        started.set()
        await go.wait()  # checking a key, say
        got.append(len(await request.read()))
        return web.Response(body=b"{}", content_type="application/json")

    async def run() -> tuple[bool, bool, bytes]:
        routes = FastRoutes(dict.fromkeys(GATEWAY_PATHS, slow), 1 << 20)
        server = EdgeServer(
            None, max_connections=16, header_timeout_s=5, idle_timeout_s=5, fast=routes
        )
        connection = server()
        transport = _Transport()
        connection.connection_made(transport)
        connection.data_received(b"POST /v1/messages HTTP/1.1\r\nContent-Length: 300000\r\n\r\n")
        await started.wait()
        for _ in range(3):
            connection.data_received(b"x" * 50_000)
        paused = transport.paused
        go.set()
        await asyncio.sleep(0.01)
        resumed = not transport.paused
        for _ in range(3):
            connection.data_received(b"x" * 50_000)
        await asyncio.sleep(0.01)
        connection.connection_lost(None)
        return paused, resumed, transport.written

    paused, resumed, written = asyncio.run(run())
    assert paused and resumed
    assert got == [300_000] and written.startswith(b"HTTP/1.1 200 OK\r\n")
