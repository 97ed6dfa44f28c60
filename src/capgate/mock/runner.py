"""Ways to run the mock server: inside an event loop, in a background thread, or standalone.

The thread form lets synchronous code (tests using the blocking SDK clients, benchmarks)
use a real HTTP upstream without an async test plugin.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Self, TypeVar

from aiohttp import web

from capgate.mock.server import DEFAULT_HISTORY, REQUESTS, RecordedRequest, create_mock_app

# Idle keep-alive connections must not hold up shutdown for long.
_SHUTDOWN_TIMEOUT = 2.0
_START_TIMEOUT = 10.0

_T = TypeVar("_T")


async def start_mock_server(
    host: str = "127.0.0.1", port: int = 0, *, app: web.Application | None = None
) -> tuple[web.AppRunner, int]:
    """Serve the mock (or ``app``) on ``host:port``; port 0 picks a free one.

    Returns the runner, to be cleaned up by the caller, and the port actually bound.
    """
    runner = web.AppRunner(
        app if app is not None else create_mock_app(),
        access_log=None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, bound_port


async def serve_forever(host: str, port: int) -> None:
    """Run the mock until SIGINT or SIGTERM, announcing the bound address on stdout."""
    runner, bound_port = await start_mock_server(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Launchers (tests, benchmarks, scripts) read this line to learn the port.
        print(f"listening on {host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


class MockUpstream:
    """The mock served from a background thread with its own event loop.

    Use as a context manager::

        with MockUpstream() as upstream:
            client = anthropic.Anthropic(base_url=upstream.url, api_key="k")
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, history: int = DEFAULT_HISTORY
    ) -> None:
        self.host = host
        self.app = create_mock_app(history=history)
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="capgate-mock", daemon=True)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the mock upstream is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL for SDK clients (they append /v1/...)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise TimeoutError("the mock upstream did not start")
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join()

    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        recorded = self.app[REQUESTS]
        return self._in_loop(partial(list, recorded))

    def last_request(self) -> RecordedRequest:
        recorded = self.requests()
        if not recorded:
            raise LookupError("the mock upstream has received no request")
        return recorded[-1]

    def clear(self) -> None:
        self._in_loop(self.app[REQUESTS].clear)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _in_loop(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` on the server's loop: the deque must not be read mid-append."""
        if self._loop is None:
            raise RuntimeError("the mock upstream is not running")

        async def call() -> _T:
            return action()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(_START_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - start() re-raises it in the caller
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self._port = await start_mock_server(self.host, self._requested_port, app=self.app)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
