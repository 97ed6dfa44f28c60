"""Running the server: event loop, listening socket, banner, graceful shutdown; with
`--workers N`, the parent's side (the decisions made once) and the worker's.

The port is bound before anything is built: a start that cannot listen (the port is
taken) changes nothing in the database, so a running demo's keys stay as they are."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiohttp import web

from capgate.bootstrap import Keys, build, decide_keys, open_store
from capgate.cli.client import DEFAULT_URL
from capgate.cli.workers import READY, Supervisor, WorkerFailed
from capgate.config import Config, ConfigError, is_postgres
from capgate.errors import StoreUnavailable
from capgate.http.auth import admin_key_problem
from capgate.http.edge import EdgeRunner, connection_cap
from capgate.http.fastserve import FastRoutes
from capgate.logs import configure
from capgate.metrics import Metrics
from capgate.worker_metrics import PUBLISH_S, WorkerMetrics, remove

log = logging.getLogger("capgate.serve")

# Busy workers one SQLite file keeps up with: its write lock is held ~25 us per request
# (reservation + settlement) with two processes on the test VM, ~35,000 requests a second,
# about 5 workers' worth (docs/performance.md, "Issue #19 as it stands"). Warned past 4:
# the fifth already runs into the lock on a machine whose workers are a little faster.
SQLITE_WORKERS = 4


def run(config: Config, *, demo: bool) -> None:
    weak = config.server.admin_key and admin_key_problem(config.server.admin_key)
    if weak:  # before the port, the database or a log line
        sys.exit(f"capgate: bad configuration: server.admin_key (CAPGATE_ADMIN_KEY): {weak}")
    workers = config.server.workers
    logs = configure(
        config.server.log_level, config.server.log_format, pid=os.getpid() if workers > 1 else None
    )
    try:
        if workers > 1:
            sys.exit(asyncio.run(_supervise(config, demo)))
        _use_uvloop()
        asyncio.run(_serve(config, demo))
    except (ConfigError, ValueError) as exc:
        sys.exit(f"capgate: bad configuration: {exc}")
    except OSError as exc:  # the port is taken, the database cannot be opened, ...
        sys.exit(f"capgate: cannot start: {exc}")
    except StoreUnavailable as exc:  # the database cannot be written
        sys.exit(f"capgate: cannot start: {exc.message}")
    except WorkerFailed as exc:
        sys.exit(f"capgate: {exc}")
    finally:
        logs.stop()  # writes the lines still queued


def _use_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # not on this platform: the stdlib loop works, a little slower
        pass


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


# Browsers that reached capgate over HTTPS stay on HTTPS (a year; not subdomains).
HSTS = ("Strict-Transport-Security", "max-age=31536000")


async def _hsts(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[HSTS[0]] = HSTS[1]


async def _serve(config: Config, demo: bool) -> None:
    cert, key = config.server.tls_cert, config.server.tls_key
    # Before the port and the database: a bad certificate changes nothing.
    context = tls_context(cert, key) if cert and key else None
    sock = listen(config.server.host, config.server.port)
    await _answer(config, sock, context, demo=demo, keys=None)


async def _answer(
    config: Config,
    sock: socket.socket,
    context: ssl.SSLContext | None,
    *,
    demo: bool,
    keys: Keys | None,
    stop: asyncio.Event | None = None,
    metrics_dir: Path | None = None,
) -> None:
    """Build everything and answer on `sock` until SIGTERM / SIGINT (or `stop`). A single
    process prints the banner; a worker (`keys` decided by its parent) says `ready`."""
    try:
        built = await build(config, demo=demo, keys=keys)
    except BaseException:
        sock.close()
        raise
    if context is not None:
        built.app.on_response_prepare.append(_hsts)
    if metrics_dir is not None and built.metrics is not None:
        _share_metrics(built.app, built.metrics, metrics_dir)
    server = config.server
    fast = None
    if server.fast_path:  # the gateway routes on capgate's own server, the rest on aiohttp
        max_body = int(server.max_request_mb * 1024 * 1024)
        fast = FastRoutes(built.gateway, max_body, (HSTS,) if context is not None else ())
    runner = EdgeRunner(
        built.app, access_log=None, max_connections=connection_cap(server.max_connections),
        header_timeout_s=server.header_timeout_s, idle_timeout_s=server.idle_timeout_s,
        fast=fast,
    )  # fmt: skip
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    settle_collector()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if keys is None:
        _banner(_url(sock, context is not None), built.keys)
    else:
        sys.stdout.write(READY.decode() + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # nothing reads this worker's stdout any more: what it prints is a log
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


# Python's cycle collector, tuned for a server (docs/performance.md, "The garbage
# collector"). By default it runs its young generation every 700 net new container
# objects: at c=64 the requests in flight keep more than that alive at once, so it ran
# every few dozen requests (~80 times a second), promoting them each time, and the
# promotions set off full collections over every object of start-up (~90,000: modules,
# config, routes): ~5 % of one worker's CPU. After start-up those objects are moved out
# of its sight (`gc.freeze`, after a last full collection so no garbage is kept), and
# the young threshold is raised above what the requests in flight hold: it then runs
# for garbage, not for traffic. Objects die by reference counting as before; cyclic
# garbage waits for at most GC_YOUNG net new objects.
GC_YOUNG = 10_000


def settle_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    log.debug("collector: %d start-up objects frozen", gc.get_freeze_count())


def _url(sock: socket.socket, https: bool) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{port}"


# -- serve --workers N ------------------------------------------------------------------


def _share_metrics(app: web.Application, metrics: Metrics, directory: Path) -> None:
    """/metrics on any worker answers every worker's request counters (worker_metrics.py)."""
    shared = WorkerMetrics(metrics, directory)
    metrics.registry.unregister(metrics)
    metrics.registry.register(shared)

    async def publishing(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                shared.publish()
                await asyncio.sleep(PUBLISH_S)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        shared.publish()  # what it counted last, for the scrapes of the others

    app.cleanup_ctx.append(publishing)


async def _supervise(config: Config, demo: bool) -> int:
    """The parent: the port first (a taken one fails before the database is opened), then
    the decisions made once (migrations, the admin key, the demo key and its secrets
    file), then the workers (cli/workers.py). The exit status."""
    cert, key = config.server.tls_cert, config.server.tls_key
    if cert and key:
        tls_context(cert, key)  # checked here; each worker loads its own
    if config.server.database_url in ("sqlite:///", "sqlite:///:memory:"):
        raise ConfigError("workers: the workers must share a database file, not one in memory")
    if config.server.workers > SQLITE_WORKERS and not is_postgres(config.server.database_url):
        log.warning(
            "%d workers share one SQLite file: every request takes its one write lock twice, "
            "so past %d busy workers more add no requests a second (measure yours: "
            "bench/sqlite_store.py); PostgreSQL scales with cores (docs/operations.md, Workers)",
            config.server.workers,
            SQLITE_WORKERS,
        )
    sock = listen(config.server.host, config.server.port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="capgate-metrics-"))  # owner-only
    try:
        return await _parent(config, demo, sock, metrics_dir)
    finally:
        sock.close()
        remove(metrics_dir)


