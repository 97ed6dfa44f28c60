"""The cache key of a request, pure.

sha256 over: the owner's namespace (`owner:<kind>:<scope id>`, or `shared:<name>` when
the scope names a shared cache), the endpoint (its dialect and shape), the upstream
model, whether it streams, and the canonical JSON (keys sorted) of the body without the
fields that do not change an answer: the model as the client named it (the upstream
model stands for it), `stream`, `metadata` and `user` (ids of the caller). Everything
else counts — messages, system, tools, tool_choice, sampling, max_tokens, stop,
stream_options — so a field capgate does not know still tells two requests apart.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

IGNORED = frozenset({"model", "stream", "metadata", "user"})
_VERSION = b"capgate-cache-1"


def namespace(owner_kind: str, owner_id: str, shared: str | None) -> str:
    """Whose answers a request may get: its owner's, or a named shared cache's."""
    return f"shared:{shared}" if shared is not None else f"owner:{owner_kind}:{owner_id}"


def request_key(
    space: str, endpoint: str, upstream_model: str, stream: bool, body: dict[str, Any]
) -> bytes:
    """The request's cache key (32 bytes)."""
    kept = {k: v for k, v in body.items() if k not in IGNORED}
    digest = hashlib.sha256(_VERSION)
    for part in (space, endpoint, upstream_model, "stream" if stream else "whole"):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(4, "big"))  # no two part lists hash alike
        digest.update(encoded)
    digest.update(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS))
    return digest.digest()


def prompt_text(body: dict[str, Any]) -> str:
    """The request's text (system, messages, input), for a similarity lookup."""
    parts: list[str] = []
    _texts(body.get("system"), parts)
    _texts(body.get("instructions"), parts)
    _texts(body.get("messages"), parts)
    _texts(body.get("input"), parts)
    return "\n".join(parts)


def _texts(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, list):
        for item in value:
            _texts(item, into)
    elif isinstance(value, dict):
        for name in ("text", "content"):
            _texts(value.get(name), into)
