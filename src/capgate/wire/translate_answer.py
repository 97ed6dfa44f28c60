"""Answers between the Anthropic Messages and OpenAI Chat Completions formats, and the
pieces the streams share with them: ids, stop reasons and usage. Pure, except for fresh
ids where upstream gave none and the `created` time, as the real services do.

An answer comes from the provider, not the client, so odd fields are read leniently (a
missing count is 0, an unknown block is skipped); only an answer with nothing to
translate raises UpstreamFailed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from capgate.errors import UpstreamFailed
from capgate.wire.answer import count
from capgate.wire.translate_fields import JSON, tool_id

# finish_reason -> stop_reason. A stop sequence also ends as "stop" on OpenAI, which does
# not say which one matched, so it reads as an ordinary end of turn.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_reason(finish_reason: Any, called_tools: bool) -> str:
    """Some OpenAI-compatible servers say "stop" after tool calls; Anthropic clients wait
    for "tool_use" before they run the tools."""
    reason = (
        _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else None
    )
    if called_tools and reason in (None, "end_turn"):
        return "tool_use"
    return reason or "end_turn"


def finish_reason(stop: Any) -> str:
    return _FINISH_REASONS.get(stop, "stop") if isinstance(stop, str) else "stop"


def message_id(chat_id: Any) -> str:
    """A `msg_` id that keeps the upstream id, so logs on both sides can be matched."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex[:24]


def completion_id(msg_id: Any) -> str:
    if isinstance(msg_id, str) and msg_id:
        return "chatcmpl-" + msg_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def call_id(value: Any, prefix: str) -> str:
    return value if isinstance(value, str) and value else prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def anthropic_usage(usage: Any) -> JSON | None:
    """OpenAI counts cached tokens inside prompt_tokens; Anthropic counts them apart from
    input_tokens. Both bill the same tokens after this."""
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(count(details.get("cached_tokens")), prompt) if isinstance(details, dict) else 0
    return {
        "input_tokens": prompt - cached,
        "output_tokens": count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def openai_usage(usage: Any) -> JSON | None:
    """Anthropic's input, cache writes and cache reads together are OpenAI's prompt."""
    if not isinstance(usage, dict):
        return None
    cache_read = count(usage.get("cache_read_input_tokens"))
    prompt = count(usage.get("input_tokens")) + cache_read
    prompt += count(usage.get("cache_creation_input_tokens"))
    output = count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def arguments_input(arguments: Any) -> JSON:
    """A tool call's input from its JSON-string arguments. A model may write broken JSON;
    the raw text is kept under one key so the client's tool can report it, rather than
    the whole answer being lost."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def chat_completion_to_message(data: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat.completion answer -> an Anthropic message answer. The usage is left
    out when upstream sent none, so a reader never takes it for zero."""
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise UpstreamFailed("The upstream answer has no choices to translate.")
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[JSON] = []
    for key in ("content", "refusal"):
        text = _chat_text(message.get(key))
        if text:
            content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            function = call["function"]
            name = function.get("name")
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_id(call_id(call.get("id"), "toolu_")),
                    "name": name if isinstance(name, str) else "",
                    "input": arguments_input(function.get("arguments")),
                }
            )
    called = any(block["type"] == "tool_use" for block in content)
    answer: JSON = {
        "id": message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": data.get("model") if isinstance(data.get("model"), str) else "",
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), called),
        "stop_sequence": None,
    }
    usage = anthropic_usage(data.get("usage"))
    if usage is not None:
        answer["usage"] = usage
    return answer


def _chat_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [p.get("text") or p.get("refusal") for p in content if isinstance(p, dict)]
    return "".join(t for t in texts if isinstance(t, str))


def message_to_chat_completion(data: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message answer -> an OpenAI chat.completion answer. Thinking blocks are
    dropped; usage is left out when upstream sent none."""
    if not isinstance(data, dict):
        raise UpstreamFailed("The upstream answer is not a message to translate.")
    blocks = data.get("content")
    texts: list[str] = []
    calls: list[JSON] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            name = block.get("name")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            function = {
                "name": name if isinstance(name, str) else "",
                "arguments": orjson.dumps(arguments).decode(),
            }
            calls.append(
                {"id": call_id(block.get("id"), "call_"), "type": "function", "function": function}
            )
    message: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(data.get("stop_reason")),
    }
    answer: JSON = {
        "id": completion_id(data.get("id")),
        "object": "chat.completion",
        "created": now(),
        "model": data.get("model") if isinstance(data.get("model"), str) else "",
        "choices": [choice],
    }
    usage = openai_usage(data.get("usage"))
    if usage is not None:
        answer["usage"] = usage
    return answer
