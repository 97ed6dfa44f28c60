"""What the engine needs to know about a request, and its worst case.

Only a few fields are read; the body itself is passed on untouched. The input bound is a
true upper bound on the tokens a model can read from the request: a byte-level tokenizer
never makes more tokens than UTF-8 bytes of text, JSON encoding only adds bytes, and what
is not text (images, PDF documents, the provider's own tool prompt) gets a
generous fixed allowance. It is deliberately loose; budgets close to their end pay for it
with an earlier refusal, never with an overspend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capgate.errors import InvalidRequest

REQUEST_OVERHEAD = 1_000  # system prompt for tools, formatting tokens
MESSAGE_OVERHEAD = 8  # role markers and separators per message
IMAGE_ALLOWANCE = 3_000  # a resized image costs ~1,600 (Anthropic) to ~2,500 (OpenAI) tokens
# A PDF's pages are read as images too, and neither a URL nor compressed bytes bound them;
# one model context (200K tokens) bounds any document. Plain-text documents need no extra.
DOCUMENT_ALLOWANCE = 200_000

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_DOCUMENT_TYPES = frozenset({"document", "file", "input_file"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str
    stream: bool
    max_output: int | None  # what the client asked for; None = not given
    choices: int = 1  # OpenAI `n`: each choice may produce max_output tokens


def _require_model(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    return model


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{name}: must be a positive integer")
    return value


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean")
    return stream


def anthropic_facts(body: Any) -> RequestFacts:
    model = _require_model(body)
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: field required (a list)")
    return RequestFacts(model, _stream_flag(body), _positive_int(body, "max_tokens"))


def openai_chat_facts(body: Any) -> RequestFacts:
    model = _require_model(body)
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: field required (a list)")
    max_out = _positive_int(body, "max_completion_tokens")
    if max_out is None:
        max_out = _positive_int(body, "max_tokens")
    choices = _positive_int(body, "n") or 1
    return RequestFacts(model, _stream_flag(body), max_out, choices)


def responses_facts(body: Any) -> RequestFacts:
    """OpenAI Responses: `input` is a string or a list of items."""
    model = _require_model(body)
    if not isinstance(body.get("input"), str | list):
        raise InvalidRequest("input: field required (a string or a list)")
    return RequestFacts(model, _stream_flag(body), _positive_int(body, "max_output_tokens"))


def input_bound(body: dict[str, Any], body_bytes: int) -> int:
    """An upper bound on the input tokens of a Messages, Chat Completions or Responses
    request."""
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")  # Responses
    count = len(messages) if isinstance(messages, list) else 0
    extra = _non_text_allowance(messages) + _non_text_allowance(body.get("system"))
    return body_bytes + REQUEST_OVERHEAD + MESSAGE_OVERHEAD * count + extra


def _non_text_allowance(node: Any, depth: int = 0) -> int:
    """Allowances for content blocks whose tokens their bytes do not bound."""
    if depth > 8:
        return 0
    total = 0
    if isinstance(node, list):
        for item in node:
            total += _non_text_allowance(item, depth + 1)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _IMAGE_TYPES:
            total += IMAGE_ALLOWANCE
        elif kind in _DOCUMENT_TYPES:
            source = node.get("source")
            is_text = isinstance(source, dict) and source.get("type") in {"text", "content"}
            total += MESSAGE_OVERHEAD if is_text else DOCUMENT_ALLOWANCE
        content = node.get("content")
        if isinstance(content, list):  # messages, tool results
            total += _non_text_allowance(content, depth + 1)
    return total
