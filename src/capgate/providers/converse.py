"""Bedrock's Converse API <-> Anthropic Messages: requests and whole answers. Pure.

The Converse provider speaks Anthropic Messages to the gateway, so an OpenAI Chat
Completions client reaches it through the one existing Anthropic <-> OpenAI translation
(`capgate.wire.translate`), not through a third copy. This module is the other half:

    request   messages_to_converse   system, messages (text, images, tool use / results,
                                     thinking), tools + tool_choice, max_tokens,
                                     temperature, top_p, stop sequences, cache points
    answer    converse_to_message    content, stop reason, usage (cache reads and writes)

A request Converse cannot carry (an image by URL, `tool_choice: none`, a block it has no
form for) raises `Untranslatable` naming the field: the provider answers it with a 400 in
the client's dialect and sends nothing. The stream is `converse_stream.py`.

What Claude Code sends besides (docs/providers.md, "Claude Code through Converse"):
`context_management` and `output_config.effort` only tune Anthropic's own service (what
it clears from a long context, how many tokens it spends): dropped. `thinking` goes to
Anthropic models in `additionalModelRequestFields`, with the `anthropic-beta` values; other
models have no such switch and answer without it. A `role: "system"` entry in `messages`
joins the system prompt, as capgate's Chat Completions translation folds system messages.
"""

from __future__ import annotations

import uuid
from typing import Any

JSON = dict[str, Any]

# Converse's stopReason -> Anthropic's stop_reason.
STOP_REASONS = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "guardrail_intervened": "refusal",
    "content_filtered": "refusal",
    "model_context_window_exceeded": "model_context_window_exceeded",
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# Anthropic request fields Converse has no place for but Anthropic models on Bedrock read
# from `additionalModelRequestFields`.
_ADDITIONAL = ("top_k", "thinking")
# Fields that change nothing upstream (`metadata`, `service_tier`), that the gateway
# handled (`model`, `stream`), or that only tune Anthropic's own service: context editing
# (`context_management`) saves input tokens on Anthropic's side, the answer means the same.
_IGNORED = frozenset({"model", "stream", "metadata", "service_tier", "context_management"})
# Of `output_config`, `effort` tunes how many tokens the model spends (Converse has no
# field for it); `format` (structured output) would change the answer: refused.
_OUTPUT_CONFIG_DROPPED = frozenset({"effort"})
_KNOWN = frozenset(
    {"system", "messages", "tools", "tool_choice", "max_tokens", "temperature", "top_p"}
    | {"stop_sequences", "output_config", *_ADDITIONAL, *_IGNORED}
)


class Untranslatable(ValueError):
    """The client's request has something Converse cannot carry (the message says what)."""


def messages_to_converse(body: JSON, model: str = "", betas: list[str] | None = None) -> JSON:
    """An Anthropic Messages request body -> a Converse request body (the model goes in
    the path, so it is not in the body). `model` (the Bedrock model id) says whether the
    model is Anthropic's, which alone reads `thinking` and the `anthropic-beta` values
    (`betas`)."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise Untranslatable(f"{unknown[0]}: not supported through Bedrock's Converse API")
    _check_output_config(body.get("output_config"))
    turns = _list(body, "messages")
    out: JSON = {"messages": [_message(m, i) for i, m in enumerate(turns) if not _is_system(m)]}
    system: list[JSON] = []
    if isinstance(body.get("system"), str) and body["system"]:
        system = [{"text": body["system"]}]
    elif isinstance(body.get("system"), list):
        system = _system(body["system"], "system")
    for i, message in enumerate(turns):
        if _is_system(message):
            system += _system_message(message, f"messages.{i}")
    if system:
        out["system"] = system
    config: JSON = {}
    for src, dst in (("max_tokens", "maxTokens"), ("temperature", "temperature")):
        if body.get(src) is not None:
            config[dst] = body[src]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    if body.get("stop_sequences"):
        config["stopSequences"] = list(body["stop_sequences"])
    if config:
        out["inferenceConfig"] = config
    extra = {name: body[name] for name in _ADDITIONAL if body.get(name) is not None}
    if not is_anthropic(model):
        extra.pop("thinking", None)  # Anthropic's switch: other models answer without it
    elif betas:
        extra["anthropic_beta"] = betas  # as InvokeModel takes them (interleaved thinking)
    if extra:
        out["additionalModelRequestFields"] = extra
    tools = _tool_config(body.get("tools"), body.get("tool_choice"))
    if tools is not None:
        out["toolConfig"] = tools
    elif _uses_tools(out["messages"]):
        # Converse refuses tool blocks in the history without a toolConfig; the model
        # needs no new tool to read an old call.
        raise Untranslatable("tools: Converse needs the tools of the tool_use blocks it is sent")
    return out


def _list(body: JSON, name: str) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list):
        raise Untranslatable(f"{name}: expected a list")
    return value


def is_anthropic(model: str) -> bool:
    """Whether a Bedrock model id (or inference profile id) names an Anthropic model."""
    return "anthropic." in model


def _check_output_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise Untranslatable("output_config: expected an object")
    for name in sorted(set(config) - _OUTPUT_CONFIG_DROPPED):
        raise Untranslatable(f"output_config.{name}: not supported through Bedrock's Converse API")


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "system"


def _system_message(message: JSON, where: str) -> list[JSON]:
    """A `role: "system"` entry of `messages` -> system blocks (Converse has no system
    turn inside the conversation)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, list):
        return _system(content, f"{where}.content")
    raise Untranslatable(f"{where}.content: expected a string or a list of text blocks")


