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
    """What the gateway asks of a provider. Everything that differs between provider
    types is a member here, so the HTTP layer never branches on `type` (a new type is a
    new adapter, not a new branch in `http/`)."""

    name: str
    type: str  # for people (logs, the admin API), never branched on outside its adapter
    dialects: frozenset[str]  # "anthropic" and/or "openai": the formats it is called in

    @property
    def first_byte_timeout_s(self) -> float:
        """How long the gateway waits for the answer's first byte before giving up on
        this attempt (a CLI's first byte may come only when its whole run ends)."""

    @property
    def chat_output_field(self) -> str:
        """The Chat Completions field that bounds the output when capgate sets one:
        `max_completion_tokens` for OpenAI (its reasoning models refuse `max_tokens`),
        `max_tokens` for the others."""

    def supports(self, endpoint: Endpoint) -> bool: ...
    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> UpstreamAnswer: ...
    async def close(self) -> None: ...
