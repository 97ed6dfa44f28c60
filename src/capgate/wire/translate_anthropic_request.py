"""Anthropic Messages requests -> OpenAI Chat Completions requests. Pure.

A request either translates or raises InvalidRequest naming the field that cannot: a
request must never lose something that changes its meaning without saying so. Hints with
no counterpart (top_k, cache breakpoints, extended-thinking settings) are dropped;
docs/translation.md lists them.
"""

from __future__ import annotations

from typing import Any

import orjson

from capgate.wire.translate_fields import (
    JSON,
    array,
    integer,
    invalid,
    number,
    obj,
    reject,
    string,
)

# Fields that change what the model does and have no OpenAI counterpart.
_REJECTED = ("mcp_servers", "output_format")


def messages_to_chat(body: dict[str, Any], *, max_field: str = "max_tokens") -> dict[str, Any]:
    """An Anthropic Messages request -> an OpenAI Chat Completions request. `max_field` is
    the OpenAI field that receives max_tokens ("max_tokens" or "max_completion_tokens").
    When body["stream"] is true, sets stream_options.include_usage = true."""
    body = obj(body, "body")
    reject(body, _REJECTED, "OpenAI Chat Completions")
    out: JSON = {}
    if "model" in body:
        out["model"] = string(body["model"], "model")
    messages = _system_to_chat(body.get("system"))
    for i, turn in enumerate(array(body.get("messages"), "messages")):
        messages.extend(_turn_to_chat(turn, f"messages[{i}]"))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out[max_field] = integer(body["max_tokens"], "max_tokens")
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = number(body[name], name)
    if body.get("stop_sequences") is not None:
        stops = array(body["stop_sequences"], "stop_sequences")
        if stops:
            out["stop"] = [string(s, f"stop_sequences[{i}]") for i, s in enumerate(stops)]
    if body.get("metadata") is not None:
        user = obj(body["metadata"], "metadata").get("user_id")
        if user is not None:
            out["user"] = string(user, "metadata.user_id")
    out.update(_tools_to_chat(body.get("tools"), body.get("tool_choice")))
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise invalid("stream", "must be a boolean")
        out["stream"] = body["stream"]
        if body["stream"]:
            out["stream_options"] = {"include_usage": True}
    return out


def _system_to_chat(system: Any) -> list[JSON]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    blocks = array(system, "system")
    texts = [_text_of(block, f"system[{i}]") for i, block in enumerate(blocks)]
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _text_of(block: Any, path: str) -> str:
    block = obj(block, path)
    if block.get("type") != "text":
        raise invalid(f"{path}.type", "only text blocks are allowed here")
    return string(block.get("text"), f"{path}.text")


def _turn_to_chat(turn: Any, path: str) -> list[JSON]:
    turn = obj(turn, path)
    role = turn.get("role")
    content = turn.get("content")
    if role not in ("user", "assistant"):
        raise invalid(f"{path}.role", 'must be "user" or "assistant"')
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = array(content, f"{path}.content")
    if role == "assistant":
        return [_assistant_to_chat(blocks, f"{path}.content")]
    return _user_to_chat(blocks, f"{path}.content")


