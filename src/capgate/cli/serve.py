"""Running the server: event loop, listening socket, banner, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from capgate.bootstrap import build
from capgate.config import Config, ConfigError
from capgate.errors import StoreUnavailable


def run(config: Config, *, demo: bool) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # not on this platform: the stdlib loop works, a little slower
        pass
    try:
        asyncio.run(_serve(config, demo))
    except (ConfigError, ValueError) as exc:
        sys.exit(f"capgate: bad configuration: {exc}")
    except OSError as exc:  # the port is taken, the database cannot be opened, ...
        sys.exit(f"capgate: cannot start: {exc}")
    except StoreUnavailable as exc:  # the database cannot be written
        sys.exit(f"capgate: cannot start: {exc.message}")


async def _serve(config: Config, demo: bool) -> None:
    built = await build(config, demo=demo)
    runner = web.AppRunner(built.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    _banner(f"http://{host}:{port}", built.generated_admin_key, built.demo_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("capgate: shutting down", file=sys.stderr)
    await runner.cleanup()


def _banner(url: str, admin_key: str | None, demo_key: str | None) -> None:
    lines = [f"capgate listening on {url}"]
    if admin_key:
        lines += ["", "Admin key (shown once; keep it):", f"  export CAPGATE_ADMIN_KEY={admin_key}"]
    if demo_key:
        lines += [
            "",
            "Demo key (mock provider, $10.00/day, 60 requests/minute):",
            f"  export CAPGATE_KEY={demo_key}",
            "",
            "Try it:",
            f"  curl {url}/v1/messages -H \"x-api-key: $CAPGATE_KEY\" -H 'content-type: application/json' \\",
            '    -d \'{"model":"claude-sonnet-4-6","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}\'',
            f"  ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=$CAPGATE_KEY claude",
        ]
    print("\n".join(lines), flush=True)
