"""Running the server: event loop, listening socket, banner, graceful shutdown.

The port is bound before anything is built: a start that cannot listen (the port is
taken) changes nothing in the database, so a running demo's keys stay as they are."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys

from aiohttp import web

from capgate.bootstrap import Built, build
from capgate.cli.client import DEFAULT_URL
from capgate.config import Config, ConfigError
from capgate.errors import StoreUnavailable
from capgate.logs import configure

log = logging.getLogger("capgate.serve")


def run(config: Config, *, demo: bool) -> None:
    logs = configure(config.server.log_level, config.server.log_format)
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
    finally:
        logs.stop()  # writes the lines still queued


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, or OSError (port taken, address not ours)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from None


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or newer), or ConfigError naming the files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"server.tls_cert / tls_key: cannot load {cert} / {key}: {reason}"
        ) from None
    return context


async def _hsts(request: web.Request, response: web.StreamResponse) -> None:
    # Browsers that reached capgate over HTTPS stay on HTTPS (a year; not subdomains).
    response.headers["Strict-Transport-Security"] = "max-age=31536000"


async def _serve(config: Config, demo: bool) -> None:
    cert, key = config.server.tls_cert, config.server.tls_key
    # Before the port and the database: a bad certificate changes nothing.
    context = tls_context(cert, key) if cert and key else None
    sock = listen(config.server.host, config.server.port)
    try:
        built = await build(config, demo=demo)
    except BaseException:
        sock.close()
        raise
    if context is not None:
        built.app.on_response_prepare.append(_hsts)
    runner = web.AppRunner(built.app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    _banner(f"{'https' if context else 'http'}://{host}:{port}", built)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def _banner(url: str, built: Built) -> None:
    lines = [f"capgate listening on {url}"]
    if url != DEFAULT_URL:  # the CLI's commands look for the server at DEFAULT_URL
        lines += ["", "For the capgate CLI (keys, usage, status):", f"  export CAPGATE_URL={url}"]
    for note in built.notes:
        lines += ["", f"WARNING: {note}"]
    admin_key, demo_key = built.generated_admin_key, built.demo_key
    if admin_key and built.secrets_file is not None:
        lines += [
            "",
            f"Admin key (kept in {built.secrets_file}, owner-only; the same at every --demo start):",
            f"  export CAPGATE_ADMIN_KEY={admin_key}",
        ]
    elif admin_key:
        lines += ["", "Admin key (shown once; keep it):", f"  export CAPGATE_ADMIN_KEY={admin_key}"]
    if demo_key:
        lines += [
            "",
            "Demo key (mock provider, $10.00/day, 60 requests/minute):",
            f"  export CAPGATE_KEY={demo_key}",
            "",
            "Try it with Claude Code:",
            f"  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN=$CAPGATE_KEY claude",
            "or curl:",
            f"  curl {url}/v1/messages -H \"x-api-key: $CAPGATE_KEY\" -H 'content-type: application/json' \\",
            '    -d \'{"model":"claude-sonnet-4-6","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}\'',
        ]
    print("\n".join(lines), flush=True)
