"""Who is calling: virtual keys for the gateway, the admin key for /admin."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from capgate.config import ServerConfig
from capgate.core.limits import Scope
from capgate.errors import AuthenticationFailed, StoreUnavailable
from capgate.keys import key_hash, key_id_of
from capgate.rotation import RetiredSecret, iso, rotated_message
from capgate.store.base import HotPath

_REFRESH_EVERY = 0.05  # at most one cache refresh per 50 ms, shared by concurrent misses
ROTATION_SEEN_WITHIN_S = 1.0  # a gateway request reloads a cache older than this,
BRIEF_WAIT_S = 0.25  # waiting this long at most for it


def _retrieved(task: asyncio.Future[None]) -> None:
    """A reload left to finish in the background: its error was seen (StoreUnavailable)."""
    if not task.cancelled():
        task.exception()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential a request carries, as ASCII: every capgate key and token is, and a
    byte that is not (undecodable, kept as a surrogate) becomes `?`, so the credential
    is simply wrong (401), never a string that cannot be hashed (500)."""
    key = headers.get("x-api-key")
    if key:
        return _ascii(key.strip())
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return _ascii(token.strip())
    return None


def _ascii(text: str) -> str:
    return text if text.isascii() else text.encode("ascii", "replace").decode()


class CacheRefresher:
    """Reloads the store's key cache on demand (a key or machine created a moment ago by
    another process): at most once per `_REFRESH_EVERY`, and callers that arrive while a
    reload runs wait for that one."""

    def __init__(self, store: HotPath) -> None:
        self._store = store
        self._refreshing: asyncio.Future[None] | None = None
        self._started = 0.0  # when the running or the last reload started (monotonic)
        self._last_refresh = 0.0

    @property
    def age(self) -> float:
        """Seconds since the last reload ended."""
        return time.monotonic() - self._last_refresh

    async def refresh(self) -> None:
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if self.age < _REFRESH_EVERY:
            return
        await self._reload()

    async def refresh_within(self, wait_s: float) -> None:
        """`refresh`, waiting at most `wait_s`: a slow or unreachable store leaves the
        cache as it is (it serves fail-open keys), the reload going on in the background."""
        task = asyncio.ensure_future(self.refresh())
        task.add_done_callback(_retrieved)
        with contextlib.suppress(TimeoutError, StoreUnavailable):
            await asyncio.wait_for(asyncio.shield(task), wait_s)

    async def refresh_since(self, since: float) -> None:
        """Wait for a reload that started at `since` (monotonic) or later, so that what
        was committed before `since` is in the cache: a key rotated a moment ago by
        another process, whose new secret a client sends now. Still at most one reload
        per `_REFRESH_EVERY`: a caller may wait that long."""
        while self._started < since:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)
            elif (wait := _REFRESH_EVERY - self.age) > 0:
                await asyncio.sleep(wait)
            else:
                await self._reload()

    async def _reload(self) -> None:
        self._started = time.monotonic()
        self._refreshing = asyncio.ensure_future(self._store.refresh())
        try:
            await asyncio.shield(self._refreshing)
        finally:
            self._last_refresh = time.monotonic()
            self._refreshing = None


