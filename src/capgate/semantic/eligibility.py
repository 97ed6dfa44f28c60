"""Which requests the semantic cache may answer, and the text it compares.

Only single-turn requests: one user message of text, after an optional system prompt.
A conversation is never matched by similarity, because one that ends with the same
question as another is a different question (docs/semantic-cache.md). No tools (the
answer could be a tool call that acts on the caller's world), no images, audio or files,
no continuation of a stored response. Temperature: the providers' default is 1 when it is
absent, so a request is eligible when its `temperature`, or 1 when it sets none, is at or
below `max_temperature` (0 unless configured).

Everything else that shapes the answer (system prompt, max_tokens, stop sequences,
response format, n, ...) goes into `Question.context`: cached answers are only compared
within one context, exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Body fields that do not change what the answer says.
_NOT_CONTEXT = frozenset(
    {
        "messages",
        "input",
        "system",
        "instructions",
        "temperature",
        "stream",
        "stream_options",
        "metadata",
        "user",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# Body fields whose presence (non-empty) makes a request ineligible.
_REFUSED = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "previous_response_id",
    "conversation",
    "audio",
)
# What the providers use when a body sets no temperature (Anthropic, OpenAI): such a
# request is eligible only when `max_temperature` is configured up to 1 (OpenAI's reasoning
# models take no temperature at all).
DEFAULT_TEMPERATURE = 1.0
_SYSTEM_ROLES = frozenset({"system", "developer"})
_TEXT_PARTS = frozenset({"text", "input_text"})


@dataclass(frozen=True, slots=True)
class Question:
    text: str  # the user's message, what is embedded
    context: str  # a digest of everything else that shapes the answer


def eligible(
    body: dict[str, Any],
    dialect: str,
    *,
    max_temperature: float = 0.0,
    max_chars: int = 8000,
) -> Question | None:
    """The question to look up, or None when the semantic cache must not answer `body`:
    an Anthropic Messages, OpenAI Chat Completions or Responses request body, and only
    those (an embeddings body has an `input` too, and must never be answered by similarity)."""
    if any(body.get(field) for field in _REFUSED):
        return None
    temperature = body.get("temperature", DEFAULT_TEMPERATURE)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool):
        return None
    if not 0 <= temperature <= max_temperature:
        return None
    if dialect == "anthropic":
        found = _anthropic(body)
    elif dialect == "openai":
        found = _responses(body) if "input" in body else _chat(body)
    else:
        return None
    if found is None:
        return None
    system, text = found
    if not text.strip() or len(text) + len(system) > max_chars:
        return None
    rest = {k: v for k, v in body.items() if k not in _NOT_CONTEXT}
    try:
        shape = orjson.dumps([dialect, system, rest], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a number orjson cannot encode: not worth caching
        return None
    return Question(text, hashlib.sha256(shape).hexdigest())


def _text(content: Any) -> str | None:
    """A message's content when it is only text: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def _single_turn(messages: Any, system: str) -> tuple[str, str] | None:
    """(system, user text) of [system/developer..., one user message], else None."""
    if not isinstance(messages, list) or not messages:
        return None
    systems = [system] if system else []
    for message in messages[:-1]:
        if not isinstance(message, dict) or message.get("role") not in _SYSTEM_ROLES:
            return None
        text = _text(message.get("content"))
        if text is None:
            return None
        systems.append(text)
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    if set(last) - {"role", "content", "type"}:
        return None  # a name, a tool call id...: not a plain question
    text = _text(last.get("content"))
    return None if text is None else ("\n".join(systems), text)


def _anthropic(body: dict[str, Any]) -> tuple[str, str] | None:
    system = body.get("system", "")
    system_text = "" if system == "" else _text(system)
    if system_text is None:
        return None
    return _single_turn(body.get("messages"), system_text)


def _chat(body: dict[str, Any]) -> tuple[str, str] | None:
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        return None
    return _single_turn(body.get("messages"), "")


def _responses(body: dict[str, Any]) -> tuple[str, str] | None:
    instructions = body.get("instructions", "")
    if not isinstance(instructions, str):
        return None
    given = body.get("input")
    if isinstance(given, str):
        return instructions, given
    return _single_turn(given, instructions)
