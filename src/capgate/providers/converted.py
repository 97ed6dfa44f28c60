"""What the cloud providers share: an upstream answer seen through a conversion (Bedrock's
event stream becomes Anthropic SSE; a cloud's error body becomes the dialect's), and
the error bodies of each dialect.

The gateway then treats a Bedrock, Vertex AI or Azure answer as it treats Anthropic's or
OpenAI's: the status, the headers it looks at (`content-type`) and the body in the
dialect the provider declares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers.upstream import Answer, Pool

# Error types of each dialect by status (the statuses both APIs document).
_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_OPENAI_KINDS = {429: "rate_limit_exceeded", 401: "invalid_request_error"}


def anthropic_error(status: int, message: str) -> bytes:
    kind = _ANTHROPIC_KINDS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def openai_error(status: int, message: str, code: Any = None) -> bytes:
    kind = _OPENAI_KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def is_anthropic_error(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(data, dict)
        and data.get("type") == "error"
        and isinstance(data.get("error"), dict)
    )


def error_message(body: bytes) -> str:
    """The message in a cloud's error body: `{"message"}` (AWS), `{"error": {"message"}}`
    (Google, Azure, Anthropic), or the text itself, shortened."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:2000]
        for name in ("message", "Message"):
            if isinstance(data.get(name), str):
                return str(data[name])[:2000]
    return body[:500].decode("utf-8", "replace")


class StreamConverter(Protocol):
    def feed(self, data: bytes) -> bytes:
        """The converted bytes for these (maybe none yet); UpstreamFailed when broken."""

    def finish(self) -> bytes: ...


class ConvertedAnswer:
    """An upstream answer with its body converted: `whole` for a body read at once,
    `stream` for one relayed as it arrives. Status and headers as given."""

    cost_nano = None  # usage is priced by the table, as for the HTTP providers

    def __init__(
        self,
        inner: Answer,
        status: int,
        headers: dict[str, str],
        whole: Callable[[bytes], bytes] | None = None,
        stream: StreamConverter | None = None,
    ) -> None:
        self._inner = inner
        self.status = status
        self.headers = headers
        self._whole = whole
        self._stream = stream

    @property
    def complete(self) -> bool:
        return self._inner.complete

    async def read(self) -> bytes:
        data = await self._inner.read()
        if self._stream is not None:
            return self._stream.feed(data) + self._stream.finish()
        return self._whole(data) if self._whole is not None else data

    async def chunks(self) -> AsyncIterator[bytes]:
        stream = self._stream
        async for data in self._inner.chunks():
            out = stream.feed(data) if stream is not None else data
            if out:
                yield out
        if stream is not None:
            rest = stream.finish()
            if rest:
                yield rest

    def close(self) -> None:
        self._inner.close()


def pool_for(config: ProviderConfig, base_url: str, name: str | None = None) -> Pool:
    return Pool(
        name or config.name,
        base_url,
        limit=config.max_connections,
        connect_s=config.connect_timeout_s,
        read_s=config.read_timeout_s,
        total_s=config.timeout_s,
    )


def json_body(body: bytes, who: str) -> dict[str, Any]:
    """The request body as a JSON object (the gateway checked it; a translation made it)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamFailed(f"{who}: the request body is not a JSON object", sent=False)
    return data
