"""The rest of hook mode's doors: Claude Code's OpenTelemetry export (`POST /v1/logs`,
`/v1/metrics`, with the machine's token), the files a machine installs (`GET
/hook/install`, `/hook/client/<file>`: no secret in them, so unauthenticated), and the
lease expiry every server process runs (settling by id is idempotent, so several may)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import defaultdict
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from capgate.errors import NotFound, UnsupportedMediaType
from capgate.hook.otlp import api_requests
from capgate.hook.report import Call, Report
from capgate.http.admin_io import json_response
from capgate.http.hook import PROMPT_DONE, HookAPI, guarded, read_json

log = logging.getLogger(__name__)

_CLIENT_FILE = re.compile(r"^[a-z][a-z0-9_]*\.py$")
INSTALLER = "install.py"


class HookExtras:
    def __init__(self, hook: HookAPI, client_dir: Traversable | None = None) -> None:
        self.hook = hook
        self.client_dir = client_dir or resources.files("capgate.hook").joinpath("client")
        self._expiry: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/logs", guarded(self.logs)),
            web.post("/v1/metrics", guarded(self.metrics)),
            web.get("/hook/install", guarded(self.installer)),
            web.get("/hook/client/{file}", guarded(self.client_file)),
        ]

    # -- OpenTelemetry ----------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.Response:
        """Each `api_request` record is a call, counted once by its request id (so a call
        also read from the transcript counts once), flagged `otel`."""
        key = await self.hook.machine(request)
        if request.content_type != "application/json":
            raise UnsupportedMediaType(
                "capgate reads OTLP/HTTP JSON: set OTEL_EXPORTER_OTLP_PROTOCOL=http/json"
            )
        found = api_requests(await read_json(request))
        sessions: dict[str | None, list[Call]] = defaultdict(list)
        for session, call in found:
            sessions[session].append(call)
        recorded = 0
        for session, calls in sessions.items():
            report = Report("claude", session or "unknown", tuple(calls), (), False)
            recorded += (await self.hook.record(key, report, ("otel",)))[0]
        log.debug("OTLP logs: %d calls, %d new", len(found), recorded)
        return json_response({"partialSuccess": {}})

    async def metrics(self, request: web.Request) -> web.Response:
        """Accepted and ignored (the logs carry every call), but only from a machine."""
        await self.hook.machine(request)
        return json_response({"partialSuccess": {}})

    # -- the files a machine installs -------------------------------------------------

    async def installer(self, request: web.Request) -> web.Response:
        return self._file(INSTALLER)

    async def client_file(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["file"])

    def _file(self, name: str) -> web.Response:
        path = self.client_dir.joinpath(name)
        if not _CLIENT_FILE.match(name) or not path.is_file():
            raise NotFound(f"no hook client file {name!r} in this capgate")
        data = path.read_bytes()
        return web.Response(
            body=data,
            content_type="text/x-python",
            charset="utf-8",
            headers={
                "x-capgate-sha256": hashlib.sha256(data).hexdigest(),
                "cache-control": "no-store",
            },
        )

    # -- lease expiry -----------------------------------------------------------------

    async def start(self, _: web.Application | None = None) -> None:
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)

    async def _expire_loop(self) -> None:
        lease_s = self.hook.settings.hook_lease_s
        while True:
            await asyncio.sleep(min(30.0, max(0.2, lease_s / 4)))
            try:
                await self.expire()
            except Exception:
                log.exception("settling expired hook leases failed")

    async def expire(self) -> int:
        """Settle every hook lease older than `hook_lease_s` as its prompt (any process
        may: one that another settled first is a no-op). How many this one settled."""
        store, settings = self.hook.store, self.hook.settings
        settled = 0
        for lease in await store.leases_before(self.hook.clock() - settings.hook_lease_s):
            settled += await store.settle_lease(lease, PROMPT_DONE)
        if settled:
            log.info("settled %d hook leases held longer than %ss", settled, settings.hook_lease_s)
        return settled
