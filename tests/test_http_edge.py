"""The HTTP edge (issue #18, part 5): requests aiohttp cannot parse and router misses are
answered in JSON in the path's dialect, with one log line that quotes nothing of the
request; slow-header clients are closed and cannot crowd out `/health`. Before: aiohttp's
text/plain 400 quoting the request bytes, a traceback per bad request, and connections
that trickled header bytes were never closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from capgate.http.edge import EdgeRunner
from conftest import ADMIN_KEY, ROOT, Upstream, gateway_config

MARK = b"LEAKME"  # in every bad request: must appear in no answer and no log line


@dataclass
class Server:
    host: str
    port: int
    log: Path


def _few_files() -> None:
    """An open-file limit of 256 (soft and hard), so that a bounded number of slow
    connections reaches it: without the cap, they take every descriptor."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.fixture(scope="module")
def edge(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A capgate whose output goes to a file the tests read, with short edge timeouts
    and a small connection cap."""
    tmp = tmp_path_factory.mktemp("edge")
    config = gateway_config(
        upstream, server={"header_timeout_s": 1.5, "idle_timeout_s": 8, "max_connections": 64}
    )
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    log = tmp / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "capgate", "serve", "--config", str(tmp / "c.yaml"),
             "--port", "0", "--database-url", f"sqlite:///{tmp / 'c.db'}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "CAPGATE_ADMIN_KEY": ADMIN_KEY}, preexec_fn=_few_files,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(r"listening on http://([\d.]+):(\d+)", log.read_text())):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        yield Server(found.group(1), int(found.group(2)), log)
    finally:
        proc.terminate()
        proc.wait(10)


def _exchange(server: Server, data: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
                head, sep, body = got.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


MALFORMED = {
    "broken-chunking": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
    b"\r\n\r\nzz" + MARK + b"\r\nhello\r\n0\r\n\r\n",
    "two-content-lengths": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: "
    + MARK
    + b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "huge-header-line": b"GET /admin/keys HTTP/1.1\r\nHost: x\r\nX-Big: "
    + MARK * 4000
    + b"\r\n\r\n",
    "nul-in-header": b"GET /admin/keys HTTP/1.1\r\nHost: x\r\nX-Nul: " + MARK + b"\x00b\r\n\r\n",
}
DIALECTS = {
    "broken-chunking": "anthropic",
    "two-content-lengths": "openai",
    "huge-header-line": "admin",
    "nul-in-header": "admin",
}


def _shape(dialect: str, body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    if dialect == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    elif dialect == "openai":
        assert set(data["error"]) == {"message", "type", "param", "code"}
    else:
        assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}
    return data


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_request_aiohttp_cannot_parse_is_a_json_400_logged_once(edge: Server, case: str) -> None:
    before = edge.log.read_text().splitlines()
    status, headers, body = _exchange(edge, MALFORMED[case])
    assert status == 400 and headers["content-type"].startswith("application/json"), body
    _shape(DIALECTS[case], body)
    assert MARK not in body
    time.sleep(0.3)  # the log line is written by a thread
    new = edge.log.read_text().splitlines()[len(before) :]
    assert len(new) == 1 and "malformed HTTP request" in new[0], new
    assert MARK.decode() not in new[0] and "Traceback" not in "\n".join(new)


@pytest.mark.parametrize(
    ("request_line", "status", "dialect"),
    [
        (b"GET /nowhere", 404, "admin"),
        (b"GET /admin/nowhere", 404, "admin"),
        (b"GET /v1/messages", 405, "anthropic"),
        (b"DELETE /v1/chat/completions", 405, "openai"),
        (b"GET /v1/nowhere", 404, "openai"),
    ],
)
def test_router_misses_are_json_in_the_paths_dialect(
    edge: Server, request_line: bytes, status: int, dialect: str
) -> None:
    got, headers, body = _exchange(edge, request_line + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == status and headers["content-type"].startswith("application/json"), body
    _shape(dialect, body)
    if status == 405:
        assert headers["allow"]


def _health(server: Server) -> float:
    started = time.monotonic()
    status, _, _ = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
    assert status == 200
    return time.monotonic() - started


def test_slow_header_clients_are_closed_and_cannot_crowd_out_health(edge: Server) -> None:
    """300 connections (over the server's open-file limit of 256, and the cap of 64)
    each sending a header byte every 0.3 s: /health still answers at once, and each slow
    one is closed, by the cap or the header timeout (1.5 s), though the fast path hands
    each to aiohttp (a GET) before its head is whole."""
    slow: list[socket.socket] = []
    closed: dict[int, float] = {}
    stop = threading.Event()
    t0 = time.monotonic()
    try:
        for _ in range(300):
            sock = socket.create_connection((edge.host, edge.port), timeout=2)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never ends
            sock.setblocking(False)
            slow.append(sock)

        def trickle() -> None:
            while not stop.is_set() and len(closed) < len(slow):
                for n, sock in enumerate(slow):
                    if n in closed:
                        continue
                    try:
                        if sock.recv(4096) == b"":
                            closed[n] = time.monotonic() - t0
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[n] = time.monotonic() - t0
                        continue
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                time.sleep(0.3)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        for _ in range(5):
            assert _health(edge) < 2.0
            time.sleep(0.2)
        thread.join(8)
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open"
        # The header timeout (1.5 s), not the client nor the idle timeout (8 s), ended them.
        assert max(closed.values()) < 6
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    assert _health(edge) < 2.0


def test_an_idle_keep_alive_connection_is_closed(edge: Server) -> None:
    with socket.create_connection((edge.host, edge.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in sock.recv(65536).split(b"\r\n")[0]
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert 6 < time.monotonic() - started < 11  # idle_timeout_s: 8


@pytest.mark.parametrize(
    ("path", "dialect"),
    [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai"), ("/admin/keys", "admin")],
)
def test_a_body_that_is_not_its_content_encoding_is_a_400(
    edge: Server, path: str, dialect: str
) -> None:
    """Found by tests/test_fuzz.py: a 500 before."""
    made = httpx.post(
        f"http://{edge.host}:{edge.port}/admin/keys", json={"name": f"gz-{dialect}"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30,
    )  # fmt: skip
    key = made.json()["key"]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_KEY if path.startswith('/admin') else key}\r\n"
        "Content-Encoding: gzip\r\nContent-Length: 2\r\n\r\n"
    )
    status, _, body = _exchange(edge, head.encode() + b"[]")
    assert status == 400, body
    assert "Content-Encoding" in _shape(dialect, body)["error"]["message"]


def test_a_client_gone_before_its_body_is_read_is_no_error(edge: Server) -> None:
    """A client that sends its request head and part of its body, then goes away (a load
    generator stopping, a tool killed mid-upload): no error line, no traceback — it used
    to log "unhandled error answering" with a ConnectionResetError's traceback."""
    base = f"http://{edge.host}:{edge.port}"
    made = httpx.post(
        f"{base}/admin/keys",
        json={"name": "gone"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    before = edge.log.read_text().splitlines()
    for path in ("/v1/chat/completions", "/v1/messages"):
        with socket.create_connection((edge.host, edge.port), timeout=5) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                '{"model": "gpt-4o-mini", "messages": ['.encode()
            )
            time.sleep(0.3)  # the server is reading the body now
    time.sleep(0.5)
    new = edge.log.read_text().splitlines()[len(before) :]
    assert not [line for line in new if "ERROR" in line or "Traceback" in line], new
    assert httpx.get(f"{base}/health").status_code == 200


class _Transport(asyncio.Transport):
    """What a connection writes, for feeding `_Connection` by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


@pytest.mark.parametrize(
    ("path", "dialect"), [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")]
)
def test_a_body_read_before_the_error_is_answered_keeps_the_errors_dialect(
    path: str, dialect: str
) -> None:
    """Found by tests/test_fuzz.py under load: aiohttp refuses a `Content-Encoding: br`
    head at once, but answers from its handler task, a loop turn later. The body, read
    in between and starting with a capital letter (`Br Y Z`), was taken for a request
    line, so the error came in the admin's dialect."""

    async def run() -> bytes:
        runner = EdgeRunner(
            web.Application(), max_connections=8, header_timeout_s=5, idle_timeout_s=5
        )
        await runner.setup()
        try:
            server = runner.server
            assert server is not None
            connection = server()
            transport = _Transport()
            connection.connection_made(transport)
            body = b"Br Y Z" + b"x" * 40
            connection.data_received(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: br\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            connection.data_received(body)  # before the handler task has run
            for _ in range(50):
                await asyncio.sleep(0.01)
                if transport.written.rstrip().endswith(b"}"):
                    break
            connection.connection_lost(None)
            return transport.written
        finally:
            await runner.cleanup()

    written = asyncio.run(run())
    assert written.split(b" ", 2)[1] == b"400", written
    _shape(dialect, written.partition(b"\r\n\r\n")[2])


def test_a_long_request_line_costs_the_server_one_pass(edge: Server) -> None:
    """Found in review: the request line's pattern could backtrack once per byte of a long
    path that never ends in " HTTP/1.x" (256 KiB: ~3 s of the event loop per chunk, before
    any login). Eight such connections must not hold up the health check."""
    junk = b"GET /" + b"a" * 256 * 1024
    socks = []
    try:
        for _ in range(8):
            sock = socket.create_connection((edge.host, edge.port), timeout=5)
            with contextlib.suppress(OSError):  # the server may refuse the rest at once
                sock.sendall(junk)
            socks.append(sock)
        health = httpx.get(f"http://{edge.host}:{edge.port}/health", timeout=10)
        assert health.status_code == 200
    finally:
        for sock in socks:
            sock.close()
