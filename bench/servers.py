#!/usr/bin/env python3
"""HTTP servers compared: what the server costs a Python proxy per request.

    .venv/bin/python bench/servers.py                       # every server, c=64 and c=1
    .venv/bin/python bench/servers.py --rounds 3 --seconds 5
    .venv/bin/python bench/servers.py --client aiohttp      # the floor's upstream client

Each variant is the floor's forwarding (`bench/floor.py`: parse the JSON body with orjson,
forward the bytes as they came, read the answer and its `usage`) behind another server,
all on uvloop, pinned like `bench/run` (the proxy alone on CPU 0; the fast upstream and
wrk on CPU 1):

- `app`: aiohttp's `web.Application` with a router and one middleware (capgate today);
- `lowlevel`: aiohttp's `web.Server` (its `RequestHandler` and `BaseRequest`, no
  Application, router or middleware), one handler for every path;
- `raw`: an `asyncio.Protocol` HTTP/1.1 server on httptools' parser (already a capgate
  dependency, for its upstream client): keep-alive, Content-Length and chunked bodies,
  answers written in one `write` each. Pipelined requests are answered in order.
- `fast`: capgate's own fast path (`http/fastserve.py`) in front of the `app` variant,
  as `capgate serve` runs it (the edge's timers and cap included).

The upstream client is capgate's (`providers/upstream.py`) unless `--client aiohttp`
(the floor's). Non-streamed OpenAI answers only. The driver prints, per variant and
round, req/s, CPU µs per request of the server process (from /proc: steadier than req/s
on a shared machine) and wrk's p50; the variants are measured in turn in every round.
`servers.py serve --server NAME` runs one variant by hand (prints its port).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

Forward = Callable[[str, bytes, str | None], Awaitable[tuple[int, bytes]]]
SERVERS = ("app", "lowlevel", "raw", "fast")
_USAGE = re.compile(rb'"usage":\{[^{}]*\}')


# -- the forwarding (the floor's), with either client -----------------------------------


async def capgate_forward(upstream: str) -> Forward:
    from capgate.providers.upstream import Pool

    pool = Pool("bench", upstream, limit=1000, connect_s=5, read_s=30, total_s=60)
    heads: dict[tuple[str, str | None], bytes] = {}

    async def forward(path: str, raw: bytes, version: str | None) -> tuple[int, bytes]:
        head = heads.get((path, version))
        if head is None:
            headers = [("content-type", "application/json")]
            if version is not None:
                headers.append(("anthropic-version", version))
            head = heads[(path, version)] = pool.head(path, headers)
        answer = await pool.post(head, raw)
        return answer.status, await answer.read()

    return forward


async def aiohttp_forward(upstream: str) -> Forward:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=60),
        skip_auto_headers=("User-Agent",),
    )

    async def forward(path: str, raw: bytes, version: str | None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        if version is not None:
            headers["anthropic-version"] = version
        async with session.post(upstream + path, data=raw, headers=headers) as answer:
            return answer.status, await answer.read()

    return forward


class Floor:
    """Per request: parse, forward, read the usage (as bench/floor.py)."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.usage_seen = 0

    async def handle(self, path: str, raw: bytes, version: str | None) -> tuple[int, bytes]:
        body = orjson.loads(raw)
        if body.get("stream"):
            raise ValueError("streams are not part of this comparison")
        status, data = await self.forward(path, raw, version)
        if orjson.loads(data).get("usage"):
            self.usage_seen += 1
        return status, data


# -- the servers ------------------------------------------------------------------------


async def serve_aiohttp(floor: Floor, host: str, port: int, lowlevel: bool, fast: bool) -> int:
    from aiohttp import web

    from capgate.http.edge import EdgeRunner
    from capgate.http.fastserve import FastRoutes

    async def proxy(request: Any) -> web.StreamResponse:
        raw = await request.read()
        status, data = await floor.handle(
            request.path, raw, request.headers.get("anthropic-version")
        )
        return web.Response(status=status, body=data, content_type="application/json")

    if lowlevel:
        server = web.Server(proxy, access_log=None)
        runner: web.BaseRunner[Any] = web.ServerRunner(server)
    else:

        @web.middleware
        async def passthrough(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            return await handler(request)  # capgate has one middleware (json_errors)

        app = web.Application(middlewares=[passthrough])
        app.router.add_post("/v1/chat/completions", proxy)
        app.router.add_post("/v1/messages", proxy)
        if fast:
            paths = ("/v1/chat/completions", "/v1/messages")
            runner = EdgeRunner(
                app, access_log=None, max_connections=4096, header_timeout_s=10,
                idle_timeout_s=75, fast=FastRoutes(dict.fromkeys(paths, proxy), 32 << 20),
            )  # fmt: skip
        else:
            runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return int(runner.addresses[0][1])


class RawHTTP(asyncio.Protocol):
    """HTTP/1.1 on httptools: one request at a time per connection, in order."""

    def __init__(self, floor: Floor) -> None:
        import httptools

        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: list[tuple[str, bytes, str | None, bool]] = []
        self.busy = False
        self._url = b""
        self._version: str | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(400, b'{"error":"bad request"}', False)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._version, self._body = b"", None, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"anthropic-version":
            self._version = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        self.queue.append(
            (path, b"".join(self._body), self._version, self.parser.should_keep_alive())
        )
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.queue:
            path, raw, version, keep = self.queue.pop(0)
            try:
                status, data = await self.floor.handle(path, raw, version)
            except Exception:  # noqa: BLE001 - a bench server: a 502 and go on
                status, data = 502, b'{"error":"upstream"}'
            self._answer(status, data, keep)
        self.busy = False

    def _answer(self, status: int, data: bytes, keep: bool) -> None:
        if self.transport is None:
            return
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n"
        )
        self.transport.write(head.encode() + data)
        if not keep:
            self.transport.close()


