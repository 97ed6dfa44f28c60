"""The mock served over HTTP with aiohttp, as a drop-in upstream for the gateway.

responses.py builds the answers; this module adds what only a server can: authentication,
error statuses, waiting, incremental streaming and dropping a connection. It also records
the requests it receives so tests can check what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from capgate.mock import errors, responses
from capgate.mock.directives import Directives, last_user_text, parse_directives
from capgate.mock.errors import Dialect

# Real services accept large prompts (Anthropic allows 32 MB); aiohttp's default is 1 MiB.
_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_HISTORY = 100


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the mock received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased, for easy lookups in assertions
    body: Any  # the parsed JSON, or None when absent or invalid
    raw: bytes


REQUESTS: web.AppKey[deque[RecordedRequest]] = web.AppKey("requests")
"""The last requests received, oldest first: ``app[REQUESTS]``."""


@dataclass(slots=True)
class Faults:
    """Failures injected into this mock instance's next model requests, set over HTTP with
    ``POST /mock/faults`` (unlike directives, they tell two mocks behind one gateway
    apart: the primary fails, the fallback answers). ``count`` < 0: until cleared."""

    status: int | None = None  # answer with this error status
    retry_after: str | None = None  # ... and this retry-after header
    delay_ms: int = 0  # wait before answering (longer than a timeout: a hang)
    empty_stream: bool = False  # streams: headers, then the connection drops, no event
    count: int = 0
    served: int = 0  # model requests answered (or failed) so far


FAULTS: web.AppKey[Faults] = web.AppKey("faults")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    dialect: Dialect
    required: Mapping[str, type]
    answer: Callable[[Mapping[str, Any]], dict[str, Any]]
    stream: Callable[[Mapping[str, Any]], Iterator[bytes]] | None = None


_ENDPOINTS = {
    "/v1/messages": _Endpoint(
        "anthropic",
        errors.ANTHROPIC_MESSAGES_FIELDS,
        responses.anthropic_message,
        responses.anthropic_stream,
    ),
    "/v1/messages/count_tokens": _Endpoint(
        "anthropic", errors.ANTHROPIC_COUNT_FIELDS, responses.anthropic_count_tokens
    ),
    "/v1/chat/completions": _Endpoint(
        "openai", errors.OPENAI_CHAT_FIELDS, responses.openai_chat, responses.openai_chat_stream
    ),
    "/v1/responses": _Endpoint(
        "openai",
        errors.OPENAI_RESPONSES_FIELDS,
        responses.openai_responses,
        responses.openai_responses_stream,
    ),
}


def create_mock_app(*, history: int = DEFAULT_HISTORY) -> web.Application:
    """The mock upstream; it remembers the last ``history`` requests in ``app[REQUESTS]``."""
    app = web.Application(middlewares=[_front_door], client_max_size=_MAX_BODY_BYTES)
    app[REQUESTS] = deque(maxlen=history)
    app[FAULTS] = Faults()
    app.router.add_get("/health", _health)
    app.router.add_get("/mock/faults", _get_faults)
    app.router.add_post("/mock/faults", _set_faults)
    app.router.add_get("/v1/models", _models)
    for path, endpoint in _ENDPOINTS.items():
        # Routes match the path only, so "/v1/messages?beta=true" lands here too.
        app.router.add_post(path, partial(_answer, endpoint))
    return app


@web.middleware
async def _front_door(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request, check credentials, and give every error the dialect's shape."""
    dialect = _dialect_of(request)
    try:
        if request.path != "/health" and not request.path.startswith("/mock/"):
            raw = await request.read()
            request.app[REQUESTS].append(_record(request, raw))
            if not _has_credentials(request):
                return _error(dialect, 401, "invalid x-api-key")
        return await handler(request)
    except web.HTTPException as exc:  # unknown route, wrong method, body too large
        return _error(dialect, exc.status, exc.reason)