def _system(blocks: list[Any], where: str) -> list[JSON]:
    out: list[JSON] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable(f"{where}.{i}: only text blocks go to Converse")
        if block.get("text"):  # Converse refuses empty text blocks
            out.append({"text": str(block["text"])})
        out += _cache_point(block)
    return out


def _cache_point(block: JSON) -> list[JSON]:
    """Anthropic marks the end of a cached prefix on a block; Converse with a block of its
    own after it."""
    return [{"cachePoint": {"type": "default"}}] if block.get("cache_control") else []


def _message(message: Any, i: int) -> JSON:
    where = f"messages.{i}"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise Untranslatable(f"{where}: a message needs role user or assistant")
    content = message.get("content")
    blocks: list[Any] = [{"type": "text", "text": content}] if isinstance(content, str) else []
    if isinstance(content, list):
        blocks = content
    elif not isinstance(content, str):
        raise Untranslatable(f"{where}.content: expected a string or a list of blocks")
    out: list[JSON] = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise Untranslatable(f"{where}.content.{j}: expected a block object")
        out += _block(block, f"{where}.content.{j}")
        out += _cache_point(block)
    return {"role": message["role"], "content": out}


def _block(block: JSON, where: str) -> list[JSON]:
    kind = block.get("type")
    if kind == "text":
        text = str(block.get("text", ""))
        return [{"text": text}] if text else []  # Converse refuses empty text blocks
    if kind == "image":
        return [{"image": _image(block.get("source"), where)}]
    if kind == "tool_use":
        return [
            {
                "toolUse": {
                    "toolUseId": str(block.get("id", "")),
                    "name": str(block.get("name", "")),
                    "input": block.get("input") if block.get("input") is not None else {},
                }
            }
        ]
    if kind == "tool_result":
        return [{"toolResult": _tool_result(block, where)}]
    if kind == "thinking":
        reasoning: JSON = {"text": str(block.get("thinking", ""))}
        if block.get("signature"):
            reasoning["signature"] = str(block["signature"])
        return [{"reasoningContent": {"reasoningText": reasoning}}]
    if kind == "redacted_thinking":
        return [{"reasoningContent": {"redactedContent": block.get("data", "")}}]
    raise Untranslatable(f"{where}: a {kind!r} block has no Converse form")


def _image(source: Any, where: str) -> JSON:
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise Untranslatable(f"{where}.source: Converse takes images as base64 data, not URLs")
    media = _IMAGE_FORMATS.get(str(source.get("media_type")))
    if media is None:
        raise Untranslatable(f"{where}.source.media_type: {source.get('media_type')!r}")
    # The JSON form of Converse carries `bytes` as base64 text, as Anthropic's `data`.
    return {"format": media, "source": {"bytes": str(source.get("data", ""))}}


