"""Azure OpenAI: OpenAI Chat Completions served by deployments.

A request for model M goes to `POST {endpoint}/openai/deployments/{D}/chat/completions
?api-version={api_version}` where D is `deployments[M]` (default: M itself, as when
deployments are named after their models), with the key in the `api-key` header. The body
is OpenAI's, sent as it is; the answer too (streams with `stream_options.include_usage`
end with the usage chunk, as OpenAI's). Azure's error bodies (`{"error": {"code",
"message"}}`, without OpenAI's `type`) are given OpenAI's full shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import orjson

from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint
from capgate.providers.converted import (
    ConvertedAnswer,
    error_message,
    json_body,
    openai_error,
    pool_for,
)
from capgate.providers.upstream import Pool


class AzureProvider:
    dialects = frozenset({"openai"})

    def __init__(self, config: ProviderConfig) -> None:
        assert config.api_key
        self.name = config.name
        self.type: str = config.type
        self.first_byte_timeout_s = config.first_byte_timeout_s
        # Azure's reasoning models refuse `max_tokens`; api-versions from 2024-09-01 (the
        # first with o1) take `max_completion_tokens` for every model.
        self.chat_output_field = (
            "max_completion_tokens" if config.api_version >= "2024-09-01" else "max_tokens"
        )
        self._config = config
        self._deployments = dict(config.deployments)
        self._query = "?api-version=" + quote(config.api_version, safe="")
        self._headers = [
            ("content-type", "application/json"),
            ("accept-encoding", "identity"),
            ("api-key", config.api_key),
            *((k.lower(), v) for k, v in config.headers.items()),
        ]
        self._pool: Pool | None = None

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is Endpoint.CHAT

    def path(self, body: bytes) -> str:
        model = json_body(body, f'provider "{self.name}"').get("model")
        if not isinstance(model, str) or not model:
            raise UpstreamFailed(f'provider "{self.name}": the request names no model', sent=False)
        deployment = self._deployments.get(model, model)
        return f"/openai/deployments/{quote(deployment, safe='')}/chat/completions{self._query}"

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> ConvertedAnswer:
        path = self.path(body)
        if self._pool is None:
            self._pool = pool_for(self._config, self._config.url)
        answer = await self._pool.post(self._pool.head(path, self._headers), body)
        if answer.status >= 400:
            status = answer.status

            def as_openai(data: bytes) -> bytes:
                return openai_error(status, error_message(data), _code(data))

            headers = {**answer.headers, "content-type": "application/json"}
            return ConvertedAnswer(answer, status, headers, whole=as_openai)
        return ConvertedAnswer(answer, answer.status, answer.headers)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _code(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error")
        return None if error.get("code") is None else str(error["code"])
    except (orjson.JSONDecodeError, AttributeError):
        return None
