"""A mock AWS Bedrock runtime: InvokeModel and InvokeModelWithResponseStream for Anthropic
models, and Converse / ConverseStream for any model (`bedrock_converse.py`), answering as Bedrock does (the Anthropic body; a stream in AWS event-stream
framing with base64 `chunk` events; errors as `{"message"}` with `x-amzn-ErrorType`).

Every request's SigV4 signature is checked by `verify`, given by whoever builds the app:
the tests pass botocore's signer, so capgate's signer (`providers/sigv4.py`) is checked by
an independent implementation. The `mock:` directives of the prompt work as in the main
mock (`mock:status=429` answers ThrottlingException).
"""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial

import orjson
from aiohttp import web

from capgate.mock import bedrock_converse, responses
from capgate.mock.directives import last_user_text, parse_directives
from capgate.mock.server import FAULTS, REQUESTS, Faults, _record
from capgate.providers.eventstream import encode

# (method, url, headers, body) -> None when the signature is good, else what is wrong.
Verifier = Callable[[str, str, Mapping[str, str], bytes], str | None]
ANTHROPIC_VERSION = "bedrock-2023-05-31"
_EXCEPTIONS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def create_bedrock_app(verify: Verifier) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[REQUESTS] = deque(maxlen=100)
    app[FAULTS] = Faults()
    app.router.add_post("/model/{model}/invoke", partial(_invoke, verify, False))
    app.router.add_post(
        "/model/{model}/invoke-with-response-stream", partial(_invoke, verify, True)
    )
    app.router.add_post("/model/{model}/converse", partial(_converse, verify, False))
    app.router.add_post("/model/{model}/converse-stream", partial(_converse, verify, True))
    return app


def error(status: int, message: str) -> web.Response:
    name = _EXCEPTIONS.get(status, "InternalServerException")
    return web.Response(
        status=status,
        body=orjson.dumps({"message": message}),
        content_type="application/json",
        headers={
            "x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        },
    )


async def _signed(verify: Verifier, request: web.Request) -> bytes | web.Response:
    """The body of a request whose signature is good, else the 403 to answer."""
    raw = await request.read()
    request.app[REQUESTS].append(_record(request, raw))
    if "authorization" not in request.headers:
        return error(403, "Missing Authentication Token")
    url = f"{request.scheme}://{request.host}{request.raw_path}"  # as sent: %3A stays
    problem = verify(request.method, url, request.headers, raw)
    if problem is not None:
        if problem.startswith("expired"):
            return error(403, "The security token included in the request is expired")
        return error(403, f"The request signature we calculated does not match: {problem}")
    return raw


async def _converse(verify: Verifier, stream: bool, request: web.Request) -> web.StreamResponse:
    raw = await _signed(verify, request)
    if isinstance(raw, web.Response):
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "Malformed input request, please reformat your input and try again.")
    wrong = bedrock_converse.problem(body, request.match_info.get("model", ""))
    if wrong is not None:
        return error(400, f"Malformed input request: {wrong}")
    request.app[FAULTS].served += 1
    directives = parse_directives(last_user_text(bedrock_converse.as_conversation(body)))
    if directives.status is not None:
        return error(directives.status, f"Injected by mock:status={directives.status}.")
    return await bedrock_converse.respond(request, body, stream)


async def _invoke(verify: Verifier, stream: bool, request: web.Request) -> web.StreamResponse:
    raw = await _signed(verify, request)
    if isinstance(raw, web.Response):
        return raw
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "Malformed input request, please reformat your input and try again.")
    if not isinstance(body, dict):
        return error(400, "Malformed input request: expected a JSON object.")
    for extraneous in ("model", "stream"):
        if extraneous in body:
            return error(
                400, f"Malformed input request: extraneous key [{extraneous}] is not permitted"
            )
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        return error(400, "Malformed input request: anthropic_version is missing or invalid")
    faults = request.app[FAULTS]
    faults.served += 1
    directives = parse_directives(last_user_text(body))
    if directives.status is not None:
        return error(directives.status, f"Injected by mock:status={directives.status}.")
    body["model"] = request.match_info["model"]  # answers name it as Bedrock does
    if not stream:
        return _json(responses.anthropic_message(body))
    response = web.StreamResponse(
        headers={"content-type": "application/vnd.amazon.eventstream", "x-amzn-requestid": "mock"}
    )
    await response.prepare(request)
    for event in responses.anthropic_stream(body):
        data = event.split(b"data: ", 1)[1].strip()
        await response.write(chunk_message(data))
        await asyncio.sleep(0)
    if directives.cut_stream:  # Bedrock ends a failed stream with an exception message
        await response.write(exception_message("modelStreamErrorException", "cut by mock"))
    await response.write_eof()
    return response


def chunk_message(event_json: bytes) -> bytes:
    """One Bedrock `chunk` event carrying an Anthropic stream event."""
    payload = orjson.dumps({"bytes": base64.b64encode(event_json).decode(), "p": "abcd"})
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode(headers, payload)


def exception_message(name: str, message: str) -> bytes:
    headers = {
        ":exception-type": name,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode(headers, orjson.dumps({"message": message}))


def _json(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
