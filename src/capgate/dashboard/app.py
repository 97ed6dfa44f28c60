"""Serving the dashboard at `/dashboard`: its page and assets (shipped inside the package,
no build step, no CDN), and the login, logout and session routes.

Every answer carries strict security headers: a Content-Security-Policy that allows only
this origin's scripts and styles (no inline code), no framing, no referrer, no sniffing.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from capgate.errors import AuthenticationFailed, CapgateError, NotFound, PermissionDenied
from capgate.http.admin_io import json_response, read_body
from capgate.http.dialects import error_response
from capgate.http.sessions import (
    CSRF_HEADER,
    AdminAccess,
    Caller,
    caller_of,
    clear_session_cookie,
    csrf_token,
    set_session_cookie,
)
from capgate.store.records import Session, iso

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200, description="a named admin; none: admin key")
    password: str = Field(min_length=1, max_length=1000, description="the password or admin key")


@cache
def asset(path: str) -> tuple[bytes, str, str] | None:
    """A file under static/ as (body, content type, etag), or None. Only known file types,
    and only inside static/."""
    if ".." in path.split("/") or path.startswith("/"):
        return None
    suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ""
    kind = _TYPES.get(suffix)
    if kind is None:
        return None
    node = resources.files("capgate.dashboard").joinpath("static", *path.split("/"))
    if not node.is_file():
        return None
    body = node.read_bytes()
    return body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class Dashboard:
    def __init__(self, access: AdminAccess) -> None:
        self.access = access

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dashboard", self.index),
            web.get("/dashboard/", self.index),
            web.get("/dashboard/static/{path:.+}", self.static),
            web.get("/dashboard/session", self.session),
            web.post("/dashboard/login", self.login),
            web.post("/dashboard/logout", self.logout),
        ]

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, request.match_info["path"])

    def _file(self, request: web.Request, path: str) -> web.StreamResponse:
        found = asset(path)
        if found is None:
            return _secure(error_response("admin", NotFound("no such dashboard file")))
        body, kind, etag = found
        headers = {**HEADERS, "etag": etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers={**headers, "content-type": kind})

    async def session(self, request: web.Request) -> web.Response:
        """Who is logged in, and the CSRF token the page sends with every change."""
        caller = await self.access.session_of(request)
        if caller is None or caller.session is None or caller.token is None:
            return _secure(json_response({"authenticated": False}))
        return _secure(json_response(_signed_in(caller.token, caller.session, caller)))

    async def login(self, request: web.Request) -> web.Response:
        """With the admin key (no `name`), or a named admin's name and password. Failures
        count against the address, and a named admin's also against the name (so many
        addresses guessing one password are throttled too)."""
        client = self.access.client_of(request)
        try:
            _same_origin(request)
            await self.access.throttle.check(client)
            body: Login = await read_body(request, Login)
            if body.name is not None:
                return await self._login_named(request, client, body.name, body.password)
            try:
                self.access.check_key(body.password)
            except AuthenticationFailed:
                await self.access.throttle.failed(client)
                raise AuthenticationFailed("Wrong admin key.") from None
            await self.access.throttle.succeeded(client)
            token, session = await self.access.open_session()
        except CapgateError as exc:
            return _secure(error_response("admin", exc))
        response = json_response(_signed_in(token, session, Caller(session.actor)))
        set_session_cookie(response, request, token)
        return _secure(response)

    async def _login_named(
        self, request: web.Request, client: str, name: str, password: str
    ) -> web.Response:
        by_name = "admin-name " + name
        await self.access.throttle.check(by_name)
        admin = await self.access.check_password(name, password)
        if admin is None:
            await self.access.throttle.failed(client)
            await self.access.throttle.failed(by_name)
            raise AuthenticationFailed("Wrong name or password.")
        await self.access.throttle.succeeded(client)
        await self.access.throttle.succeeded(by_name)
        token, session = await self.access.open_session(admin.name)
        response = json_response(_signed_in(token, session, caller_of(admin, session, token)))
        set_session_cookie(response, request, token)
        return _secure(response)

    async def logout(self, request: web.Request) -> web.Response:
        try:
            caller = await self.access.authenticate(request)  # a session and its CSRF token
            if caller.token is not None:
                await self.access.close_session(caller.token)
        except CapgateError as exc:
            return _secure(error_response("admin", exc))
        response = web.Response(status=204)
        clear_session_cookie(response, request)
        return _secure(response)


def _signed_in(token: str, session: Session, caller: Caller) -> dict[str, Any]:
    return {
        "authenticated": True,
        "actor": session.actor,
        "role": caller.role,
        "teams": sorted(caller.team_list),
        "csrf_token": csrf_token(token),
        "csrf_header": CSRF_HEADER,
        "expires_at": iso(session.expires_at),
    }


def _secure(response: web.Response) -> web.Response:
    response.headers.update(HEADERS)
    response.headers.setdefault("cache-control", "no-store")
    return response


def _same_origin(request: web.Request) -> None:
    """A login posted from another site's page is refused (its Origin names that site)."""
    origin = request.headers.get("origin")
    if origin and not hmac.compare_digest(urlsplit(origin).netloc.encode(), request.host.encode()):
        raise PermissionDenied("Login from another origin refused.")
