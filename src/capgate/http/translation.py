"""Glue between the gateway and the pure translators of `capgate.wire.translate`: which
direction a route needs, for request bodies, answers, streams and error bodies.

Used only when a route sends a request to a provider of the other format; everything
else passes through untouched.
"""

from __future__ import annotations

from typing import Any

import orjson

from capgate.errors import UpstreamFailed
from capgate.providers.base import Endpoint
from capgate.wire import translate

Translator = translate.ChatToMessagesStream | translate.MessagesToChatStream


class Translation:
    """One direction: the client speaks `client`, the provider `upstream`."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: Endpoint, upstream: Endpoint) -> None:
        self.client = client
        self.upstream = upstream

    def request(self, body: dict[str, Any], chat_output_field: str) -> dict[str, Any]:
        """The body in the upstream's format; `chat_output_field` is the provider's
        (`Provider.chat_output_field`), used when it is called in Chat Completions."""
        if self.upstream is Endpoint.CHAT:
            return translate.messages_to_chat(body, max_field=chat_output_field)
        return translate.chat_to_messages(body)

    def answer(self, data: bytes) -> bytes:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailed("the provider answered something that is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamFailed("the provider answered JSON that is not an object")
        if self.upstream is Endpoint.CHAT:
            return orjson.dumps(translate.chat_completion_to_message(parsed))
        return orjson.dumps(translate.message_to_chat_completion(parsed))

    def error(self, status: int, data: bytes) -> bytes:
        if self.client is Endpoint.MESSAGES:
            return translate.error_to_anthropic(status, data)
        return translate.error_to_openai(status, data)

    def stream(self, model: str, include_usage: bool) -> Translator:
        if self.upstream is Endpoint.CHAT:
            return translate.ChatToMessagesStream(model)
        return translate.MessagesToChatStream(model, include_usage)
