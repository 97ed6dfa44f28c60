"""Who may use the admin API: the admin key as a Bearer token, or a dashboard session.

A session starts when someone logs in to the dashboard with the admin key. Its token is
32 random bytes in an HttpOnly, SameSite=Strict cookie (Secure when the request came over
https); the database stores only the token's SHA-256, so sessions are shared by every
process on the file and a copy of the database opens none. A session lasts
`SESSION_HOURS`, or until logout, or until the admin key changes.

Cookie-authenticated requests that change something must also send `x-csrf-token`, an
HMAC of the session token that the page reads from `GET /dashboard/session`: another
site can make the browser send the cookie (SameSite already stops most of that) but can
never read the token. Bearer requests need none, since no browser adds that header.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from capgate.errors import AuthenticationFailed, CapgateError, PermissionDenied
from capgate.http.auth import AdminAuthenticator, presented_key
from capgate.store.records import Session
from capgate.store.sqlite_dashboard import DashboardStore

COOKIE = "capgate_session"
CSRF_HEADER = "x-csrf-token"
SESSION_HOURS = 12
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_ACTOR = "admin"
SESSION_ACTOR = "admin@dashboard"


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
    """At most `max_failures` failed logins per client address in `window` seconds."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def check(self, client: str) -> None:
        recent = self._recent(client)
        if len(recent) >= self._max:
            wait = math.ceil(recent[0] + self._window - self._clock())
            raise TooManyAttempts(
                "Too many failed logins from this address; try again later.",
                headers={"retry-after": str(max(1, wait))},
            )

    def failed(self, client: str) -> None:
        self._recent(client).append(self._clock())
        if len(self._failures) > 10_000:  # bounded: addresses come from the network
            self._failures = {c: d for c, d in self._failures.items() if d}

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] <= self._clock() - self._window:
            recent.popleft()
        return recent


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str
    session: Session | None = None
    token: str | None = None  # the session token, for cookie callers


class AdminAccess:
    def __init__(self, store: DashboardStore, digest: bytes) -> None:
        self._store = store
        self._key = AdminAuthenticator(digest)
        self._tag = key_tag(digest)
        self.throttle = LoginThrottle()

    def check_key(self, raw: str) -> None:
        self._key.check_key(raw)

    async def authenticate(self, request: web.Request) -> Caller:
        """The caller of an admin route, or AuthenticationFailed / PermissionDenied. A
        request with an admin key header is judged by it alone."""
        if presented_key(request.headers) is not None:
            self._key.check(request.headers)
            return Caller(ADMIN_ACTOR)
        caller = await self.session_of(request)
        if caller is None:
            raise AuthenticationFailed(
                "Admin API: send Authorization: Bearer <admin key>, or log in to the dashboard."
            )
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            assert caller.token is not None
            if not hmac.compare_digest(sent.encode(), csrf_token(caller.token).encode()):
                raise PermissionDenied(
                    f"Dashboard session: this change needs the {CSRF_HEADER} header of the session."
                )
        return caller

    async def session_of(self, request: web.Request) -> Caller | None:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 200:
            return None
        session = await self._store.get_session(token_hash(token))
        if session is None or not hmac.compare_digest(session.key_tag, self._tag):
            return None
        return Caller(session.actor, session, token)

    async def open_session(self) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = await self._store.create_session(
            token_hash(token), SESSION_ACTOR, self._tag, SESSION_HOURS * 3600
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
