"""What a routing rule can look at of one request, from what capgate already has: the
parsed body (parsed once, by the gateway), its size, the key and its scopes, the headers
and the clock. Pure. The numbers are computed when the signals are made; whether the
request carries tools, images or thinking is looked up only when a rule asks (the
images look walks the messages), at most once each."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_MAX_DEPTH = 8


class RequestSignals:
    """One request's facts for `capgate.rules.language.Signals`."""

    def __init__(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        model: str,
        key: str,
        user: str | None,
        team: str | None,
        org: str | None,
        input_bytes: int,
        input_tokens: int,
        max_tokens: int,
        stream: bool,
        now: float,
    ) -> None:
        self._body = body
        self._headers = headers  # aiohttp's are case-insensitive; tests pass lowercase names
        self.model = model
        self.key = key
        self.user = user
        self.team = team
        self.org = org
        self.input_bytes = input_bytes
        self.input_tokens = input_tokens  # capgate's worst-case bound (core.estimate)
        self.max_tokens = max_tokens  # as asked, or the default capgate sets
        self.stream = stream
        self.now = now

    def header(self, name: str) -> str | None:
        return self._headers.get(name)

    @cached_property
    def tools(self) -> bool:
        """Tools offered: Anthropic and OpenAI `tools`, OpenAI's older `functions`."""
        body = self._body
        return bool(body.get("tools")) or bool(body.get("functions"))

    @cached_property
    def thinking(self) -> bool:
        """Extended thinking (Anthropic `thinking` not disabled) or reasoning (OpenAI
        `reasoning_effort` / Responses `reasoning.effort`, not "none")."""
        body = self._body
        thinking = body.get("thinking")
        if isinstance(thinking, Mapping) and thinking.get("type") not in (None, "disabled"):
            return True
        effort = body.get("reasoning_effort")
        reasoning = body.get("reasoning")
        if effort is None and isinstance(reasoning, Mapping):
            effort = reasoning.get("effort")
        return isinstance(effort, str) and effort != "none"

    @cached_property
    def images(self) -> bool:
        """An image block anywhere in the messages (Messages, Chat, Responses input)."""
        body = self._body
        messages = body.get("messages")
        if messages is None:
            messages = body.get("input")
        return _has_image(messages, 0)


def _has_image(node: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(node, list):
        return any(_has_image(item, depth + 1) for item in node)
    if isinstance(node, dict):
        if node.get("type") in _IMAGE_TYPES:
            return True
        content = node.get("content")
        return isinstance(content, list) and _has_image(content, depth + 1)
    return False
