"""OpenAI Chat Completions: usage from answers and streams. Pure."""

from __future__ import annotations

import re
from typing import Any

import orjson

from capgate.core.money import Usage
from capgate.wire.answer import answer_usage, tokens
from capgate.wire.sse import EventSplitter, data_of, event_spans

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_MIN_CHUNK_FRAMING = len(b'data: {"choices":[{"delta":{"content":""}}]}\n\n')


def usage_of(usage: Any) -> Usage | None:
    """Chat Completions or Responses usage, or None when it cannot be read (not an
    object, input or output count missing, a count that is not a whole number >= 0)."""
    if not isinstance(usage, dict):
        return None
    prompt = tokens(usage.get("prompt_tokens", usage.get("input_tokens")))
    output = tokens(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details")
    if details is None:
        details = usage.get("input_tokens_details")  # Responses
    cached: int | None = 0
    if isinstance(details, dict):
        cached = tokens(details.get("cached_tokens"), required=False)
    elif details is not None:
        return None
    if prompt is None or output is None or cached is None:
        return None
    cached = min(cached, prompt)
    return Usage(input_tokens=prompt - cached, output_tokens=output, cache_read_tokens=cached)


def completion_usage(body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model of a non-streamed Chat Completions answer."""
    return answer_usage(body, usage_of)


class OpenAIStreamTap:
    """Reads usage from a Chat Completions stream. capgate asks upstream for the usage
    chunk (`stream_options.include_usage`); when the client did not ask for it,
    `hide_usage_chunk` drops that one extra chunk so the client sees what it expects."""

    def __init__(self, hide_usage_chunk: bool) -> None:
        self.splitter = EventSplitter()
        self.hide_usage_chunk = hide_usage_chunk
        self._usage: Usage | None = None
        self.model: str | None = None
        self.finished = False  # [DONE] seen
        self._bytes = 0
        self._chunks = 0

    def feed(self, chunk: bytes) -> bytes:
        block = self.splitter.feed(chunk)
        if not block:
            return block
        self._bytes += len(block)
        self._chunks += block.count(b"\n\n")  # one per event; JSON holds no raw newline
        if b'"usage"' in block:
            block = self._take_usage(block)
        if block.startswith(b"data: [DONE]\n") or b"\ndata: [DONE]\n" in block:
            self.finished = True
        return block

    def _take_usage(self, block: bytes) -> bytes:
        """Read the usage chunk; drop it from the block when the client did not ask."""
        for start, end in event_spans(block, _USAGE_OBJECT):
            try:
                data = orjson.loads(data_of(block[start:end]))
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                self._usage = usage_of(data["usage"])
                if isinstance(data.get("model"), str):
                    self.model = data["model"]
                if self.hide_usage_chunk and not data.get("choices"):
                    return block[:start] + block[end:]
        return block

    def usage(self) -> Usage | None:
        return self._usage

    def partial_usage(self, input_bound: int) -> Usage:
        """For a stream cut short before its usage chunk: the input bound (upstream did
        read it all) and output bounded by the bytes of chunks relayed."""
        if self._usage is not None:
            return self._usage
        text_bound = max(0, self._bytes - self._chunks * _MIN_CHUNK_FRAMING)
        return Usage(input_tokens=input_bound, output_tokens=text_bound)


_RESPONSE_END = re.compile(rb"(?m)^event: response\.(?:completed|incomplete|failed)\r?$")


class ResponsesStreamTap:
    """Reads usage from an OpenAI Responses stream: the final `response.completed` (or
    `response.incomplete` / `response.failed`) event carries the whole response with its
    usage. Events pass through unchanged."""

    def __init__(self) -> None:
        self.splitter = EventSplitter()
        self._usage: Usage | None = None
        self.model: str | None = None
        self.finished = False
        self._bytes = 0
        self._events = 0

    def feed(self, chunk: bytes) -> bytes:
        block = self.splitter.feed(chunk)
        if not block:
            return block
        self._bytes += len(block)
        self._events += block.count(b"\n\n")
        for start, end in event_spans(block, _RESPONSE_END):
            self.finished = True
            try:
                data = orjson.loads(data_of(block[start:end]))
            except orjson.JSONDecodeError:
                continue
            response = data.get("response") if isinstance(data, dict) else None
            if isinstance(response, dict):
                self._usage = usage_of(response.get("usage"))
                if isinstance(response.get("model"), str):
                    self.model = response["model"]
        return block

    def usage(self) -> Usage | None:
        return self._usage

    def partial_usage(self, input_bound: int) -> Usage:
        if self._usage is not None:
            return self._usage
        text_bound = max(0, self._bytes - self._events * _MIN_CHUNK_FRAMING)
        return Usage(input_tokens=input_bound, output_tokens=text_bound)
