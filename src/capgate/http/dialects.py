"""Errors rendered in the dialect of the endpoint that was called. The one place that
knows both error shapes."""

from __future__ import annotations

import orjson
from aiohttp import web

from capgate.errors import CapgateError

# Anthropic's error types by the neutral kind (its SDK keys off the status, Claude Code
# shows the message).
_ANTHROPIC_TYPES = {
    "budget_exceeded": "billing_error",
    "conflict_error": "invalid_request_error",
}
_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "invalid_request_error",
    "permission_error": "permission_error",
    "budget_exceeded": "insufficient_quota",
    "rate_limit_error": "rate_limit_exceeded",
}
_OPENAI_CODES = {
    "authentication_error": "invalid_api_key",
    "budget_exceeded": "budget_exceeded",
    "rate_limit_error": "rate_limit_exceeded",
    "request_too_large": "request_too_large",
}


def anthropic_body(kind: str, message: str) -> bytes:
    etype = _ANTHROPIC_TYPES.get(kind, kind)
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})


def openai_body(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(kind, kind),
                "param": None,
                "code": _OPENAI_CODES.get(kind, kind),
            }
        }
    )


def admin_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": kind, "message": message}})


_BODIES = {"anthropic": anthropic_body, "openai": openai_body, "admin": admin_body}


def error_response(
    dialect: str, error: CapgateError, request_id: str | None = None
) -> web.Response:
    body = _BODIES[dialect](error.kind, error.message)
    headers = dict(error.headers)
    if request_id:
        headers["x-capgate-request-id"] = request_id
    return web.Response(
        status=error.status, body=body, content_type="application/json", headers=headers
    )


def is_dialect_body(dialect: str, body: bytes) -> bool:
    """Whether an upstream error body already has the dialect's shape (then it passes on
    untouched)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict):
        return False
    if dialect == "anthropic":
        return data.get("type") == "error" and isinstance(data.get("error"), dict)
    return isinstance(data.get("error"), dict)
