"""Who is calling: virtual keys for the gateway, the admin key for /admin."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping

from capgate.core.limits import Scope
from capgate.errors import AuthenticationFailed
from capgate.keys import key_id_of, matches
from capgate.store.base import HotPath

_REFRESH_EVERY = 0.05  # at most one cache refresh per 50 ms, shared by concurrent misses


def presented_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class CacheRefresher:
    """Reloads the store's key cache on demand (a key or machine created a moment ago by
    another process): at most once per `_REFRESH_EVERY`, and callers that arrive while a
    reload runs wait for that one."""

    def __init__(self, store: HotPath) -> None:
        self._store = store
        self._refreshing: asyncio.Future[None] | None = None
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
        self._refreshing = asyncio.ensure_future(self._store.refresh())
        try:
            await asyncio.shield(self._refreshing)
        finally:
            self._last_refresh = time.monotonic()
            self._refreshing = None


class KeyAuthenticator:
    def __init__(self, store: HotPath) -> None:
        self._store = store
        self._refresher = CacheRefresher(store)

    async def authenticate(self, headers: Mapping[str, str]) -> Scope:
        raw = presented_key(headers)
        if raw is None:
            raise AuthenticationFailed(
                "No API key: send your capgate key as x-api-key or Authorization: Bearer."
            )
        key_id = key_id_of(raw)
        if key_id is None:
            raise AuthenticationFailed("Invalid API key: this is not a capgate key.")
        entry = self._store.key_by_id(key_id)
        if entry is None:  # maybe created a moment ago, by another process
            await self._refresher.refresh()
            entry = self._store.key_by_id(key_id)
        if entry is None or not matches(raw, entry[1]):
            raise AuthenticationFailed("Invalid API key.")
        return entry[0]


def admin_digest(admin_key: str) -> bytes:
    return hashlib.sha256(admin_key.encode()).digest()


class AdminAuthenticator:
    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    def check(self, headers: Mapping[str, str]) -> None:
        raw = presented_key(headers)
        if raw is None:
            raise AuthenticationFailed("Admin API: send Authorization: Bearer <admin key>.")
        self.check_key(raw)

    def check_key(self, raw: str) -> None:
        if not hmac.compare_digest(hashlib.sha256(raw.encode()).digest(), self._digest):
            raise AuthenticationFailed("Admin API: invalid admin key.")
