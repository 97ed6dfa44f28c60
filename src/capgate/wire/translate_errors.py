"""Upstream error bodies in the client's dialect, whole or as a stream's error event. Pure.

The SDKs choose their exception class from the HTTP status, so the status passes on
unchanged and only the body is rewritten; the upstream's message text is kept, since it
is what the user needs to read.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

from capgate.wire.translate_fields import JSON

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic error type -> OpenAI type and code. Where these say nothing, both are the
# Anthropic type, as in capgate's own OpenAI errors (capgate.http.dialects).
_OPENAI_TYPES = {
    "authentication_error": "invalid_request_error",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_exceeded",
}
_OPENAI_CODES = {
    "authentication_error": "invalid_api_key",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_exceeded",
}
_MAX_RAW_MESSAGE = 1000  # a non-JSON error page is cut to what a person would read


def error_to_anthropic(status: int, data: bytes) -> bytes:
    """An OpenAI-style (or any) error body -> {"type":"error","error":{"type":..,
    "message":..}}, the type chosen from the status."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return orjson.dumps(anthropic_error(kind, error_message(status, data)))


def error_to_openai(status: int, data: bytes) -> bytes:
    """An Anthropic error body -> {"error":{"message":..,"type":..,"param":..,"code":..}}.
    The Anthropic type, when the body has one, says more than the status."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    parsed = _json(data)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        kind = error["type"]
    return orjson.dumps(openai_error(kind, error_message(status, data)))


def anthropic_error(kind: str, message: str) -> JSON:
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_error(anthropic_kind: str, message: str) -> JSON:
    kind = _OPENAI_TYPES.get(anthropic_kind, anthropic_kind)
    code = _OPENAI_CODES.get(anthropic_kind, anthropic_kind)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def anthropic_kind_of(error: Any) -> str:
    """The Anthropic error type for an OpenAI error object met inside a stream, where no
    status says what happened."""
    if not isinstance(error, dict):
        return "api_error"
    words = f"{error.get('type')} {error.get('code')}"
    for hint, kind in (
        ("rate_limit", "rate_limit_error"),
        ("insufficient_quota", "billing_error"),
        ("invalid_api_key", "authentication_error"),
        ("invalid_request", "invalid_request_error"),
        ("permission", "permission_error"),
        ("not_found", "not_found_error"),
        ("overloaded", "overloaded_error"),
    ):
        if hint in words:
            return kind
    return "api_error"


def stream_error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) and message else "The upstream stream failed."


def error_message(status: int, data: bytes) -> str:
    """The message of an error body in any of the shapes servers use, else its text."""
    parsed = _json(data)
    found = _message_in(parsed)
    if found:
        return found
    text = data.decode("utf-8", "replace").strip()[:_MAX_RAW_MESSAGE]
    if text:
        return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else f"Upstream error {status}"


def _message_in(parsed: Any) -> str | None:
    if isinstance(parsed, list) and parsed:  # some servers wrap the error in a list
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict):
        parsed = error
    elif isinstance(error, str) and error:
        return error
    for key in ("message", "detail"):
        value = parsed.get(key)
        if isinstance(value, str) and value:
            return value
        if value:  # FastAPI-style detail lists: keep them readable
            return orjson.dumps(value).decode()
    return None


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