def _tool_result(block: JSON, where: str) -> JSON:
    content = block.get("content")
    parts: list[JSON] = []
    if isinstance(content, str):
        parts = [{"text": content}] if content else []
    elif isinstance(content, list):
        for k, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append({"text": str(item.get("text", ""))})
            elif kind == "image":
                parts.append({"image": _image(item.get("source"), f"{where}.content.{k}")})
            else:
                raise Untranslatable(f"{where}.content.{k}: a {kind!r} block in a tool result")
    out: JSON = {"toolUseId": str(block.get("tool_use_id", "")), "content": parts or [{"text": ""}]}
    if block.get("is_error"):
        out["status"] = "error"
    return out


def _tool_config(tools: Any, choice: Any) -> JSON | None:
    if not tools:
        return None
    specs: list[JSON] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or "input_schema" not in tool:
            raise Untranslatable(f"tools.{i}: only custom tools (with input_schema) go to Converse")
        spec: JSON = {
            "name": str(tool.get("name", "")),
            "inputSchema": {"json": tool["input_schema"]},
        }
        if tool.get("description"):
            spec["description"] = str(tool["description"])
        specs.append({"toolSpec": spec})
        specs += _cache_point(tool)
    out: JSON = {"tools": specs}
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "none":
            raise Untranslatable("tool_choice: Converse has no 'none'; send no tools instead")
        if kind == "any":
            out["toolChoice"] = {"any": {}}
        elif kind == "tool":
            out["toolChoice"] = {"tool": {"name": str(choice.get("name", ""))}}
        elif kind == "auto":
            out["toolChoice"] = {"auto": {}}
    return out


def _uses_tools(messages: list[JSON]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    )


# What an answer says when Bedrock's usage cannot be read: the usage tap reads no usage
# from it (a null input count), so the gateway charges the reservation (SPEC §2.2) — never
# $0 for an answer whose cost is unknown. Clients see 0 output tokens and no input count.
UNKNOWN_USAGE: JSON = {"input_tokens": None, "output_tokens": 0}


def converse_usage(usage: Any) -> JSON:
    """Converse's usage -> Anthropic's: the same split (input excludes cached tokens).
    `UNKNOWN_USAGE` when it is missing or a count is not a whole number >= 0."""
    if not isinstance(usage, dict):
        return dict(UNKNOWN_USAGE)
    counts: JSON = {}
    for theirs, ours, required in (
        ("inputTokens", "input_tokens", True),
        ("outputTokens", "output_tokens", True),
        ("cacheReadInputTokens", "cache_read_input_tokens", False),
        ("cacheWriteInputTokens", "cache_creation_input_tokens", False),
    ):
        value = usage.get(theirs)
        if value is None and not required:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return dict(UNKNOWN_USAGE)
        counts[ours] = value
    return counts


def message_id(request_id: str | None) -> str:
    return "msg_bdrk_" + (request_id or uuid.uuid4().hex).replace("-", "")


def converse_to_message(data: JSON, model: str, request_id: str | None = None) -> JSON:
    """A Converse answer -> an Anthropic message (read leniently: it is the provider's)."""
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    content: list[JSON] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            content.append({"type": "text", "text": block["text"]})
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            content.append(
                {
                    "type": "tool_use",
                    "id": str(use.get("toolUseId", "")),
                    "name": str(use.get("name", "")),
                    "input": use.get("input") if isinstance(use.get("input"), dict) else {},
                }
            )
        elif isinstance(block.get("reasoningContent"), dict):
            content += _reasoning(block["reasoningContent"])
    reason = data.get("stopReason")
    return {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(reason, "end_turn") if isinstance(reason, str) else None,
        "stop_sequence": None,  # Converse does not say which one matched
        "usage": converse_usage(data.get("usage")),
    }


def _reasoning(block: JSON) -> list[JSON]:
    text = block.get("reasoningText")
    if isinstance(text, dict):
        return [
            {
                "type": "thinking",
                "thinking": str(text.get("text", "")),
                "signature": str(text.get("signature") or ""),
            }
        ]
    if isinstance(block.get("redactedContent"), str):
        return [{"type": "redacted_thinking", "data": block["redactedContent"]}]
    return []
