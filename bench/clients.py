#!/usr/bin/env python3
"""Upstream clients compared: CPU per request of each HTTP client on capgate's hot path.

    .venv/bin/python bench/clients.py                 # 4,000 requests per client and point
    .venv/bin/python bench/clients.py --requests 2000 --rounds 3

One process (pinned to the proxy CPU, uvloop) posts the bench's OpenAI request body to
`bench/fast_upstream.py` (on the load CPU) over keep-alive connections and reads each
answer whole, one request at a time (c=1) and 64 at a time (c=64), with:

- `capgate`: capgate's own client, `capgate.providers.upstream.Pool` (httptools);
- `aiohttp`: `aiohttp.ClientSession.post` + `read()`, one session, pooled connector (what
  capgate used before);
- `httpx`: `httpx.AsyncClient.post`, pooled (the usual choice in Python proxies).

It prints CPU µs per request (this process's user + system time: steadier than wall time
on a shared machine) and requests/s. That is what docs/dependencies.md quotes for choosing
the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from load import body_for
from procs import HOST, pinning
from services import start_upstream

Post = Callable[[], Awaitable[None]]
PATH = "/v1/chat/completions"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def capgate_client(port: int, body: bytes) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from capgate.providers.upstream import Pool

    pool = Pool("bench", f"http://{HOST}:{port}", limit=1000, connect_s=5, read_s=30, total_s=60)
    head = pool.head(PATH, [("content-type", "application/json"), ("authorization", "Bearer x")])

    async def post() -> None:
        answer = await pool.post(head, body)
        await answer.read()

    return post, pool.close


async def aiohttp_client(port: int, body: bytes) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    url = f"http://{HOST}:{port}{PATH}"
    headers = {"content-type": "application/json", "authorization": "Bearer x"}

    async def post() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()

    return post, session.close


async def httpx_client(port: int, body: bytes) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000))
    url = f"http://{HOST}:{port}{PATH}"
    headers = {"content-type": "application/json", "authorization": "Bearer x"}

    async def post() -> None:
        response = await client.post(url, content=body, headers=headers)
        response.read()

    return post, client.aclose


CLIENTS = {"capgate": capgate_client, "aiohttp": aiohttp_client, "httpx": httpx_client}


async def measure(post: Post, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per request, requests/s) for `requests` posts, `concurrency` at a time."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await post()

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm-up, connections
    start, cpu = time.perf_counter(), cpu_s()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    done = requests // concurrency * concurrency
    return (cpu_s() - cpu) / done * 1e6, done / wall


async def compare(port: int, names: list[str], requests: int, rounds: int) -> None:
    body = body_for("openai", False)
    print(f"{'client':8s}  {'c':>3s}  {'CPU µs/request':>15s}  {'req/s':>8s}")
    for concurrency in (1, 64):
        for _ in range(rounds):
            for name in names:
                post, close = await CLIENTS[name](port, body)
                n = requests if name != "httpx" else max(concurrency, requests // 4)
                us, rate = await measure(post, n, concurrency)
                await close()
                print(f"{name:8s}  {concurrency:3d}  {us:15,.1f}  {rate:8,.0f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2, help="readings per client and point")
    parser.add_argument("--clients", default="capgate,aiohttp,httpx")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    pin = pinning(not args.no_pin)
    if pin.proxy_cpus is not None:  # this process is the proxy here
        os.sched_setaffinity(0, {int(c) for c in pin.proxy_cpus.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        up, port = start_upstream(pin, Path(tmp))
        try:
            import uvloop

            uvloop.run(compare(port, args.clients.split(","), args.requests, args.rounds))
        finally:
            up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
