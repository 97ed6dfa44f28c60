"""A mock Google Vertex AI: the OAuth token endpoint a service account's `token_uri`
names, and `rawPredict` / `streamRawPredict` for Anthropic models.

The token endpoint checks the JWT assertion as Google does: RS256 signature against the
service account's public key (with `cryptography`), issuer, audience (this URL), scope and
times; it answers a new access token. Predictions need one of the tokens it issued, the
model in the path and `anthropic_version: vertex-2023-10-16` in the body (no `model`).
Errors have Google's shape (`{"error": {"code", "message", "status"}}`).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from capgate.mock import responses
from capgate.mock.directives import last_user_text, parse_directives
from capgate.mock.server import REQUESTS, _record

ANTHROPIC_VERSION = "vertex-2023-10-16"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


@dataclass
class VertexState:
    client_email: str
    public_key: rsa.RSAPublicKey
    expires_in: int = 3600
    tokens: set[str] = field(default_factory=set)
    exchanges: int = 0


STATE: web.AppKey[VertexState] = web.AppKey("vertex")


def create_vertex_app(state: VertexState) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[REQUESTS] = deque(maxlen=100)
    app[STATE] = state
    app.router.add_post("/token", _token)
    route = "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{call}"
    app.router.add_post(route, partial(_predict))
    return app


def error(status: int, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_assertion(state: VertexState, assertion: str, audience: str) -> str | None:
    """None when the JWT is good, else what is wrong with it."""
    try:
        head, claims_part, signature = assertion.split(".")
        header = orjson.loads(_unb64(head))
        claims = orjson.loads(_unb64(claims_part))
        state.public_key.verify(
            _unb64(signature), f"{head}.{claims_part}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return "invalid signature"
    except (ValueError, orjson.JSONDecodeError):
        return "malformed assertion"
    now = time.time()
    if header.get("alg") != "RS256":
        return "alg must be RS256"
    if claims.get("iss") != state.client_email:
        return "unknown issuer"
    if claims.get("aud") != audience:
        return f"audience {claims.get('aud')!r} is not {audience!r}"
    if claims.get("scope") != SCOPE:
        return "wrong scope"
    if (
        not (claims.get("iat", 0) - 60 <= now < claims.get("exp", 0))
        or claims["exp"] - claims["iat"] > 3600
    ):
        return "expired or too long-lived"
    return None


async def _token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    audience = f"{request.scheme}://{request.host}{request.path}"
    problem = check_assertion(state, str(form.get("assertion", "")), audience)
    if problem is not None:
        return web.json_response(
            {"error": "invalid_grant", "error_description": problem}, status=400
        )
    token = "ya29.mock-" + secrets.token_urlsafe(16)
    state.tokens.add(token)
    state.exchanges += 1
    return web.json_response(
        {"access_token": token, "expires_in": state.expires_in, "token_type": "Bearer"}
    )


async def _predict(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    request.app[REQUESTS].append(_record(request, raw))
    state = request.app[STATE]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or token not in state.tokens:
        return error(401, "Request had invalid authentication credentials.")
    model, _, action = request.match_info["call"].partition(":")
    if action not in ("rawPredict", "streamRawPredict"):
        return error(404, f"unknown method {action!r}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error(400, "Invalid JSON payload received.")
    if not isinstance(body, dict) or "model" in body:
        return error(400, "model: Extra inputs are not permitted")
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        return error(400, "anthropic_version: invalid or missing")
    directives = parse_directives(last_user_text(body))
    if directives.status is not None:
        return error(directives.status, f"Injected by mock:status={directives.status}.")
    body["model"] = model
    if action == "rawPredict":
        return web.Response(
            body=orjson.dumps(responses.anthropic_message(body)), content_type="application/json"
        )
    response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for event in responses.anthropic_stream(body):
        await response.write(event)
        await asyncio.sleep(0)
    await response.write_eof()
    return response
