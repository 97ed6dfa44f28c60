"""The mock Bedrock runtime's Converse API: `POST /model/{model}/converse` and
`/converse-stream`, for any model id, answering in Converse's format (`output.message`,
`stopReason`, `usage` with cacheReadInputTokens / cacheWriteInputTokens; a stream of
messageStart, contentBlockStart/Delta/Stop, messageStop and metadata events in AWS
event-stream framing).

The body is checked as Converse checks it (the shapes capgate must send: content blocks,
no Anthropic fields, tool blocks only with a toolConfig), then read as a conversation by
the main mock's generator, so `mock:` directives (`words`, `tool`, `status`,
`cut_stream`, `usage=<json>`) work as everywhere.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from aiohttp import web

from capgate.mock import generation
from capgate.mock.generation import Completion
from capgate.providers.eventstream import encode

JSON = dict[str, Any]
_BLOCKS = frozenset({"text", "image", "toolUse", "toolResult", "reasoningContent", "cachePoint"})
_TOP = frozenset(
    {"messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields"}
)


def problem(body: Any, model: str = "") -> str | None:
    """What Converse would refuse in this body (a ValidationException), or None. Only
    Anthropic models read Anthropic's fields in `additionalModelRequestFields`."""
    if not isinstance(body, dict):
        return "expected a JSON object"
    extra = sorted(set(body) - _TOP)
    if extra:
        return f"extraneous key [{extra[0]}] is not permitted"
    additional = body.get("additionalModelRequestFields", {})
    if "anthropic." not in model and isinstance(additional, dict):
        foreign = sorted({"thinking", "anthropic_beta"} & set(additional))
        if foreign:
            return f"extraneous key [{foreign[0]}] is not permitted"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tools_used = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}: role must be user or assistant"
        content = message.get("content")
        if not isinstance(content, list):
            return f"messages.{i}.content: expected a list of content blocks"
        for j, block in enumerate(content):
            if not isinstance(block, dict) or len(block) != 1 or not set(block) <= _BLOCKS:
                return f"messages.{i}.content.{j}: not a Converse content block"
            if block.get("text") == "":
                return f"messages.{i}.content.{j}: text must not be blank"
            tools_used = tools_used or "toolUse" in block or "toolResult" in block
    if tools_used and "toolConfig" not in body:
        return "toolConfig field must be defined when using toolUse and toolResult content blocks"
    config = body.get("inferenceConfig", {})
    if not isinstance(config, dict) or not set(config) <= {
        "maxTokens",
        "temperature",
        "topP",
        "stopSequences",
    }:
        return "inferenceConfig: unknown field"
    return None


def as_conversation(body: JSON) -> JSON:
    """The Converse body in the shape the mock's generator reads (Anthropic-like)."""
    messages = []
    for message in body["messages"]:
        parts: list[JSON] = []
        for block in message["content"]:
            if "text" in block:
                parts.append({"type": "text", "text": block["text"]})
            elif "image" in block:
                parts.append({"type": "image"})
            elif "toolResult" in block:
                inner = block["toolResult"].get("content", [])
                images = [{"type": "image"} for part in inner if "image" in part]
                parts.append({"type": "tool_result", "content": images})
        messages.append({"role": message["role"], "content": parts})
    tools = [
        {"name": spec["toolSpec"]["name"], "input_schema": spec["toolSpec"]["inputSchema"]["json"]}
        for spec in body.get("toolConfig", {}).get("tools", [])
        if "toolSpec" in spec
    ]
    system = " ".join(part.get("text", "") for part in body.get("system", []))
    return {"system": system, "messages": messages, "tools": tools}


def complete(body: JSON) -> Completion:
    limit = generation.as_limit(body.get("inferenceConfig", {}).get("maxTokens"))
    return generation.complete(as_conversation(body), limit)


def _usage(answer: Completion) -> Any:
    built = {
        "inputTokens": answer.input_tokens,
        "outputTokens": answer.output_tokens,
        "totalTokens": answer.input_tokens + answer.output_tokens,
    }
    return answer.directives.usage(built)


def _stop(answer: Completion) -> str:
    if answer.tool is not None:
        return "tool_use"
    return "max_tokens" if answer.truncated else "end_turn"


def tool_use_id(answer: Completion) -> str:
    return f"tooluse_mock{len(answer.pieces)}"


def converse_answer(answer: Completion) -> JSON:
    content: list[JSON]
    if answer.tool is not None:
        use = {
            "toolUseId": tool_use_id(answer),
            "name": answer.tool,
            "input": orjson.loads(answer.text),
        }
        content = [{"text": "Calling a tool."}, {"toolUse": use}]
    else:
        content = [{"text": answer.text}]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": _stop(answer),
        "usage": _usage(answer),
        "metrics": {"latencyMs": 12},
    }


def event(name: str, payload: JSON) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return encode(headers, orjson.dumps({**payload, "p": "abcdefgh"}))


def converse_events(answer: Completion) -> list[bytes]:
    """The stream's events; with mock:cut_stream, only its first half (no usage)."""
    out = [event("messageStart", {"role": "assistant"})]
    if answer.tool is not None:
        start = {"toolUse": {"toolUseId": tool_use_id(answer), "name": answer.tool}}
        out.append(event("contentBlockStart", {"start": start, "contentBlockIndex": 0}))
        for piece in answer.pieces:
            delta = {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": 0}
            out.append(event("contentBlockDelta", delta))
    else:
        for piece in answer.pieces:
            out.append(
                event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
            )
    out.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    out.append(event("messageStop", {"stopReason": _stop(answer)}))
    out.append(event("metadata", {"usage": _usage(answer), "metrics": {"latencyMs": 12}}))
    if answer.directives.cut_stream:
        return out[: max(2, len(out) // 2)]
    return out


async def respond(request: web.Request, body: JSON, stream: bool) -> web.StreamResponse:
    answer = complete(body)
    headers = {"x-amzn-requestid": str(uuid.uuid4())}  # one per request, as Bedrock's
    if not stream:
        return web.Response(
            body=orjson.dumps(converse_answer(answer)),
            content_type="application/json",
            headers=headers,
        )
    response = web.StreamResponse(
        headers={"content-type": "application/vnd.amazon.eventstream", **headers}
    )
    await response.prepare(request)
    for message in converse_events(answer):
        await response.write(message)
        await asyncio.sleep(0)
    if answer.directives.cut_stream:  # Bedrock ends a failed stream with an exception
        await response.write(
            encode(
                {":exception-type": "modelStreamErrorException", ":content-type": "application/json",
                 ":message-type": "exception"},
                orjson.dumps({"message": "cut by mock"}),
            )
        )  # fmt: skip
    await response.write_eof()
    return response
