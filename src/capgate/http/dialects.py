"""Errors rendered in the dialect of the endpoint that was called. The one place that
knows both error shapes, and the statuses each known client shows at once."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from capgate.errors import AuthenticationFailed, CapgateError

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


CLAUDE_CODE = "claude-code"
CODEX = "codex"


def client_of(headers: Mapping[str, str]) -> str | None:
    """The known client that sent a request, from its headers: Claude Code sends
    `x-app: cli` and a `claude-cli/...` user agent, Codex an `originator: codex_...`."""
    agent = headers.get("user-agent", "")
    if headers.get("x-app") == "cli" or agent.startswith("claude-cli/"):
        return CLAUDE_CODE
    if (headers.get("originator") or agent).startswith("codex"):
        return CODEX
    return None


def client_status(client: str | None) -> int | None:
    """The status a refusal is sent with to a client that would otherwise hide it or
    retry it for minutes (None: the refusal's own status). Codex retries 401, 402, 403
    and 429 several times and hides a 429's message, but shows a 400's body at once.
    Claude Code retries 400 eight times (dropping betas) and shows 401 and 403 as
    "Please run /login", but shows a 429 with `x-should-retry: false` at once as
    "API Error: Request rejected (429) · <message>"."""
    if client == CODEX:
        return 400
    if client == CLAUDE_CODE:
        return 429
    return None


def for_client(error: CapgateError, client: str | None) -> CapgateError:
    """The error as `client` is sent it: a refusal of a known client gets the status that
    client shows at once (a payload too large keeps 413, which Claude Code explains
    itself); to Claude Code the message says it comes from capgate. A copy when it
    differs: `error` stays as it was raised."""
    status = client_status(client)
    if status is None or error.status >= 500 or error.status == 413:
        return error
    if error.status == 429 and error.retryable and client == CLAUDE_CODE:
        return error  # a short rate limit: Claude Code's retries will get through
    message = error.message
    if client == CLAUDE_CODE and not message.startswith("capgate"):
        message = f"capgate: {message}"
        if isinstance(error, AuthenticationFailed):
            message += _CLAUDE_CODE_KEY
    return error.shown_as(status, message)


_CLAUDE_CODE_KEY = (
    " Start Claude Code with ANTHROPIC_AUTH_TOKEN set to your capgate key (sk-cg-...)."
)


def dialect_of_path(path: str) -> str:
    """The error dialect of an answer aiohttp makes before any route runs (a request it
    cannot parse, no such route): the client's when the path names its API."""
    if path.startswith(("/v1/messages", "/anthropic/")):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    return "admin"


def error_response(
    dialect: str, error: CapgateError, request_id: str | None = None, client: str | None = None
) -> web.Response:
    """The error in `dialect`, as `client` (`client_of`) is best sent it."""
    if client is not None:
        error = for_client(error, client)
    body = _BODIES[dialect](error.kind, error.message)
    headers = dict(error.headers)
    if not error.retryable:
        headers["x-should-retry"] = "false"  # honoured by Claude Code and the SDKs
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
