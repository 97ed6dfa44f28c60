"""An in-memory provider for tests of routing and the call path (no network): each call
is answered by a function of the endpoint and body, as httpx's `MockTransport` answers
from a handler. An answer may arrive in pieces, stall before its first byte, or break
off midway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from capgate.errors import UpstreamFailed
from capgate.providers.base import Endpoint


@dataclass
class FakeAnswer:
    """What the fake provider sends: `pieces` in order; an exception among them is
    raised there (a stream cut short); `delay_s` before the first piece."""

    status: int = 200
    pieces: Sequence[bytes | BaseException] = ()
    content_type: str = "application/json"
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    cost_nano: int | None = None
    closed: bool = False

    @property
    def headers(self) -> Mapping[str, str]:
        return {"content-type": self.content_type, **self.extra_headers}

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for piece in self.pieces:
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    def close(self) -> None:
        self.closed = True


Handler = Callable[[Endpoint, bytes], Awaitable[FakeAnswer] | FakeAnswer]


@dataclass
class Sent:
    endpoint: Endpoint
    body: bytes


class FakeProvider:
    """A provider whose answers come from `handler`; it keeps what it was sent."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        dialects: frozenset[str] = frozenset({"anthropic"}),
        *,
        type: str = "fake",
        first_byte_timeout_s: float = 120.0,
        chat_output_field: str = "max_tokens",
    ) -> None:
        self.name = name
        self.type = type
        self.dialects = dialects
        self.first_byte_timeout_s = first_byte_timeout_s
        self.chat_output_field = chat_output_field
        self.sent: list[Sent] = []
        self._handler = handler

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint.dialect in self.dialects

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> FakeAnswer:
        self.sent.append(Sent(endpoint, body))
        answer = self._handler(endpoint, body)
        if not isinstance(answer, FakeAnswer):
            answer = await answer
        if answer.status < 0:  # a connection that could not be made
            raise UpstreamFailed(f'provider "{self.name}" unreachable', sent=False)
        return answer

    async def close(self) -> None:
        pass
