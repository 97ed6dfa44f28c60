"""The provider port: send a request body to an upstream and hand back its answer.

An adapter owns the upstream's address, credentials and wire details; the gateway only
sees a status, a few headers and the body as bytes arriving. Transport failures become
`UpstreamFailed` here, at the edge.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from typing import Protocol


class Endpoint(enum.Enum):
    MESSAGES = "messages"  # Anthropic Messages
    COUNT_TOKENS = "count_tokens"  # Anthropic token counting (free, no budget)
    CHAT = "chat"  # OpenAI Chat Completions
    RESPONSES = "responses"  # OpenAI Responses (what Codex speaks)

    @property
    def dialect(self) -> str:
        return "anthropic" if self in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS) else "openai"


class UpstreamAnswer(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in whatever pieces the network delivers."""

    async def read(self) -> bytes: ...
    def close(self) -> None:
        """Stop reading and drop the connection (cancels the upstream generation)."""

    @property
    def cost_nano(self) -> int | None:
        """A cost the provider reported itself, in nano-dollars, once the answer has been
        read (the CLI providers: Claude Code prints its cost); None: price the usage."""


class Provider(Protocol):
    name: str
    type: str
    dialects: frozenset[str]

    def supports(self, endpoint: Endpoint) -> bool: ...
    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> UpstreamAnswer: ...
    async def close(self) -> None: ...
