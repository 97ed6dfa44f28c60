"""Error bodies in each provider's dialect, and the minimal request checks behind them.

The official SDKs pick their exception class from the HTTP status, and gateways often read
the error ``type``, so both must match what the real services send.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Literal

Dialect = Literal["anthropic", "openai"]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# (type, code) as OpenAI sends them; the statuses not listed fall back by class below.
_OPENAI_KINDS: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
}

# Required fields and their JSON types, per endpoint. Deliberately loose: enough to catch a
# gateway that drops a field the real service insists on, not a full schema validation.
ANTHROPIC_MESSAGES_FIELDS: Mapping[str, type] = {"model": str, "messages": list, "max_tokens": int}
ANTHROPIC_COUNT_FIELDS: Mapping[str, type] = {"model": str, "messages": list}
OPENAI_CHAT_FIELDS: Mapping[str, type] = {"model": str, "messages": list}
OPENAI_RESPONSES_FIELDS: Mapping[str, type] = {"model": str}


def error_body(dialect: Dialect, status: int, message: str | None = None) -> dict[str, Any]:
    """The JSON error body ``dialect``'s service would send with ``status``."""
    text = message or default_message(status)
    if dialect == "anthropic":
        fallback = "api_error" if status >= 500 else "invalid_request_error"
        kind = _ANTHROPIC_TYPES.get(status, fallback)
        return {"type": "error", "error": {"type": kind, "message": text}}
    fallback_kind = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    kind, code = _OPENAI_KINDS.get(status, fallback_kind)
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def default_message(status: int) -> str:
    if status == 529:  # Anthropic's own status, unknown to the http module
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def field_problem(
    dialect: Dialect, body: Mapping[str, Any], fields: Mapping[str, type]
) -> str | None:
    """A message naming the first required field that is absent or mistyped, else None."""
    for name, kind in fields.items():
        value = body.get(name)
        # bool subclasses int, but the services reject "max_tokens": true.
        if isinstance(value, kind) and not isinstance(value, bool):
            continue
        if dialect == "anthropic":
            return f"{name}: Field required" if value is None else f"{name}: invalid value"
        if value is None:
            return f"Missing required parameter: '{name}'."
        return f"Invalid value for '{name}'."
    return None