async def serve_raw(floor: Floor, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTP(floor), host, port, backlog=1024)
    return int(server.sockets[0].getsockname()[1])


async def serve(name: str, client: str, upstream: str, host: str, port: int) -> None:
    make = capgate_forward if client == "capgate" else aiohttp_forward
    floor = Floor(await make(upstream.rstrip("/")))
    if name == "raw":
        bound = await serve_raw(floor, host, port)
    else:
        bound = await serve_aiohttp(floor, host, port, name == "lowlevel", name == "fast")
    print(f"server {name} listening on {host}:{bound}", flush=True)
    await asyncio.Event().wait()


# -- the driver ---------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> int:
    from cpuprofile import cpu_split
    from load import body_for, run_wrk
    from procs import HOST, Proc, pinning, tree_pids
    from services import VENV_PY, start_upstream

    pin = pinning(not args.no_pin)
    tmp = Path(tempfile.mkdtemp(prefix="capgate-servers-"))
    up, up_port = start_upstream(pin, tmp)
    body_file = tmp / "body.json"
    body_file.write_bytes(body_for("openai", False))
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        for rnd in range(args.rounds):
            order = list(args.servers) if rnd % 2 == 0 else list(reversed(args.servers))
            for name in order:
                cmd = [str(VENV_PY), __file__, "serve", "--server", name, "--client", args.client]
                cmd += ["--upstream", f"http://{HOST}:{up_port}"]
                proc = Proc(
                    name, pin.wrap("proxy", cmd), tmp / f"{name}.log", r"listening on [\d.]+:(\d+)"
                )
                try:
                    port = int(proc.wait_ready(30).group(1))
                    url = f"http://{HOST}:{port}/v1/chat/completions"
                    pids = tree_pids(proc.pid)
                    for conc in args.concurrency:
                        run_wrk(pin, url, body_file, None, conc, 1)  # warm-up
                        user0, sys0 = cpu_split(pids)
                        out = run_wrk(pin, url, body_file, None, conc, args.seconds)
                        user1, sys1 = cpu_split(pids)
                        done = max(out["requests"], 1)
                        cpu_us = (user1 - user0 + sys1 - sys0) * 1e6 / done
                        row = (done / args.seconds, cpu_us, out["latency_us"]["p50"] / 1000)
                        results.setdefault((name, conc), []).append(row)
                        print(
                            f"round {rnd + 1} {name:8s} c={conc:<3d} {row[0]:8,.0f} req/s  "
                            f"{cpu_us:6,.0f} µs CPU/request  p50 {row[2]:.2f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    proc.stop()
    finally:
        up.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nclient: {args.client}; medians over {args.rounds} rounds")
    print(f"{'server':8s}  {'c':>3s}  {'req/s':>8s}  {'CPU µs/req':>10s}  {'p50 ms':>6s}")
    for conc in args.concurrency:
        for name in args.servers:
            rows = results.get((name, conc), [])
            if rows:
                rate, cpu, p50 = (statistics.median(col) for col in zip(*rows, strict=True))
                print(f"{name:8s}  {conc:3d}  {rate:8,.0f}  {cpu:10,.0f}  {p50:6.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", nargs="?", choices=("compare", "serve"), default="compare")
    p.add_argument("--server", choices=SERVERS, default="raw", help="serve: which one")
    p.add_argument("--servers", default=",".join(SERVERS), help="compare: which ones")
    p.add_argument("--client", choices=("capgate", "aiohttp"), default="capgate")
    p.add_argument("--upstream", help="serve: the upstream's base URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--concurrency", default="64,1")
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    if args.mode == "serve":
        if not args.upstream:
            p.error("serve needs --upstream")
        import uvloop

        uvloop.run(serve(args.server, args.client, args.upstream, args.host, args.port))
        return 0
    args.servers = [s for s in args.servers.split(",") if s]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
