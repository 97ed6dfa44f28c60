"""A streamed answer relayed to the client as it arrives, while a usage tap reads it.

`Call` makes a `Relay` once a stream's first chunk is in (before it, a stream may still
fall over to another target; after it, no other target is tried: the client gets these
bytes and any error after them).
The relay settles its call: when the final event is read, before its bytes are written;
otherwise, with the usage of what was relayed, when the stream ends without that event,
the upstream breaks off, the client goes away or the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

from aiohttp import web

from capgate.bodylog.capture import BodyCapture
from capgate.core.money import Usage
from capgate.errors import UpstreamFailed
from capgate.http.door import GatewayRequest, open_stream
from capgate.http.translation import Translation, Translator
from capgate.providers.base import Endpoint, UpstreamAnswer
from capgate.routing import Route
from capgate.wire import anthropic as anthropic_wire
from capgate.wire import openai as openai_wire

Tap = (
    anthropic_wire.AnthropicStreamTap | openai_wire.OpenAIStreamTap | openai_wire.ResponsesStreamTap
)


class RelayedCall(Protocol):
    """What a relay needs of the call it serves (`http/call.py`'s `Call`): its clock, its
    settlement (once), and its answer cache."""

    ttft_ms: float | None  # the time to the first bytes for the client, once known
    settled: bool

    def elapsed_ms(self) -> float: ...

    def settle(
        self,
        status: int,
        outcome: str,
        usage: Usage | None,
        model: str | None = None,
        error: str | None = None,
    ) -> None: ...

    def remember(
        self, body: bytes, content_type: str, usage: Usage | None, model: str | None, route: Route
    ) -> None: ...


class Relay:
    """One stream from its first chunk to its end. `keep`: the events sent are kept, to
    give the answer cache the whole stream. `input_bound` and `output_left` bound the
    usage charged for a stream cut short (`_partial`)."""

    __slots__ = (
        "_answer", "_call", "_capture", "_headers", "_input_bound", "_kept", "_output_left",
        "_request", "_route", "_tap", "_translator",
    )  # fmt: skip

    def __init__(
        self,
        call: RelayedCall,
        request: GatewayRequest,
        answer: UpstreamAnswer,
        headers: dict[str, str],
        route: Route,
        translation: Translation | None,
        *,
        hide_usage: bool,
        capture: BodyCapture | None,
        keep: bool,
        input_bound: int,
        output_left: int,
    ) -> None:
        self._call, self._request, self._answer = call, request, answer
        self._headers, self._route, self._capture = headers, route, capture
        # the client never sees the usage chunk it did not ask for
        self._tap = _tap(route.endpoint, hide_usage and translation is None)
        self._translator: Translator | None = None
        if translation is not None:
            self._translator = translation.stream(route.upstream_model, not hide_usage)
        self._kept: list[bytes] | None = [] if keep else None  # the events sent
        self._input_bound, self._output_left = input_bound, output_left

    async def run(self, chunks: AsyncIterator[bytes], first: bytes) -> web.StreamResponse:
        """Relay `first`, then `chunks`; the response for the handler to return."""
        call, answer, tap, translator = self._call, self._answer, self._tap, self._translator
        capture, kept = self._capture, self._kept
        # When the final event is in and the upstream has already sent everything, the
        # rest goes out with the end of the answer in one write (each write to a socket
        # is a system call; a short stream that arrived whole leaves in a single one,
        # headers included). If more may still come, the final events go out at once.
        tail = b""
        response = web.StreamResponse(status=answer.status)  # until the stream is open
        try:
            response, stream = await open_stream(self._request, answer.status, self._headers)
            chunk: bytes | None = first
            while chunk is not None:
                block = tap.feed(chunk)
                if block:
                    if call.ttft_ms is None:
                        call.ttft_ms = call.elapsed_ms()
                    if translator is not None:
                        block = translator.feed(block)
                    if tap.finished:  # the usage is known: settle before the last bytes
                        call.settle(answer.status, "ok", tap.usage(), tap.model)
                    if capture is not None:
                        capture.feed(block)
                    if kept is not None:
                        kept.append(block)
                    if tap.finished and getattr(answer, "complete", False):
                        tail += block
                    elif block:
                        await stream.write(block)
                chunk = await anext(chunks, None)
            rest = self._end()
            await stream.write_eof(tail + rest)
            self._remember(rest)
        except UpstreamFailed as exc:  # charge_all: it surely generated more than we saw
            usage = None if exc.charge_all else self._partial()
            call.settle(answer.status, "error", usage, tap.model, exc.message)
            if tail:  # the final events came before the upstream broke off: pass them on
                with contextlib.suppress(ConnectionResetError):
                    await stream.write(tail)
        except ConnectionResetError:
            self._stop("client disconnected")
        except asyncio.CancelledError:
            self._stop("server shutting down")
            raise
        return response

    def _end(self) -> bytes:
        """The upstream's stream is over: settle if its final event never came. Returns
        what was held back for the end (the translator's or the event splitter's rest)."""
        tap, translator, capture = self._tap, self._translator, self._capture
        if not self._call.settled:  # the stream ended without its final event
            status = self._answer.status
            self._call.settle(status, "error", self._partial(), tap.model, "stream ended early")
        rest = translator.finish() if translator is not None else tap.splitter.rest()
        if capture is not None:
            capture.feed(rest)
        return rest

    def _remember(self, rest: bytes) -> None:
        """Give the answer cache the whole stream, if it is kept and was not cut short."""
        kept, tap = self._kept, self._tap
        if kept is not None and tap.finished:
            kept.append(rest)
            body = b"".join(kept)
            self._call.remember(body, "text/event-stream", tap.usage(), tap.model, self._route)

    def _stop(self, reason: str) -> None:
        """The client went away, or the server is shutting down: stop the upstream's
        generation and charge what it made."""
        self._answer.close()
        self._call.settle(499, "cancelled", self._partial(), self._tap.model, reason)

    def _partial(self) -> Usage:
        """Usage of a stream cut short. Its output bound (bytes relayed) is capped at the
        output reserved: the provider cannot have generated more than max_tokens."""
        tap, bound = self._tap, self._input_bound
        if isinstance(tap, anthropic_wire.AnthropicStreamTap):
            usage = tap.partial_usage()
            if usage.total_input == 0:  # no message_start: the input bound is all we know
                usage = replace(usage, input_tokens=bound)
        else:
            usage = tap.partial_usage(bound)
        return replace(usage, output_tokens=min(usage.output_tokens, self._output_left))


def _tap(endpoint: Endpoint, hide_usage_chunk: bool) -> Tap:
    """The usage reader of a stream from `endpoint`."""
    if endpoint is Endpoint.MESSAGES:
        return anthropic_wire.AnthropicStreamTap()
    if endpoint is Endpoint.RESPONSES:
        return openai_wire.ResponsesStreamTap()
    return openai_wire.OpenAIStreamTap(hide_usage_chunk)
