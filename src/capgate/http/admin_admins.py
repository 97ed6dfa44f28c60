"""Named admins and their API tokens (`/admin/admins`, `/admin/me`). Who may call each
route is in http/roles.py: owners manage admins; every admin reads themselves and
manages their own password and tokens. A password or token is never logged or shown
again: a token's secret is in the answer that makes (or rotates) it, once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from capgate.core.bounds import check_time
from capgate.core.limits import ScopeKind
from capgate.errors import InvalidRequest, NotFound
from capgate.http.admin_io import json_response, known_params, read_body
from capgate.passwords import (
    hash_password,
    new_admin_token,
    password_problem,
    token_display,
    token_hash,
)
from capgate.store.admin_accounts import Admin, admin_json, token_json

if TYPE_CHECKING:
    from capgate.http.admin import AdminAPI

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[Handler], Handler]
Role = Literal["owner", "admin", "viewer", "team-admin"]
ADMIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_GRACE_S = 30 * 86400


def _password(value: str | None) -> str | None:
    if value is not None and (problem := password_problem(value)) is not None:
        raise ValueError(problem)
    return value


class AdminCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="lower-case letters, digits, . _ - (up to 64)")
    role: Role
    teams: list[str] = Field(default_factory=list, description="a team admin's teams")
    password: str | None = Field(None, description="at least 12 characters (dashboard login)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ADMIN_NAME.fullmatch(value):
            raise ValueError(
                "lower-case letters, digits, . _ - (up to 64), starting with a letter or digit"
            )
        return value

    _check_password = field_validator("password")(_password)


class AdminUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    teams: list[str] | None = None
    status: Literal["active", "disabled"] | None = None


class PasswordSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str

    _check_password = field_validator("password")(_password)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=200)
    expires_at: StrictInt | None = Field(None, description="Unix seconds; none: never expires")

    @field_validator("expires_at")
    @classmethod
    def _time(cls, value: int | None) -> int | None:
        return None if value is None else int(check_time(value))


class TokenRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: StrictInt = Field(0, ge=0, le=MAX_GRACE_S, description="the old secret's grace")


class AdminRoutes:
    def __init__(self, api: AdminAPI) -> None:
        self.api = api
        self.store = api.store

    def routes(self, guard: Guard) -> list[web.RouteDef]:
        one = "/admin/admins/{name}"
        return [
            web.get("/admin/me", guard(self.me)),
            web.get("/admin/admins", guard(self.list_admins)),
            web.post("/admin/admins", guard(self.create)),
            web.get(one, guard(self.show)),
            web.patch(one, guard(self.update)),
            web.delete(one, guard(self.delete)),
            web.post(one + "/password", guard(self.set_password)),
            web.get(one + "/tokens", guard(self.tokens)),
            web.post(one + "/tokens", guard(self.create_token)),
            web.post(one + "/tokens/{id}/revoke", guard(self.revoke_token)),
            web.post(one + "/tokens/{id}/rotate", guard(self.rotate_token)),
        ]

    async def me(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        caller = request["caller"]
        return json_response(
            {
                "name": caller.actor,
                "role": caller.role,
                "teams": sorted(caller.team_list),
                "break_glass": not caller.named,  # the admin key
            }
        )

    async def list_admins(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        items = [admin_json(a) for a in await self.store.list_admins()]
        return json_response({"items": items, "next_cursor": None})

    async def _teams(self, role: str, teams: list[str]) -> tuple[str, ...]:
        """A team admin's teams: at least one, each existing; other roles have none."""
        if role != "team-admin":
            if teams:
                raise InvalidRequest(f"teams: only a team-admin has teams, not a {role}")
            return ()
        if not teams:
            raise InvalidRequest("teams: a team-admin needs at least one team")
        for team in teams:
            try:
                await self.store.get_scope(ScopeKind.TEAM, team)
            except NotFound:
                raise InvalidRequest(f'teams: no team named "{team}"') from None
        return tuple(sorted(set(teams)))

    async def create(self, request: web.Request) -> web.Response:
        spec: AdminCreate = await read_body(request, AdminCreate)
        teams = await self._teams(spec.role, spec.teams)
        hashed = None
        if spec.password is not None:
            hashed = await asyncio.to_thread(hash_password, spec.password)
        made = await self.store.create_admin(spec.name, spec.role, teams, hashed, request["actor"])
        return json_response(admin_json(made), status=201)

    async def _admin(self, name: str) -> Admin:
        found = await self.store.get_admin(name)
        if found is None:
            raise NotFound(f'no admin named "{name}"')
        return found

    async def show(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        return json_response(admin_json(await self._admin(request.match_info["name"])))

    async def update(self, request: web.Request) -> web.Response:
        spec: AdminUpdate = await read_body(request, AdminUpdate)
        before = await self._admin(request.match_info["name"])
        role = spec.role or before.role
        teams = None
        if spec.role is not None or spec.teams is not None:
            if spec.teams is not None:
                given = spec.teams
            else:  # a new role: a team admin keeps their teams, other roles have none
                given = list(before.teams) if role == "team-admin" else []
            teams = await self._teams(role, given)
        changed = await self.store.update_admin(
            before.name, role=spec.role, teams=teams, status=spec.status, actor=request["actor"]
        )
        return json_response(admin_json(changed))

    async def delete(self, request: web.Request) -> web.Response:
        await self.store.delete_admin(request.match_info["name"], request["actor"])
        return web.Response(status=204)

    async def set_password(self, request: web.Request) -> web.Response:
        spec: PasswordSet = await read_body(request, PasswordSet)
        name = (await self._admin(request.match_info["name"])).name
        hashed = await asyncio.to_thread(hash_password, spec.password)
        await self.store.update_admin(name, password_hash=hashed, actor=request["actor"])
        return web.Response(status=204)

    # -- tokens ------------------------------------------------------------------------

    async def tokens(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        name = (await self._admin(request.match_info["name"])).name
        items = [token_json(t) for t in await self.store.list_admin_tokens(name)]
        return json_response({"items": items, "next_cursor": None})

    async def create_token(self, request: web.Request) -> web.Response:
        spec: TokenCreate = await read_body(request, TokenCreate)
        if spec.expires_at is not None and spec.expires_at <= self.api.clock():
            raise InvalidRequest("expires_at: in the past")
        token_id, raw = new_admin_token()
        made = await self.store.create_admin_token(
            request.match_info["name"], token_id, token_hash(raw), token_display(raw),
            spec.label, spec.expires_at, request["actor"],
        )  # fmt: skip
        return json_response({**token_json(made), "token": raw}, status=201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        info = request.match_info
        done = await self.store.revoke_admin_token(info["name"], info["id"], request["actor"])
        return json_response(token_json(done))

    async def rotate_token(self, request: web.Request) -> web.Response:
        spec: TokenRotate = await read_body(request, TokenRotate)
        info = request.match_info
        _, raw = new_admin_token()
        done = await self.store.rotate_admin_token(
            info["name"], info["id"], token_hash(raw), token_display(raw), spec.grace_s,
            request["actor"],
        )  # fmt: skip
        return json_response({**token_json(done), "token": raw})
