"""The admin side of hook mode (`/admin/hook/...`, `/admin/users/{name}/kill`): install
codes (shown once), enrolled machines, the kill switch. Revoking a machine is the
existing `POST /admin/keys/{name}/revoke`; resuming a killed person the existing
`POST /admin/users/{name}/resume` (which clears the logout mark: `Store.resume_user`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from capgate.core.limits import ScopeKind
from capgate.http.admin_io import json_response, known_params, read_body
from capgate.keys import key_hash, new_install_code
from capgate.store.base import Store
from capgate.store.records import HookCode, scope_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TTL_S = 86_400.0
MAX_TTL_S = 7 * 86_400.0


class CodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=200)
    ttl_s: float = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S)
    agents: list[str] = Field(default_factory=lambda: ["claude", "codex"], min_length=1)

    @field_validator("agents")
    @classmethod
    def _agents(cls, value: list[str]) -> list[str]:
        if any(a not in ("claude", "codex") for a in value):
            raise ValueError('expected "claude" and/or "codex"')
        return value


class Kill(BaseModel):
    model_config = ConfigDict(extra="forbid")
    logout: bool = False


def code_json(code: HookCode, now: float, machines: dict[str, str]) -> dict[str, Any]:
    return {
        "id": code.id,
        "user": code.user,
        "created_at": code.created_at,
        "expires_at": code.expires_at,
        "used_at": code.used_at,
        "machine": machines.get(code.machine or "", code.machine),
        "agents": list(code.agents),
        "state": code.state(now),
    }


def install_commands(url: str, code: str) -> dict[str, str]:
    return {
        "capgate": f"capgate hook install --server {url} --code {code}",
        "curl": f"curl -fsSL {url}/hook/install | sudo python3 - --server {url} --code {code}",
    }


class HookAdminRoutes:
    def __init__(
        self, store: Store, clock: Callable[[], float], public_url: str | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.public_url = public_url

    def routes(self, guard: Callable[[Handler], Handler]) -> list[web.RouteDef]:
        return [
            web.post("/admin/hook/codes", guard(self.create_code)),
            web.get("/admin/hook/codes", guard(self.codes)),
            web.delete("/admin/hook/codes/{id}", guard(self.delete_code)),
            web.get("/admin/hook/machines", guard(self.machines)),
            web.post("/admin/users/{name:[^/]+}/kill", guard(self.kill)),  # any name
        ]

    def url(self, request: web.Request) -> str:
        return (self.public_url or f"{request.scheme}://{request.host}").rstrip("/")

    async def create_code(self, request: web.Request) -> web.Response:
        spec: CodeCreate = await read_body(request, CodeCreate)
        code = new_install_code()
        now = self.clock()
        stored = await self.store.create_hook_code(
            key_hash(code), spec.user, now + spec.ttl_s, tuple(dict.fromkeys(spec.agents)),
            request["actor"],
        )  # fmt: skip
        answer = {
            "id": stored.id,
            "code": code,
            "user": stored.user,
            "expires_at": stored.expires_at,
            "install": install_commands(self.url(request), code),
        }
        return json_response(answer, status=201)

    async def _machine_names(self) -> dict[str, str]:
        return {k.id: k.name for k in await self.store.list_scopes(ScopeKind.KEY)}

    async def codes(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        names, now = await self._machine_names(), self.clock()
        return json_response([code_json(c, now, names) for c in await self.store.list_hook_codes()])

    async def delete_code(self, request: web.Request) -> web.Response:
        await self.store.delete_hook_code(request.match_info["id"], request["actor"])
        return web.Response(status=204)

    async def machines(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        keys = {k.id: k for k in await self.store.list_scopes(ScopeKind.KEY)}
        out = []
        for m in await self.store.list_hook_machines():
            key = keys.get(m.key_id)
            if key is None:  # its key was deleted
                continue
            hook = (key.extra.get("metadata") or {}).get("hook") or {}
            out.append(
                {
                    "key": key.id,
                    "name": key.name,
                    "user": key.extra.get("user"),
                    "hostname": hook.get("hostname"),
                    "os": hook.get("os"),
                    "os_user": hook.get("os_user"),
                    "agents": hook.get("agents", []),
                    "hook_version": m.hook_version,
                    "installed_at": hook.get("installed_at"),
                    "last_seen": m.last_seen,
                    "tampered_at": m.tampered_at,
                    "tamper_files": list(m.tamper_files),
                    "status": key.status.value,
                }
            )
        return json_response(sorted(out, key=lambda m: m["name"]))

    async def kill(self, request: web.Request) -> web.Response:
        """Pause the person (every gate and check of their machines refuses from now on)
        and mark whether their machines log the agent out: one change, one audit entry."""
        spec: Kill = await read_body(request, Kill)
        name, actor = request.match_info["name"], request["actor"]
        scope = await self.store.kill_user(name, spec.logout, actor)
        return json_response(scope_json(scope))
