"""Streams between the Anthropic Messages and OpenAI Chat Completions formats, event by
event. Pure: each class is fed blocks of complete SSE events (as `EventSplitter.feed`
returns them) and returns the translated events, so how the bytes were cut never changes
the output. Events that cannot be read are skipped, as a client would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from capgate.wire.sse import data_of, events
from capgate.wire.translate_answer import (
    anthropic_usage,
    call_id,
    completion_id,
    finish_reason,
    message_id,
    now,
    openai_usage,
    stop_reason,
)
from capgate.wire.translate_errors import (
    anthropic_error,
    anthropic_kind_of,
    openai_error,
    stream_error_message,
)
from capgate.wire.translate_fields import JSON, tool_id

_DONE = b"data: [DONE]\n\n"


def _anthropic_event(data: JSON) -> bytes:
    # orjson writes no raw newline, so the data always fits on one line.
    name: str = data["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _payloads(block: bytes) -> list[tuple[bytes, bytes]]:
    """(event name, data) of each event in a block; comments and empty events left out."""
    out = []
    for event in events(block):
        payload = data_of(event)
        if payload:
            name = b""
            for line in event.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip()
            out.append((name, payload))
    return out


def _object(payload: bytes) -> JSON | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _index(data: JSON) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else -1


@dataclass(slots=True)
class _ToolCall:
    """An OpenAI tool call as it streams in. Its block opens once the name is known."""

    id: str
    name: str | None = None
    block: int | None = None  # the Anthropic content block index, once open
    pending: str = ""  # argument fragments that came before the name


class ChatToMessagesStream:
    """An OpenAI chat SSE stream from upstream -> Anthropic SSE for the client.

    OpenAI sends usage in a chunk after the one with finish_reason, so message_delta and
    message_stop wait for that chunk (or [DONE], or `finish`) to carry the final usage.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._closed = False  # message_stop or an error was sent: nothing more follows
        self._next_block = 0
        self._open: int | None = None  # the index of the open block
        self._text_open = False
        self._tools: dict[int, _ToolCall] = {}  # by OpenAI tool_call index
        self._finish: str | None = None
        self._usage: JSON | None = None

    def feed(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for _, payload in _payloads(block):
            if self._closed:
                break
            if payload == b"[DONE]":
                out += self._close()
                continue
            chunk = _object(payload)
            if chunk is not None:
                out += self._chunk(chunk)
        return b"".join(out)

    def finish(self) -> bytes:
        """Closing events still owed when upstream ended after finish_reason without
        [DONE]. A stream cut before its finish_reason gets none, so the client sees it
        was cut."""
        if self._closed or self._finish is None:
            return b""
        return b"".join(self._close())

    def _chunk(self, chunk: JSON) -> list[bytes]:
        if chunk.get("error"):
            self._closed = True
            error = chunk["error"]
            data = anthropic_error(anthropic_kind_of(error), stream_error_message(error))
            return [_anthropic_event(data)]
        out = self._start(chunk)
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._delta(delta)
            if isinstance(choice.get("finish_reason"), str):
                self._finish = choice["finish_reason"]
                out += self._stop_block()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
            if self._finish is not None:
                out += self._close()
        return out

    def _start(self, chunk: JSON) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: JSON = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # OpenAI reports usage only at the end; message_delta carries all of it.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [_anthropic_event({"type": "message_start", "message": message})]

    def _delta(self, delta: JSON) -> list[bytes]:
        out: list[bytes] = []
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                out += self._text(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out += self._tool_delta(call)
        return out

    def _text(self, text: str) -> list[bytes]:
        out = []
        if not self._text_open:
            out += self._open_block({"type": "text", "text": ""})
            self._text_open = True
        delta = {"type": "text_delta", "text": text}
        out.append(self._block_delta(self._open, delta))
        return out

    def _tool_delta(self, call: JSON) -> list[bytes]:
        index = call.get("index", 0)
        index = index if isinstance(index, int) else 0
        tool = self._tools.get(index)
        if tool is None:
            tool = self._tools[index] = _ToolCall(tool_id(call_id(call.get("id"), "toolu_")))
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        out: list[bytes] = []
        if tool.name is None and isinstance(function.get("name"), str):
            tool.name = function["name"]
            out += self._open_tool(tool)
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            if tool.block is None:
                tool.pending += fragment
            else:
                # A fragment for an earlier call (never sent by OpenAI, which finishes one
                # call before the next) still goes to its own block, which SDKs accept.
                out.append(self._json_delta(tool.block, fragment))
        return out

    def _open_tool(self, tool: _ToolCall) -> list[bytes]:
        block = {"type": "tool_use", "id": tool.id, "name": tool.name or "", "input": {}}
        out = self._open_block(block)
        tool.block = self._open
        if tool.pending:
            out.append(self._json_delta(self._open, tool.pending))
            tool.pending = ""
        return out

    def _json_delta(self, index: int | None, fragment: str) -> bytes:
        return self._block_delta(index, {"type": "input_json_delta", "partial_json": fragment})

    def _block_delta(self, index: int | None, delta: JSON) -> bytes:
        return _anthropic_event({"type": "content_block_delta", "index": index, "delta": delta})

    def _open_block(self, block: JSON) -> list[bytes]:
        out = self._stop_block()
        self._open = self._next_block
        self._next_block += 1
        start = {"type": "content_block_start", "index": self._open, "content_block": block}
        return [*out, _anthropic_event(start)]

    def _stop_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open, self._text_open = self._open, None, False
        return [_anthropic_event({"type": "content_block_stop", "index": index})]

    def _close(self) -> list[bytes]:
        out = self._start({})
        for tool in self._tools.values():
            if tool.block is None:  # arguments came but never a name
                out += self._open_tool(tool)
        out += self._stop_block()
        usage = anthropic_usage(self._usage) or {"output_tokens": 0}
        reason = stop_reason(self._finish, called_tools=bool(self._tools))
        delta = {"stop_reason": reason, "stop_sequence": None}
        out.append(_anthropic_event({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_anthropic_event({"type": "message_stop"}))
        self._closed = True
        return out


class MessagesToChatStream:
    """Anthropic SSE from upstream -> an OpenAI chat SSE stream ending with [DONE]. The
    usage chunk is sent only when the client asked for it (`include_usage`)."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = completion_id(None)
        self._created = now()
        self._started = False
        self._finished = False  # the finish_reason chunk was sent
        self._closed = False  # [DONE] or an error was sent: nothing more follows
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_call index
        self._usage: JSON = {}

    def feed(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for name, payload in _payloads(block):
            if self._closed:
                break
            data = _object(payload)
            if data is not None:
                kind = data.get("type")
                out += self._event(kind if isinstance(kind, str) else name.decode(), data)
        return b"".join(out)

    def finish(self) -> bytes:
        """The usage chunk and [DONE] when upstream ended after message_delta without
        message_stop. A stream cut earlier gets none, so the client sees it was cut."""
        if self._closed or not self._finished:
            return b""
        return b"".join(self._close())

    def _event(self, kind: str, data: JSON) -> list[bytes]:
        if kind == "error":
            self._closed = True
            error = data.get("error")
            given = error.get("type") if isinstance(error, dict) else None
            error_kind = given if isinstance(given, str) and given else "api_error"
            body = openai_error(error_kind, stream_error_message(error))
            return [b"data: " + orjson.dumps(body) + b"\n\n"]
        if kind == "message_start":
            return self._start(data.get("message"))
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            return self._close()
        return []  # ping, content_block_stop, and events a later API version may add

    def _start(self, message: Any) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        if isinstance(message, dict):
            self._id = completion_id(message.get("id"))
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: JSON) -> list[bytes]:
        out = self._start(None)
        block = data.get("content_block")
        if not isinstance(block, dict):
            return out
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            out.append(self._chunk({"content": block["text"]}))
        elif block.get("type") == "tool_use":
            index = len(self._tools)
            self._tools[_index(data)] = index
            name = block.get("name")
            call = {
                "index": index,
                "id": call_id(block.get("id"), "call_"),
                "type": "function",
                "function": {"name": name if isinstance(name, str) else "", "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))
            given = block.get("input")
            if isinstance(given, dict) and given:  # whole input up front, not streamed
                out.append(self._arguments(index, orjson.dumps(given).decode()))
        return out

    def _block_delta(self, data: JSON) -> list[bytes]:
        out = self._start(None)
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return out
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            out.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta" and _index(data) in self._tools:
            fragment = delta.get("partial_json")
            if isinstance(fragment, str) and fragment:
                out.append(self._arguments(self._tools[_index(data)], fragment))
        return out  # thinking, signature and citation deltas have no counterpart

    def _arguments(self, index: int, fragment: str) -> bytes:
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def _message_delta(self, data: JSON) -> list[bytes]:
        out = self._start(None)
        if isinstance(data.get("usage"), dict):
            self._usage.update(data["usage"])  # cumulative counts: the newest wins
        if self._finished:
            return out
        self._finished = True
        delta = data.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        out.append(self._chunk({}, finish_reason(stop)))
        return out

    def _close(self) -> list[bytes]:
        out = self._start(None)
        if not self._finished:
            self._finished = True
            out.append(self._chunk({}, "stop"))
        if self._include_usage and self._usage:
            usage = {**self._envelope(), "choices": [], "usage": openai_usage(self._usage)}
            out.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        out.append(_DONE)
        self._closed = True
        return out

    def _envelope(self) -> JSON:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: JSON, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({**self._envelope(), "choices": [choice]}) + b"\n\n"
