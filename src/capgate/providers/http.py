"""HTTP providers: Anthropic, OpenAI, OpenAI-compatible and the mock upstream, over one
pooled keep-alive aiohttp client session each (aiohttp's client measured ~10x cheaper per
request than httpx on this hot path; see docs/dependencies.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp

from capgate.config import ProviderConfig
from capgate.errors import UpstreamFailed, UpstreamTimeout
from capgate.providers.base import Endpoint

# Paths below the provider's base URL. OpenAI base URLs end in /v1 by convention (as in the
# SDKs); Anthropic's and the mock's are the bare host.
_PATHS = {
    "anthropic": {
        Endpoint.MESSAGES: "/v1/messages",
        Endpoint.COUNT_TOKENS: "/v1/messages/count_tokens",
    },
    "openai": {Endpoint.CHAT: "/chat/completions", Endpoint.RESPONSES: "/responses"},
    "openai-compatible": {Endpoint.CHAT: "/chat/completions", Endpoint.RESPONSES: "/responses"},
    "mock": {
        Endpoint.MESSAGES: "/v1/messages",
        Endpoint.COUNT_TOKENS: "/v1/messages/count_tokens",
        Endpoint.CHAT: "/v1/chat/completions",
        Endpoint.RESPONSES: "/v1/responses",
    },
}
# Client headers that change what the upstream does and must reach it.
_FORWARDED = ("anthropic-version", "anthropic-beta")
_ANSWER_HEADERS = ("content-type", "request-id", "x-request-id", "retry-after", "x-should-retry")


@contextmanager
def _broken_off(response: aiohttp.ClientResponse) -> Iterator[None]:
    """Reading an answer: transport failures become UpstreamFailed; the connection goes
    back to the pool (or is dropped) however reading ends."""
    try:
        yield
    except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
        raise UpstreamTimeout(f"the provider's answer timed out: {_detail(exc)}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamFailed(f"the provider's answer broke off: {_detail(exc)}") from exc
    finally:
        response.release()


def _detail(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class HTTPAnswer:
    __slots__ = ("_response", "headers", "status")
    cost_nano = None  # HTTP providers report usage, not cost: the pricing table prices it

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        src = response.headers  # the few worth passing on, read once
        self.headers: Mapping[str, str] = {n: src[n] for n in _ANSWER_HEADERS if n in src}

    async def chunks(self) -> AsyncIterator[bytes]:
        with _broken_off(self._response):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def read(self) -> bytes:
        with _broken_off(self._response):
            return await self._response.read()

    def close(self) -> None:
        self._response.close()


class HTTPProvider:
    def __init__(self, config: ProviderConfig, base_url: str | None = None) -> None:
        self.name = config.name
        self.type: str = config.type
        self.dialects = config.dialects
        self._config = config
        self._base = (base_url or config.url).rstrip("/")
        self._paths = _PATHS[config.type]
        self._headers = {"content-type": "application/json", **config.headers}
        key = config.api_key or ("capgate-demo" if config.type == "mock" else None)
        if key:
            if config.type in ("anthropic", "mock"):
                self._headers["x-api-key"] = key
            else:
                self._headers["authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily, inside the running loop
            connector = aiohttp.TCPConnector(
                limit=self._config.max_connections, keepalive_timeout=60, ttl_dns_cache=300
            )
            timeout = aiohttp.ClientTimeout(
                total=self._config.timeout_s,  # per request, the answer's body included
                connect=self._config.connect_timeout_s,
                sock_read=self._config.read_timeout_s,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint in self._paths

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> HTTPAnswer:
        headers = dict(self._headers)
        for name in _FORWARDED:
            value = client_headers.get(name)
            if value is not None:
                headers[name] = value
        if endpoint.dialect == "anthropic" and "anthropic-version" not in headers:
            headers["anthropic-version"] = "2023-06-01"
        url = self._base + self._paths[endpoint]
        try:
            response = await self._client().post(url, data=body, headers=headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection: the request never reached the provider.
            raise UpstreamFailed(
                f'provider "{self.name}" is unreachable: {_detail(exc)}', sent=False
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f'provider "{self.name}" did not answer in time: {_detail(exc)}'
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailed(f'provider "{self.name}" failed: {_detail(exc)}') from exc
        return HTTPAnswer(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)  # let the connector finish closing its transports
