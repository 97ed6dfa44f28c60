"""The CLI's client of a running capgate server's admin API."""

from __future__ import annotations

import os
from typing import Any

import httpx

from capgate.cli.errors import fail

__all__ = ["DEFAULT_URL", "AdminClient", "fail"]

DEFAULT_URL = "http://127.0.0.1:4000"


class AdminClient:
    def __init__(self, url: str | None = None, admin_key: str | None = None) -> None:
        self.url = (url or os.environ.get("CAPGATE_URL") or DEFAULT_URL).rstrip("/")
        key = admin_key or os.environ.get("CAPGATE_ADMIN_KEY")
        if not key:
            fail("set CAPGATE_ADMIN_KEY to the admin key (capgate serve printed it at first start)")
        self._http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    def create_if_missing(self, path: str, name: str) -> bool:
        """POST `{"name": name}` to `path`; False when it exists already (409)."""
        response = self._send("POST", path, json={"name": name})
        if response.status_code == 409:
            return False
        self._answer(response)
        return True

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._answer(self._send(method, path, **kwargs))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach capgate at {self.url}: {exc}")

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            fail(f"{response.status_code}: {message}")
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text
