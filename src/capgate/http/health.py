"""Liveness and readiness, unauthenticated (load balancers and orchestrators ask them).

`GET /health` is liveness: the process answers, 200. `GET /health/ready` is readiness:
503 with the reasons while the store cannot be written (the write lock has not been free
for a second, or the last write failed) or settlements wait to be retried; 200 otherwise.
A process that is not ready still answers and keeps its settlements (see budgets.md).
"""

from __future__ import annotations

from aiohttp import web

from capgate import __version__
from capgate.store.base import HotPath


class Health:
    def __init__(self, store: HotPath) -> None:
        self._store = store

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/health", self.live), web.get("/health/ready", self.ready)]

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def ready(self, request: web.Request) -> web.Response:
        health = self._store.health()
        reasons = []
        if health.problem is not None:
            reasons.append(f"the usage ledger cannot be written: {health.problem}")
        if health.settlements_retrying:
            reasons.append(f"{health.settlements_retrying} settlements wait to be written")
        payload = {
            "status": "not_ready" if reasons else "ready",
            "version": __version__,
            "reasons": reasons,
            "settlements_waiting": health.settlements_waiting,
            "settlements_retrying": health.settlements_retrying,
        }
        return web.json_response(payload, status=503 if reasons else 200)
