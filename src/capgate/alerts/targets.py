"""Where webhooks may point. A webhook URL names a host an admin typed, and capgate
connects to it from inside the network it runs in: a target on a private, loopback,
link-local or otherwise non-public address is refused unless the admin allows it
(`alerts_allow_private_targets`). Literal addresses are checked before connecting, and
names when they are resolved (`GuardedResolver`), so a name that resolves to a private
address at sending time is refused too."""

from __future__ import annotations

import socket
from ipaddress import ip_address
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class PrivateTarget(OSError):
    """The target's address is not public and private targets are not allowed."""


def check_url(url: str, allow_private: bool) -> None:
    """ValueError when `url` is not an http(s) URL, or names a private address literally
    (or `localhost`) while private targets are not allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("url: no credentials in the URL (the signature proves the sender)")
    if allow_private:
        return
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost") or not _public(host):
        raise ValueError(
            f"url: {host} is a private or loopback address; set alerts_allow_private_targets "
            "to send alerts there"
        )


def _public(host: str) -> bool:
    try:
        return ip_address(host).is_global
    except ValueError:
        return True  # a name: checked when it is resolved


class GuardedResolver(AbstractResolver):
    """The default resolver, refusing names that resolve to a non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            if not ip_address(result["host"]).is_global:
                raise PrivateTarget(f"{host} resolves to a private address {result['host']}")
        return found

    async def close(self) -> None:
        await self._inner.close()
