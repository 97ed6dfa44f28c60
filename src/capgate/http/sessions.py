"""Who may use the admin API: the admin key as a Bearer token, or a dashboard session.

A session starts when someone logs in to the dashboard with the admin key. Its token is
32 random bytes in an HttpOnly, SameSite=Strict cookie (Secure when the request came over
https); the database stores only the token's SHA-256, so sessions are shared by every
process and node on the database and a copy of the database opens none. Failed logins
are counted in the database too (`SessionStore.login_failed`), so the throttle holds
across processes and nodes. A session lasts
`SESSION_HOURS`, or until logout, or until the admin key changes.

Named admins (`capgate admins`, store/admin_accounts.py) log in with their name and
password instead (scrypt, checked off the event loop; failures counted per address and
per name), or send one of their API tokens (`Authorization: Bearer cga-...`). Their
session's actor is their name, and their role and teams are read again on every request,
so a disabled or changed admin is cut off at once. The admin key stays the owner's
break-glass credential (actor `admin`, or `admin@dashboard` for its sessions).

Cookie-authenticated requests that change something must also send `x-csrf-token`, an
HMAC of the session token that the page reads from `GET /dashboard/session`: another
site can make the browser send the cookie (SameSite already stops most of that) but can
never read the token. Bearer requests need none, since no browser adds that header.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from capgate.errors import AuthenticationFailed, CapgateError, PermissionDenied
from capgate.http.auth import AdminAuthenticator, PreviousAdminKey, presented_key
from capgate.http.client_address import Network, client_address
from capgate.passwords import TOKEN_PREFIX, verify_password
from capgate.passwords import token_hash as admin_token_hash
from capgate.store.admin_accounts import Admin, AdminStore
from capgate.store.base import SessionStore
from capgate.store.records import Session, iso

COOKIE = "capgate_session"
CSRF_HEADER = "x-csrf-token"
SESSION_HOURS = 12
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_ACTOR = "admin"
SESSION_ACTOR = "admin@dashboard"


class TokenRefused(AuthenticationFailed):
    """A real admin token that may not be used (revoked, expired, rotated): not a guess,
    so not counted against the address."""


class TooManyAttempts(CapgateError):
    status = 429
    kind = "rate_limit_error"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"capgate-csrf", hashlib.sha256).hexdigest()


def key_tag(digest: bytes) -> str:
    """Names the admin key a session was opened with, without revealing its hash."""
    return hashlib.sha256(b"capgate-session:" + digest).hexdigest()[:16]


class LoginThrottle:
    """At most `LOGIN_MAX_FAILURES` failed logins per client address in `LOGIN_WINDOW_S`
    seconds (store/base.py), counted in the store."""

    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def check(self, client: str) -> None:
        wait = await self._store.login_blocked(client, self._clock())
        if wait is not None:
            raise TooManyAttempts(
                "Admin API: too many failed logins or admin keys from this address; "
                "try again later.",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )

    async def failed(self, client: str) -> None:
        await self._store.login_failed(client, self._clock())

    async def succeeded(self, client: str) -> None:
        await self._store.login_succeeded(client)


class AccessStore(SessionStore, AdminStore, Protocol):
    """What admin access needs of the store."""


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str
    session: Session | None = None
    token: str | None = None  # the session token, for cookie callers
    role: str = "owner"  # the admin key's callers are the owner
    team_list: tuple[str, ...] = ()  # a team admin's teams
    named: bool = False  # a named admin (not the admin key)

    @property
    def teams(self) -> frozenset[str] | None:
        """The teams a team admin is confined to; None: every team."""
        return frozenset(self.team_list) if self.role == "team-admin" else None

    def sees_team(self, team: str | None) -> bool:
        teams = self.teams
        return teams is None or team in teams


def caller_of(admin: Admin, session: Session | None = None, token: str | None = None) -> Caller:
    return Caller(admin.name, session, token, admin.role, admin.teams, named=True)


class AdminAccess:
    def __init__(
        self,
        store: AccessStore,
        digest: bytes,
        trusted_proxies: tuple[Network, ...] = (),
        clock: Callable[[], float] = time.time,
        previous: PreviousAdminKey | None = None,  # a rotated admin key, in its grace
    ) -> None:
        self._store = store
        self._clock = clock
        self._key = AdminAuthenticator(digest, previous)
        self._tag = key_tag(digest)
        self._trusted = trusted_proxies
        self.throttle = LoginThrottle(store)

    def check_key(self, raw: str) -> None:
        self._key.check_key(raw)

    def client_of(self, request: web.Request) -> str:
        """Whose failures a failed login or admin key counts against."""
        return client_address(request, self._trusted)

    async def authenticate(self, request: web.Request) -> Caller:
        """The caller of an admin route, or AuthenticationFailed / PermissionDenied /
        TooManyAttempts. A request with an admin key header is judged by it alone, and
        a wrong one counts as a failed login of its address (the dashboard's throttle,
        kept in the store: shared by every process; counted apart from the dashboard's, so
        that guesses at one door do not lock the admin out of the other): once blocked,
        no key is tried."""
        raw = presented_key(request.headers)
        if raw is not None:
            client = "api " + self.client_of(request)  # apart from dashboard logins
            await self.throttle.check(client)
            try:
                if raw.startswith(TOKEN_PREFIX):
                    named = await self._token_caller(raw)
                    if named is not None:
                        return named
                self._key.check(request.headers)  # also an admin key that looks like a token
            except TokenRefused:
                raise
            except AuthenticationFailed:
                await self.throttle.failed(client)
                raise
            return Caller(ADMIN_ACTOR)
        caller = await self.session_of(request)
        if caller is None:
            raise AuthenticationFailed(
                "Admin API: send Authorization: Bearer <admin key>, or log in to the dashboard."
            )
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            sent = sent if sent.isascii() else ""  # an undecodable byte: simply wrong
            assert caller.token is not None
            if not hmac.compare_digest(sent.encode(), csrf_token(caller.token).encode()):
                raise PermissionDenied(
                    f"Dashboard session: this change needs the {CSRF_HEADER} header of the session."
                )
        return caller

    async def _token_caller(self, raw: str) -> Caller | None:
        """The named admin whose API token `raw` is (None: no such token): refused when
        revoked, expired, its admin disabled, or a rotated secret past its grace period."""
        found = await self._store.find_admin_token(admin_token_hash(raw))
        if found is None:
            return None
        token, now = found.token, self._clock()
        if token.revoked_at is not None:
            raise TokenRefused(
                f"Admin API: this admin token was revoked on {iso(token.revoked_at)}."
            )
        if token.expires_at is not None and token.expires_at <= now:
            raise TokenRefused(f"Admin API: this admin token expired on {iso(token.expires_at)}.")
        if found.old and (token.old_until is None or token.old_until <= now):
            raise TokenRefused(
                f"Admin API: this admin token was rotated on {iso(token.rotated_at)}; "
                f"use its new secret (prefix {token.prefix})."
            )
        admin = await self._store.get_admin(token.admin)
        if admin is None or admin.status != "active":
            raise TokenRefused("Admin API: this admin token's admin is disabled.")
        return caller_of(admin)

    async def session_of(self, request: web.Request) -> Caller | None:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 200 or not token.isascii():
            return None
        session = await self._store.get_session(token_hash(token))
        if session is None or not hmac.compare_digest(session.key_tag, self._tag):
            return None
        if session.actor == SESSION_ACTOR:  # opened with the admin key
            return Caller(session.actor, session, token)
        admin = await self._store.get_admin(session.actor)
        if admin is None or admin.status != "active":
            return None
        return caller_of(admin, session, token)

    async def check_password(self, name: str, password: str) -> Admin | None:
        """The active admin `name` when `password` is theirs (scrypt, off the event loop);
        None otherwise. The same work is done for unknown names."""
        admin = await self._store.get_admin(name)
        stored = admin.password_hash if admin is not None else None
        ok = await asyncio.to_thread(verify_password, password, stored)
        return admin if ok and admin is not None and admin.status == "active" else None

    async def open_session(self, actor: str = SESSION_ACTOR) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = await self._store.create_session(
            token_hash(token), actor, self._tag, SESSION_HOURS * 3600
        )
        return token, session

    async def close_session(self, token: str) -> None:
        await self._store.delete_session(token_hash(token))


def set_session_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        COOKIE, token, max_age=SESSION_HOURS * 3600, path="/", httponly=True,
        samesite="Strict", secure=is_https(request),
    )  # fmt: skip


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/", samesite="Strict", secure=is_https(request))


def is_https(request: web.Request) -> bool:
    """Whether the browser reached us over https: directly, or through a proxy that says
    so. (Trusting the proxy header only ever adds the Secure flag, never removes it.)"""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
