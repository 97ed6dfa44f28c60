"""Bedrock's `converse-stream` (AWS event stream) -> Anthropic SSE, event by event. Sans-I/O.

Converse sends `messageStart`, then per block `contentBlockStart` (tool use only: text
blocks just begin with a delta), `contentBlockDelta` (`text`, `toolUse.input` as JSON
text, `reasoningContent`), `contentBlockStop`, then `messageStop` (the stop reason) and
last `metadata` (the usage). Anthropic's stream carries the input tokens in
`message_start`, which Converse cannot know yet: as capgate's translation of OpenAI
streams does, `message_start` says 0 and `message_delta` carries the whole usage, which
the usage tap and the SDKs read as the final count.

An exception inside the stream (`throttlingException`, `modelStreamErrorException`, ...)
becomes an Anthropic `error` event; a broken frame raises UpstreamFailed.
"""

from __future__ import annotations

from typing import Any

import orjson

from capgate.errors import UpstreamFailed
from capgate.providers.converse import STOP_REASONS, converse_usage, message_id
from capgate.providers.eventstream import EventStreamDecoder, EventStreamError, Message

# Exceptions inside a stream (`:exception-type`) -> the Anthropic error type.
STREAM_ERRORS = {
    "throttlingException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
    "validationException": "invalid_request_error",
}


def sse(data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (str(data["type"]).encode(), orjson.dumps(data))


def stream_error(message: Message) -> bytes:
    """An event-stream exception message as an Anthropic `error` event."""
    name = str(message.headers.get(":exception-type") or message.headers.get(":error-code"))
    try:
        text = orjson.loads(message.payload).get("message", "")
    except (orjson.JSONDecodeError, AttributeError):
        text = message.payload[:300].decode("utf-8", "replace")
    kind = STREAM_ERRORS.get(name, "api_error")
    return sse({"type": "error", "error": {"type": kind, "message": f"{name}: {text}"}})


class ConverseToSSE:
    """One Converse stream -> one Anthropic SSE stream (`StreamConverter`)."""

    def __init__(self, model: str, request_id: str | None = None) -> None:
        self._decoder = EventStreamDecoder()
        self._model = model
        self._id = message_id(request_id)
        self._started = False
        self._blocks: dict[int, int] = {}  # Converse index -> ours
        self._open: set[int] = set()
        self._stop: str | None = None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as exc:
            raise UpstreamFailed(f"Bedrock sent a broken stream: {exc}") from None
        out: list[bytes] = []
        for message in messages:
            kind = message.headers.get(":message-type")
            if kind in ("exception", "error"):
                out.append(stream_error(message))
                self._done = True
            elif kind == "event" and not self._done:
                try:
                    payload = orjson.loads(message.payload)
                except orjson.JSONDecodeError:
                    raise UpstreamFailed("Bedrock sent an unreadable Converse event") from None
                if isinstance(payload, dict):
                    out += self._event(str(message.headers.get(":event-type")), payload)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._decoder.pending:
            raise UpstreamFailed("Bedrock's stream ended inside a message")
        return b""  # no `metadata`: no usage, so the stream reads as cut short

    def _event(self, name: str, data: dict[str, Any]) -> list[bytes]:
        out = self._start() if not self._started else []
        if name == "contentBlockStart":
            start = data.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                block = {
                    "type": "tool_use",
                    "id": use.get("toolUseId", ""),
                    "name": use.get("name", ""),
                }
                out += self._open_block(data.get("contentBlockIndex"), {**block, "input": {}})
        elif name == "contentBlockDelta":
            out += self._delta(data.get("contentBlockIndex"), data.get("delta"))
        elif name == "contentBlockStop":
            out += self._close_block(data.get("contentBlockIndex"))
        elif name == "messageStop":
            reason = data.get("stopReason")
            self._stop = (
                STOP_REASONS.get(reason, "end_turn") if isinstance(reason, str) else "end_turn"
            )
        elif name == "metadata":
            out += self._end(data.get("usage"))
        return out

    def _start(self) -> list[bytes]:
        self._started = True
        message: dict[str, Any] = {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip
        return [sse({"type": "message_start", "message": message})]

    def _open_block(self, index: Any, block: dict[str, Any]) -> list[bytes]:
        ours = len(self._blocks)
        self._blocks[index] = ours
        self._open.add(ours)
        return [sse({"type": "content_block_start", "index": ours, "content_block": block})]

    def _delta(self, index: Any, delta: Any) -> list[bytes]:
        if not isinstance(delta, dict):
            return []
        out: list[bytes] = []
        if isinstance(delta.get("text"), str):
            if index not in self._blocks:
                out += self._open_block(index, {"type": "text", "text": ""})
            piece = {"type": "text_delta", "text": delta["text"]}
        elif isinstance(delta.get("toolUse"), dict):
            if index not in self._blocks:  # a tool block always has its start first
                return []
            piece = {
                "type": "input_json_delta",
                "partial_json": str(delta["toolUse"].get("input", "")),
            }
        elif isinstance(delta.get("reasoningContent"), dict):
            reasoning = delta["reasoningContent"]
            if index not in self._blocks:
                out += self._open_block(
                    index, {"type": "thinking", "thinking": "", "signature": ""}
                )
            if isinstance(reasoning.get("signature"), str):
                piece = {"type": "signature_delta", "signature": reasoning["signature"]}
            else:
                piece = {"type": "thinking_delta", "thinking": str(reasoning.get("text", ""))}
        else:
            return []
        event = {"type": "content_block_delta", "index": self._blocks[index], "delta": piece}
        return [*out, sse(event)]

    def _close_block(self, index: Any) -> list[bytes]:
        ours = self._blocks.get(index)
        if ours is None or ours not in self._open:
            return []
        self._open.discard(ours)
        return [sse({"type": "content_block_stop", "index": ours})]

    def _end(self, usage: Any) -> list[bytes]:
        out = [sse({"type": "content_block_stop", "index": i}) for i in sorted(self._open)]
        self._open.clear()
        delta = {"stop_reason": self._stop or "end_turn", "stop_sequence": None}
        out.append(sse({"type": "message_delta", "delta": delta, "usage": converse_usage(usage)}))
        out.append(sse({"type": "message_stop"}))
        self._done = True
        return out
