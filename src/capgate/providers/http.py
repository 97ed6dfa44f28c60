"""HTTP providers: Anthropic, OpenAI, OpenAI-compatible and the mock upstream, each over
its own pool of keep-alive connections (`providers/upstream.py`, chosen by measurement:
`bench/clients.py`, docs/dependencies.md)."""

from __future__ import annotations

from collections.abc import Mapping

from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint
from capgate.providers.upstream import Answer, Pool, header_lines

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
# The Chat Completions output field capgate sets (OpenAI's reasoning models refuse
# `max_tokens`; compatible servers may not know `max_completion_tokens`).
_CHAT_OUTPUT_FIELD = {"openai": "max_completion_tokens"}
# Client headers that change what the upstream does and must reach it.
_FORWARDED = ("anthropic-version", "anthropic-beta")


class HTTPProvider:
    def __init__(self, config: ProviderConfig, base_url: str | None = None) -> None:
        self.name = config.name
        self.type: str = config.type
        self.dialects = config.dialects
        self._config = config
        self.first_byte_timeout_s = config.first_byte_timeout_s
        self.chat_output_field = _CHAT_OUTPUT_FIELD.get(config.type, "max_tokens")
        self._base = (base_url or config.url).rstrip("/")
        self._paths = _PATHS[config.type]
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        headers.update((k.lower(), v) for k, v in config.headers.items())
        key = config.api_key or ("capgate-demo" if config.type == "mock" else None)
        if key:
            if config.type in ("anthropic", "mock"):
                headers["x-api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        self._headers = headers
        self._pool: Pool | None = None
        self._heads: dict[tuple[Endpoint, tuple[str, ...]], bytes] = {}

    def _client(self) -> Pool:
        if self._pool is None:  # created lazily, inside the running loop
            self._pool = Pool(
                self.name,
                self._base,
                limit=self._config.max_connections,
                connect_s=self._config.connect_timeout_s,
                read_s=self._config.read_timeout_s,
                total_s=self._config.timeout_s,  # per request, the answer's body included
            )
        return self._pool

    def _head(self, pool: Pool, endpoint: Endpoint, forwarded: list[tuple[str, str]]) -> bytes:
        """The request head: the fixed part built once per endpoint and set of forwarded
        header names (the client's value wins over the config's), then the client's."""
        names = tuple(name for name, _ in forwarded)
        fixed = self._heads.get((endpoint, names))
        if fixed is None:
            headers = {k: v for k, v in self._headers.items() if k not in names}
            if endpoint.dialect == "anthropic" and (
                "anthropic-version" not in headers and "anthropic-version" not in names
            ):
                headers["anthropic-version"] = "2023-06-01"  # Anthropic requires a version
            fixed = pool.head(self._paths[endpoint], headers.items())
            self._heads[endpoint, names] = fixed
        return fixed + header_lines(forwarded) if forwarded else fixed

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint in self._paths

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> Answer:
        pool = self._client()
        forwarded = [
            (name, value) for name in _FORWARDED if (value := client_headers.get(name)) is not None
        ]
        return await pool.post(self._head(pool, endpoint, forwarded), body)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
