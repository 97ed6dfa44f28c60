#!/usr/bin/env python3
"""The Python floor: the least a Python proxy does, with nothing of capgate's work.

    .venv/bin/python bench/floor.py --upstream http://127.0.0.1:UP --port 0

The "minimal pass-through" of the performance issue's reference figures, built from the
same parts capgate uses: an aiohttp server on uvloop, one pooled keep-alive aiohttp
client, orjson. Per request it parses the JSON body, forwards it as it came, and reads
`usage` from the answer (or from the stream's events as they pass), then drops it. No
keys, budgets, ledger, routing or headers of its own. `bench/run` measures it beside
capgate, so "capgate ÷ floor" says what the accounting costs on this machine today.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import aiohttp
import orjson
from aiohttp import web

_USAGE = re.compile(rb'"usage":\{[^{}]*\}')


class Floor:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.usage_seen = 0

    async def start(self, _app: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=60),
            skip_auto_headers=("User-Agent",),
        )

    async def stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        assert self.session is not None
        headers = {"content-type": "application/json"}
        if "anthropic-version" in request.headers:
            headers["anthropic-version"] = request.headers["anthropic-version"]
        async with self.session.post(
            self.upstream + request.path, data=raw, headers=headers
        ) as answer:
            if not body.get("stream"):
                data = await answer.read()
                if orjson.loads(data).get("usage"):
                    self.usage_seen += 1
                return web.Response(
                    status=answer.status, body=data, content_type="application/json"
                )
            response = web.StreamResponse(
                status=answer.status, headers={"content-type": "text/event-stream"}
            )
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                if b'"usage"' in chunk and _USAGE.search(chunk):
                    self.usage_seen += 1
                await response.write(chunk)
            await response.write_eof()
            return response


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    floor = Floor(args.upstream)
    app = web.Application()
    app.on_startup.append(floor.start)
    app.on_cleanup.append(floor.stop)
    app.router.add_post("/{path:.*}", floor.proxy)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"floor listening on {host}:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