async def _answer(endpoint: _Endpoint, request: web.Request) -> web.StreamResponse:
    body = _json_object(await request.read())
    if body is None:
        return _error(endpoint.dialect, 400, "The request body is not a valid JSON object.")
    faults = request.app[FAULTS]
    faults.served += 1
    if faults.count != 0:
        faults.count -= 1 if faults.count > 0 else 0
        failed = await _injected(request, endpoint.dialect, faults)
        if failed is not None:
            return failed
    directives = parse_directives(last_user_text(body))
    if directives.delay_ms:
        await asyncio.sleep(directives.delay_ms / 1000)
    if directives.status is not None:
        message = f"Injected by mock:status={directives.status}."
        return _error(endpoint.dialect, directives.status, message)
    problem = errors.field_problem(endpoint.dialect, body, endpoint.required)
    if problem is not None:
        return _error(endpoint.dialect, 400, problem)
    if endpoint.stream is not None and body.get("stream") is True:
        return await _stream(request, endpoint.dialect, endpoint.stream(body), directives)
    return _json(endpoint.dialect, 200, endpoint.answer(body))


async def _injected(
    request: web.Request, dialect: Dialect, faults: Faults
) -> web.StreamResponse | None:
    if faults.delay_ms:
        await asyncio.sleep(faults.delay_ms / 1000)
    if faults.status is not None:
        response = _error(dialect, faults.status, f"Injected fault {faults.status}.")
        if faults.retry_after is not None:
            response.headers["retry-after"] = faults.retry_after
        return response
    if faults.empty_stream:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        if request.transport is not None:
            request.transport.close()
        return stream
    return None


async def _get_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    return web.json_response(
        {"status": faults.status, "delay_ms": faults.delay_ms, "count": faults.count,
         "empty_stream": faults.empty_stream, "served": faults.served}
    )  # fmt: skip


async def _set_faults(request: web.Request) -> web.Response:
    """Replace the injected faults (an empty object clears them)."""
    data = _json_object(await request.read())
    if data is None:
        return web.json_response({"error": "expected a JSON object"}, status=400)
    faults = request.app[FAULTS]  # changed in place: a running app's state is frozen
    try:
        status = data.get("status")
        faults.status = None if status is None else int(status)
        faults.retry_after = data.get("retry_after")
        faults.delay_ms = int(data.get("delay_ms", 0))
        faults.empty_stream = bool(data.get("empty_stream", False))
        faults.count = int(data.get("count", -1 if data else 0))
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if data.get("reset_served"):
        faults.served = 0
    return await _get_faults(request)


async def _stream(
    request: web.Request, dialect: Dialect, events: Iterator[bytes], directives: Directives
) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    response = web.StreamResponse(headers=headers | _request_id(dialect))
    await response.prepare(request)
    pause = directives.stream_delay_ms / 1000
    try:
        for event in events:
            await response.write(event)
            # Even a zero pause yields to the loop, so each event leaves as its own chunk
            # instead of the whole answer arriving at once.
            await asyncio.sleep(pause)
    except ConnectionResetError:  # the client hung up; there is no one left to answer
        return response
    if directives.cut_stream and request.transport is not None:
        # Close without the final empty chunk, as when an upstream dies mid-answer: the
        # client sees an incomplete body, not merely a stream missing its last events.
        request.transport.close()
        return response
    await response.write_eof()
    return response


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _models(request: web.Request) -> web.Response:
    dialect = _dialect_of(request)
    listing = responses.anthropic_models() if dialect == "anthropic" else responses.openai_models()
    return _json(dialect, 200, listing)


def _dialect_of(request: web.Request) -> Dialect:
    if request.path.startswith("/v1/messages"):
        return "anthropic"
    if request.path.startswith(("/v1/chat/", "/v1/responses")):
        return "openai"
    # Shared paths such as /v1/models: the Anthropic SDK always sends this header.
    return "anthropic" if "anthropic-version" in request.headers else "openai"


def _has_credentials(request: web.Request) -> bool:
    """Loose on purpose: any key will do, but there must be one, as upstreams insist."""
    if request.headers.get("x-api-key", "").strip():
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _record(request: web.Request, raw: bytes) -> RecordedRequest:
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=_json_or_none(raw),
        raw=raw,
    )


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    body = _json_or_none(raw)
    return body if isinstance(body, dict) else None


def _error(dialect: Dialect, status: int, message: str) -> web.Response:
    return _json(dialect, status, errors.error_body(dialect, status, message))


def _json(dialect: Dialect, status: int, payload: object) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=_request_id(dialect),
    )


def _request_id(dialect: Dialect) -> dict[str, str]:
    """Each service's request-id header, which gateways commonly log or pass on."""
    name = "request-id" if dialect == "anthropic" else "x-request-id"
    return {name: "req_mock_" + uuid.uuid4().hex[:24]}