class KeyAuthenticator:
    def __init__(self, store: HotPath, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._refresher = CacheRefresher(store)

    async def authenticate(self, headers: Mapping[str, str], *, fresh: bool = False) -> Scope:
        """The key `headers` present. `fresh`: reload the cache first if an admin changed
        anything (in any process) since, as a reservation does; at most every 50 ms. A
        cache older than `ROTATION_SEEN_WITHIN_S` is reloaded too: a secret rotated
        through another process stops working here within that (docs/security.md)."""
        arrived = time.monotonic()
        if fresh:
            await self._refresher.refresh()
        elif self._refresher.age > ROTATION_SEEN_WITHIN_S:
            await self._refresher.refresh_within(BRIEF_WAIT_S)
        raw = presented_key(headers)
        if raw is None:
            raise AuthenticationFailed(
                "No API key: send your capgate key as x-api-key or Authorization: Bearer."
            )
        key_id = key_id_of(raw)
        if key_id is None:
            raise AuthenticationFailed("Invalid API key: this is not a capgate key.")
        digest = key_hash(raw)
        found = self._find(key_id, digest)
        if found is None:  # maybe created or rotated a moment ago, by another process
            await self._refresher.refresh_since(arrived)
            found = self._find(key_id, digest)
        if isinstance(found, RetiredSecret):
            raise AuthenticationFailed(rotated_message(found))
        if found is None:
            raise AuthenticationFailed("Invalid API key.")
        return found

    def _find(self, key_id: str, digest: bytes) -> Scope | RetiredSecret | None:
        """The key whose current secret, or old secret still in its grace, has `digest`;
        the old secret if its grace is over; None if no secret of the key has it."""
        entry = self._store.key_by_id(key_id)
        if entry is None:
            return None
        if hmac.compare_digest(digest, entry[1]):
            return entry[0]
        for old in self._store.retired_secrets(key_id):
            if hmac.compare_digest(digest, old.hash):
                return entry[0] if self._clock() < old.valid_until else old
        return None


ADMIN_KEY_MIN_LENGTH = 32
ADMIN_KEY_MIN_DISTINCT = 10  # different characters: no `aaaa...`, `abab...`, `1234...`


def admin_key_problem(admin_key: str) -> str | None:
    """Why `admin_key` is too easy to guess to be the admin key (None: it is not). The
    keys capgate generates (`sk-cg-admin-` and 43 random URL-safe characters) pass."""
    if len(admin_key) < ADMIN_KEY_MIN_LENGTH:
        return (
            f"the admin key is {len(admin_key)} characters long; it must have at least "
            f"{ADMIN_KEY_MIN_LENGTH} (make one with: python3 -c "
            "'import secrets; print(\"sk-cg-admin-\" + secrets.token_urlsafe(32))')"
        )
    if len(set(admin_key)) < ADMIN_KEY_MIN_DISTINCT:
        return (
            f"the admin key has only {len(set(admin_key))} different characters; it must "
            f"have at least {ADMIN_KEY_MIN_DISTINCT} (use a random one)"
        )
    return None


def admin_digest(admin_key: str) -> bytes:
    return hashlib.sha256(admin_key.encode()).digest()


@dataclass(frozen=True, slots=True)
class PreviousAdminKey:
    """The admin key a rotation replaced (`server.admin_key_previous`): accepted on the
    admin API until `valid_until`, then refused as rotated."""

    digest: bytes
    valid_until: float

    @classmethod
    def of(cls, settings: ServerConfig) -> PreviousAdminKey | None:
        if settings.admin_key_previous is None:
            return None
        return cls(admin_digest(settings.admin_key_previous), settings.previous_admin_until())


class AdminAuthenticator:
    def __init__(
        self,
        digest: bytes,
        previous: PreviousAdminKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._digest = digest
        self._previous = previous
        self._clock = clock

    def check(self, headers: Mapping[str, str]) -> None:
        raw = presented_key(headers)
        if raw is None:
            raise AuthenticationFailed("Admin API: send Authorization: Bearer <admin key>.")
        previous = self._previous
        if previous is not None and hmac.compare_digest(admin_digest(raw), previous.digest):
            if self._clock() < previous.valid_until:
                return
            raise AuthenticationFailed(
                "Admin API: this admin key was rotated; it stopped working at "
                f"{iso(previous.valid_until)}. Use the new admin key."
            )
        self.check_key(raw)

    def check_key(self, raw: str) -> None:
        """The current admin key only (a dashboard login takes no previous key)."""
        if not hmac.compare_digest(hashlib.sha256(raw.encode()).digest(), self._digest):
            raise AuthenticationFailed("Admin API: invalid admin key.")
