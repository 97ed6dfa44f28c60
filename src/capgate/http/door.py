"""What the gateway routes need of a request, whichever server read it: aiohttp's
`web.Request`, or the fast path's own (`http/fastserve.py`). Both satisfy `GatewayRequest`;
a streamed answer is opened through `open_stream`, which knows both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, cast

from aiohttp import web
from multidict import CIMultiDictProxy


class GatewayRequest(Protocol):
    """The part of a request the gateway routes read."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def path(self) -> str: ...

    @property
    def method(self) -> str: ...

    async def read(self) -> bytes: ...


Handler = Callable[[GatewayRequest], Awaitable[web.StreamResponse]]


class AnswerStream(Protocol):
    """A streamed answer being written (aiohttp's `StreamResponse` is one). A write to a
    client that went away raises ConnectionResetError."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


class _Streaming(Protocol):
    async def open_stream(
        self, status: int, headers: Mapping[str, str]
    ) -> tuple[web.StreamResponse, AnswerStream]: ...


async def open_stream(
    request: GatewayRequest, status: int, headers: Mapping[str, str]
) -> tuple[web.StreamResponse, AnswerStream]:
    """Begin a streamed answer (chunked): the response for the handler to return, and
    where its bytes go."""
    if isinstance(request, web.BaseRequest):
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        return response, response
    return await cast(_Streaming, request).open_stream(status, headers)
