"""A minimal OTLP/HTTP trace receiver for measuring tracing's cost (docs/performance.md,
"What traces cost"): accepts `POST /v1/traces`, counts the bytes and the exports,
answers 200 with an empty response, and decodes nothing (the collector's own work is not
capgate's cost).

    .venv/bin/python bench/otlp_sink.py --port 4318
    CAPGATE_OTEL_ENDPOINT=http://127.0.0.1:4318 bench/run --quick ...
"""

from __future__ import annotations

import argparse

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    seen = {"exports": 0, "bytes": 0}

    async def export(request: web.Request) -> web.Response:
        seen["exports"] += 1
        seen["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
