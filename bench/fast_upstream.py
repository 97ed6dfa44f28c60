#!/usr/bin/env python3
"""A deliberately fast mock LLM upstream for benchmarking capgate (no framework).

Raw asyncio.Protocol HTTP/1.1 server (uvloop when importable) with keep-alive and
pipelining. Every answer is precomputed bytes; the only per-request work is finding the
end of the request, a bytes search for `"stream": true` (and `"include_usage": true`),
and one transport.write.

  POST /v1/chat/completions   OpenAI Chat Completions, 32 output tokens, with usage.
                              "stream": true -> SSE (Transfer-Encoding: chunked): one
                              chat.completion.chunk per token, a final chunk with
                              finish_reason, a usage chunk ("choices": []) only when the
                              body has "include_usage": true, then `data: [DONE]`.
  POST /v1/messages           Anthropic Messages, 32 output tokens, with usage.
                              "stream": true -> message_start (usage.input_tokens),
                              content_block_start, 32 content_block_delta,
                              content_block_stop, message_delta (usage.output_tokens 32),
                              message_stop.

Each SSE event is its own HTTP chunk, but the whole stream is written at once (the
fastest upstream possible: it measures the proxy, not the model).

    python bench/fast_upstream.py --port 0      # prints `listening on 127.0.0.1:PORT`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys

OUTPUT_TOKENS = 32
INPUT_TOKENS = 12
MAX_REQUEST = 64 * 1024 * 1024
MAX_HEAD = 64 * 1024

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE_TRUE = re.compile(rb'"include_usage"\s*:\s*true')
_TOKENS = [f" tok{i}" for i in range(OUTPUT_TOKENS)]
_TEXT = "".join(_TOKENS)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _whole(body: bytes, status: str = "200 OK", ctype: bytes = b"application/json") -> bytes:
    head = (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: " + ctype + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n"
    )
    return head + body


def _chunked_sse(events: list[bytes]) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
    )
    parts = [head]
    for event in events:
        parts.append(b"%x\r\n" % len(event) + event + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _sse(data: object, event: str | None = None) -> bytes:
    line = b"data: " + (data if isinstance(data, bytes) else _dumps(data)) + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + line) if event else line


# --- OpenAI -------------------------------------------------------------------------------

_OAI_USAGE = {
    "prompt_tokens": INPUT_TOKENS,
    "completion_tokens": OUTPUT_TOKENS,
    "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
_OAI_HEAD = {
    "id": "chatcmpl-fastupstream",
    "created": 1767225600,
    "model": "gpt-5-mini",
    "service_tier": "default",
    "system_fingerprint": "fp_fast",
}


def _openai_whole() -> bytes:
    body = {
        **_OAI_HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _OAI_USAGE,
    }
    return _whole(_dumps(body))


def _openai_stream(include_usage: bool) -> bytes:
    head = {**_OAI_HEAD, "object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    # One chunk per token; the first token also carries the role (as OpenAI's first chunk does).
    events = [chunk({"role": "assistant", "content": _TOKENS[0]})]
    events += [chunk({"content": t}) for t in _TOKENS[1:]]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_sse({**head, "choices": [], "usage": _OAI_USAGE}))
    events.append(b"data: [DONE]\n\n")
    return _chunked_sse(events)


# --- Anthropic ----------------------------------------------------------------------------

_ANT_MESSAGE = {
    "id": "msg_fastupstream",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "stop_sequence": None,
}


def _anthropic_whole() -> bytes:
    body = {
        **_ANT_MESSAGE,
        "content": [{"type": "text", "text": _TEXT}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    return _whole(_dumps(body))


def _anthropic_stream() -> bytes:
    start = {
        **_ANT_MESSAGE,
        "content": [],
        "stop_reason": None,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    events = [
        _sse({"type": "message_start", "message": start}, "message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
    ]
    for tok in _TOKENS:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": tok},
        }
        events.append(_sse(delta, "content_block_delta"))
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    events.append(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            },
            "message_delta",
        )
    )
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return _chunked_sse(events)


OPENAI_WHOLE = _openai_whole()
OPENAI_STREAM = _openai_stream(include_usage=False)
OPENAI_STREAM_USAGE = _openai_stream(include_usage=True)
ANTHROPIC_WHOLE = _anthropic_whole()
ANTHROPIC_STREAM = _anthropic_stream()
NOT_FOUND = _whole(b'{"error":{"type":"not_found","message":"no such route"}}', "404 Not Found")
BAD_REQUEST = _whole(b'{"error":{"type":"bad_request","message":"bad request"}}', "400 Bad Request")
TOO_LARGE = _whole(b'{"error":{"type":"too_large","message":"too large"}}', "413 Payload Too Large")


def answer(path: bytes, body: bytes) -> bytes:
    if path.startswith(b"/v1/chat/completions"):
        if _STREAM_TRUE.search(body):
            return OPENAI_STREAM_USAGE if _INCLUDE_USAGE_TRUE.search(body) else OPENAI_STREAM
        return OPENAI_WHOLE
    if path.startswith(b"/v1/messages"):
        return ANTHROPIC_STREAM if _STREAM_TRUE.search(body) else ANTHROPIC_WHOLE
    return NOT_FOUND


# --- HTTP/1.1 -----------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, response: bytes) -> None:
        self.response = response


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at buf[start:]: (body, end) or None if incomplete."""
    parts = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise _Bad(BAD_REQUEST) from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # no trailers expected; skip any
            if end < 0:
                return None
            return b"".join(parts), end + 4
        if eol + 2 + size + 2 > len(buf):
            return None
        parts.append(bytes(buf[eol + 2 : eol + 2 + size]))
        pos = eol + 2 + size + 2


class HTTPProtocol(asyncio.Protocol):
    __slots__ = ("buf", "paused", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:  # the client reads slowly: stop reading its requests
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        close = False
        try:
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    if len(buf) > MAX_HEAD:
                        raise _Bad(BAD_REQUEST)
                    break
                head = bytes(buf[:head_end])
                line_end = head.find(b"\r\n")
                request_line = head if line_end < 0 else head[:line_end]
                parts = request_line.split(b" ")
                if len(parts) != 3:
                    raise _Bad(BAD_REQUEST)
                _method, path, version = parts
                lower = head.lower()
                length = 0
                chunked = False
                keep_alive = version == b"HTTP/1.1"
                for header in lower.split(b"\r\n")[1:]:
                    name, _, value = header.partition(b":")
                    value = value.strip()
                    if name == b"content-length":
                        try:
                            length = int(value)
                        except ValueError:
                            raise _Bad(BAD_REQUEST) from None
                        if length < 0 or length > MAX_REQUEST:
                            raise _Bad(TOO_LARGE)
                    elif name == b"transfer-encoding" and b"chunked" in value:
                        chunked = True
                    elif name == b"connection":
                        if b"close" in value:
                            keep_alive = False
                        elif b"keep-alive" in value:
                            keep_alive = True
                start = head_end + 4
                if chunked:
                    got = _dechunk(buf, start)
                    if got is None:
                        if len(buf) > MAX_REQUEST:
                            raise _Bad(TOO_LARGE)
                        break
                    body, end = got
                else:
                    end = start + length
                    if len(buf) < end:
                        break
                    body = bytes(buf[start:end])
                del buf[:end]
                out.append(answer(path, body))
                if not keep_alive:
                    close = True
                    break
        except _Bad as bad:
            out.append(bad.response)
            close = True
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            buf.clear()
            transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTPProtocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("fast_upstream: uvloop not importable; using the stdlib loop", file=sys.stderr)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
