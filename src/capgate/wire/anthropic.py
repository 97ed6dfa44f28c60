"""Anthropic Messages: usage from answers and streams. Pure."""

from __future__ import annotations

import re
from typing import Any

import orjson

from capgate.core.money import Usage
from capgate.wire.answer import answer_usage, tokens
from capgate.wire.sse import EventSplitter, data_of, event_spans

# The smallest framing a content_block_delta event can have; subtracting it from an
# event's size leaves an upper bound on the text it carries (see `partial_usage`).
_MIN_DELTA_FRAMING = len(
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":""}}\n\n'
)
# Matched at the start of a line: event lines are framing; text inside JSON cannot hold
# the raw newline before them.
_USAGE_EVENT = re.compile(rb"(?m)^event: message_(?:start|delta)\r?$")


def usage_of(usage: Any) -> Usage | None:
    """The usage object of an answer, or None when it cannot be read (not an object,
    input or output count missing, a count that is not a whole number >= 0)."""
    if not isinstance(usage, dict):
        return None
    cache_write_1h: int | None = 0
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        cache_write_1h = tokens(split.get("ephemeral_1h_input_tokens"), required=False)
    elif split is not None:
        return None
    input_tokens = tokens(usage.get("input_tokens"))
    output_tokens = tokens(usage.get("output_tokens"))
    cache_read = tokens(usage.get("cache_read_input_tokens"), required=False)
    cache_write = tokens(usage.get("cache_creation_input_tokens"), required=False)
    if (
        input_tokens is None
        or output_tokens is None
        or cache_read is None
        or cache_write is None
        or cache_write_1h is None
    ):
        return None
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=max(0, cache_write - cache_write_1h),
        cache_write_1h_tokens=cache_write_1h,
    )


def message_usage(body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model of a non-streamed Messages answer."""
    return answer_usage(body, usage_of)


class AnthropicStreamTap:
    """Reads usage from a Messages stream as its events pass through unchanged."""

    def __init__(self) -> None:
        self.splitter = EventSplitter()
        self._start: dict[str, Any] = {}
        self._delta: dict[str, Any] = {}
        self.model: str | None = None
        self.finished = False  # message_stop seen
        self._delta_bytes = 0
        self._delta_events = 0

    def feed(self, chunk: bytes) -> bytes:
        block = self.splitter.feed(chunk)
        if not block:
            return block
        # Framing is matched with the newline that ends its line: JSON strings cannot hold
        # a raw newline, so text the model writes can never pass for an event line.
        count = block.count(b"event: content_block_delta\n")
        if count:
            self._delta_events += count
            self._delta_bytes += len(block)
        for start, end in event_spans(block, _USAGE_EVENT):
            self._observe(block[start:end])
        if block.startswith(b"event: message_stop\n") or b"\nevent: message_stop\n" in block:
            self.finished = True
        return block

    def _observe(self, event: bytes) -> None:
        if b"message_start" not in event and b"message_delta" not in event:
            return
        try:
            data = orjson.loads(data_of(event))
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            self.model = message.get("model") if isinstance(message.get("model"), str) else None
            if isinstance(message.get("usage"), dict):
                self._start = dict(message["usage"])
        elif data.get("type") == "message_delta" and isinstance(data.get("usage"), dict):
            self._delta.update(data["usage"])  # cumulative counts: the newest wins

    def usage(self) -> Usage | None:
        """The final usage, or None when the stream carried none."""
        if not self._start and not self._delta:
            return None
        return usage_of({**self._start, **self._delta})

    def partial_usage(self) -> Usage:
        """For a stream cut short: input as reported at the start, and output bounded by
        the bytes of text relayed (a token is at least one byte)."""
        usage = self.usage() or Usage()
        text_bound = max(0, self._delta_bytes - self._delta_events * _MIN_DELTA_FRAMING)
        if self._delta:  # message_delta came: its count is exact
            return usage
        return Usage(
            usage.input_tokens,
            max(usage.output_tokens, text_bound),
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.cache_write_1h_tokens,
        )