def _assistant_to_chat(blocks: list[Any], path: str) -> JSON:
    texts: list[str] = []
    calls: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"{path}[{j}]"
        kind = obj(block, where).get("type")
        if kind == "text":
            texts.append(string(block.get("text"), f"{where}.text"))
        elif kind == "tool_use":
            calls.append(_tool_use_to_call(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # OpenAI models cannot take another model's reasoning back
        else:
            raise invalid(f"{where}.type", f"{kind!r} has no OpenAI counterpart")
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _tool_use_to_call(block: JSON, path: str) -> JSON:
    arguments = block.get("input", {})
    obj(arguments, f"{path}.input")
    return {
        "id": string(block.get("id"), f"{path}.id"),
        "type": "function",
        "function": {
            "name": string(block.get("name"), f"{path}.name"),
            "arguments": orjson.dumps(arguments).decode(),
        },
    }


def _user_to_chat(blocks: list[Any], path: str) -> list[JSON]:
    """Tool results become `tool` messages, which must come straight after the assistant's
    calls, so they go first; images and files inside them go to the user message that
    follows, because OpenAI tool messages hold text only."""
    tool_messages: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"{path}[{j}]"
        if obj(block, where).get("type") == "tool_result":
            message, images = _tool_result_to_chat(block, where)
            tool_messages.append(message)
            if images:
                kind = "Images" if all(p["type"] == "image_url" for p in images) else "Files"
                label = f"{kind} returned by tool call {message['tool_call_id']}:"
                parts += [{"type": "text", "text": label}, *images]
        else:
            parts.append(_part_to_chat(block, where))
    if parts or not tool_messages:
        tool_messages.append({"role": "user", "content": parts})
    return tool_messages


def _tool_result_to_chat(block: JSON, path: str) -> tuple[JSON, list[JSON]]:
    call_id = string(block.get("tool_use_id"), f"{path}.tool_use_id")
    content = block.get("content", "")
    images: list[JSON] = []
    if isinstance(content, str):
        text = content
    else:
        texts = []
        for k, part in enumerate(array(content, f"{path}.content")):
            converted = _part_to_chat(part, f"{path}.content[{k}]")
            if converted["type"] == "text":
                texts.append(converted["text"])
            else:
                images.append(converted)
        text = "\n".join(texts)
    if block.get("is_error") is True:
        text = "Error: " + text  # OpenAI has no error flag; the model should still know
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _part_to_chat(block: Any, path: str) -> JSON:
    block = obj(block, path)
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": string(block.get("text"), f"{path}.text")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, path)}}
    if kind == "document":
        return _document_to_chat(block, path)
    raise invalid(f"{path}.type", f"{kind!r} has no OpenAI counterpart here")


def _image_url(block: JSON, path: str) -> str:
    source = obj(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = string(source.get("media_type"), f"{path}.source.media_type")
        return f"data:{media_type};base64,{string(source.get('data'), f'{path}.source.data')}"
    if kind == "url":
        return string(source.get("url"), f"{path}.source.url")
    raise invalid(f"{path}.source.type", f"{kind!r} has no OpenAI counterpart")


def _document_to_chat(block: JSON, path: str) -> JSON:
    source = obj(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": string(source.get("data"), f"{path}.source.data")}
    if kind == "base64":
        media_type = string(source.get("media_type"), f"{path}.source.media_type")
        data = string(source.get("data"), f"{path}.source.data")
        title = block.get("title")
        name = title if isinstance(title, str) and title else "document.pdf"
        return {
            "type": "file",
            "file": {"filename": name, "file_data": f"data:{media_type};base64,{data}"},
        }
    raise invalid(f"{path}.source.type", f"{kind!r} documents have no OpenAI counterpart")


def _tools_to_chat(tools: Any, choice: Any) -> JSON:
    if tools is None or tools == []:
        return {}  # OpenAI refuses tool_choice and parallel_tool_calls without tools
    out: JSON = {
        "tools": [_tool_to_chat(t, f"tools[{i}]") for i, t in enumerate(array(tools, "tools"))]
    }
    if choice is None:
        return out
    choice = obj(choice, "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = string(choice.get("name"), "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise invalid("tool_choice.type", 'must be "auto", "any", "none" or "tool"')
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _tool_to_chat(tool: Any, path: str) -> JSON:
    tool = obj(tool, path)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise invalid(f"{path}.type", f"the server tool {kind!r} has no OpenAI counterpart")
    function: JSON = {"name": string(tool.get("name"), f"{path}.name")}
    if tool.get("description") is not None:
        function["description"] = string(tool["description"], f"{path}.description")
    function["parameters"] = obj(tool.get("input_schema"), f"{path}.input_schema")
    return {"type": "function", "function": function}