async def _parent(config: Config, demo: bool, sock: socket.socket, metrics_dir: Path) -> int:
    store = await open_store(config)  # migrated here, once
    try:
        keys = await decide_keys(store, config, demo=demo)
    finally:
        await store.close()
    order = {
        "config": config.model_dump(mode="json"),
        "demo": demo,
        "admin_digest": keys.admin_digest.hex(),
        "fd": sock.fileno(),
        "metrics_dir": str(metrics_dir),
    }
    supervisor = Supervisor(
        config.server.workers, [sys.executable, "-m", "capgate.cli.serve"],
        orjson.dumps(order), (sock.fileno(),),
    )  # fmt: skip
    await supervisor.start()
    _banner(_url(sock, config.server.tls_cert is not None), keys, len(supervisor.pids))
    return await supervisor.run()


def work() -> None:
    """A worker of `serve --workers`: its orders on stdin, the listening socket inherited."""
    order = orjson.loads(sys.stdin.buffer.readline())
    config = Config.model_validate(order["config"])
    logs = configure(config.server.log_level, config.server.log_format, pid=os.getpid())
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # clients that hang up mid-write
    _use_uvloop()
    keys = Keys(bytes.fromhex(order["admin_digest"]))
    sock = socket.socket(fileno=order["fd"])
    try:
        asyncio.run(_work(config, sock, keys, bool(order["demo"]), Path(order["metrics_dir"])))
    except (ConfigError, ValueError) as exc:
        sys.exit(f"capgate: worker {os.getpid()}: bad configuration: {exc}")
    except OSError as exc:
        sys.exit(f"capgate: worker {os.getpid()} cannot start: {exc}")
    except StoreUnavailable as exc:
        sys.exit(f"capgate: worker {os.getpid()} cannot start: {exc.message}")
    finally:
        logs.stop()


async def _work(
    config: Config, sock: socket.socket, keys: Keys, demo: bool, metrics_dir: Path
) -> None:
    cert, key = config.server.tls_cert, config.server.tls_key
    context = tls_context(cert, key) if cert and key else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:  # the parent holds the other end of stdin until it ends
        if not os.read(0, 512):
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, parent_gone)
    await _answer(config, sock, context, demo=demo, keys=keys, stop=stop, metrics_dir=metrics_dir)


def _banner(url: str, keys: Keys, workers: int = 1) -> None:
    lines = [f"capgate listening on {url}" + (f" ({workers} workers)" if workers > 1 else "")]
    if url != DEFAULT_URL:  # the CLI's commands look for the server at DEFAULT_URL
        lines += ["", "For the capgate CLI (keys, usage, status):", f"  export CAPGATE_URL={url}"]
    for note in keys.notes:
        lines += ["", f"WARNING: {note}"]
    admin_key, demo_key = keys.generated_admin_key, keys.demo_key
    if admin_key and keys.secrets_file is not None:
        lines += [
            "",
            f"Admin key (kept in {keys.secrets_file}, owner-only; the same at every --demo start):",
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


if __name__ == "__main__":  # a worker, started by `serve --workers` (cli/workers.py)
    work()
