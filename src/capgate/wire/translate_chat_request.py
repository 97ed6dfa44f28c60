"""OpenAI Chat Completions requests -> Anthropic Messages requests. Pure.

A request either translates or raises InvalidRequest naming the field that cannot: a
request must never lose something that changes its meaning without saying so. Hints with
no counterpart (penalties, seed, logit_bias, reasoning_effort) are dropped;
docs/translation.md lists them.
"""

from __future__ import annotations

from typing import Any

import orjson

from capgate.wire.translate_fields import (
    DATA_URL,
    JSON,
    array,
    integer,
    invalid,
    number,
    obj,
    reject,
    string,
    tool_id,
)

# Fields with no Anthropic counterpart whose loss a client would notice.
_REJECTED = ("functions", "function_call", "audio", "web_search_options", "prediction")


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Chat Completions request -> an Anthropic Messages request. max_tokens
    comes from max_completion_tokens or max_tokens."""
    body = obj(body, "body")
    reject(body, _REJECTED, "Anthropic Messages")
    _check_chat_options(body)
    out: JSON = {}
    if "model" in body:
        out["model"] = string(body["model"], "model")
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            out["max_tokens"] = integer(body[name], name)
            break
    else:
        raise invalid("max_tokens", "required to translate to the Anthropic format")
    system, turns = _chat_turns(array(body.get("messages"), "messages"))
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns
    out.update(_tools_to_messages(body))
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif stop is not None:
        out["stop_sequences"] = [string(s, f"stop[{i}]") for i, s in enumerate(array(stop, "stop"))]
    if body.get("temperature") is not None:
        # OpenAI's scale goes to 2, Anthropic's to 1: beyond 1 is "as random as it gets".
        out["temperature"] = min(number(body["temperature"], "temperature"), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = number(body["top_p"], "top_p")
    if body.get("user") is not None:
        out["metadata"] = {"user_id": string(body["user"], "user")}
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise invalid("stream", "must be a boolean")
        out["stream"] = body["stream"]
    return out


def _check_chat_options(body: JSON) -> None:
    n = body.get("n")
    if n is not None and integer(n, "n") != 1:
        raise invalid("n", "only one choice (n = 1) can be translated to the Anthropic format")
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        raise invalid("logprobs", "has no counterpart in the Anthropic Messages format")
    modalities = body.get("modalities")
    if modalities is not None and array(modalities, "modalities") not in (["text"], []):
        raise invalid("modalities", "only text output can be translated")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = obj(response_format, "response_format").get("type")
        # A json_object request must already ask for JSON in its prompt (OpenAI insists),
        # so dropping the flag keeps the meaning; a schema would be lost.
        if kind not in ("text", "json_object"):
            raise invalid("response_format.type", f"{kind!r} has no Anthropic counterpart")


def _chat_turns(messages: list[Any]) -> tuple[list[str], list[JSON]]:
    """System texts and Anthropic turns. Anthropic wants turns that alternate, so
    consecutive turns of one role (tool results and the user's next words) are merged."""
    system: list[str] = []
    turns: list[JSON] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        message = obj(message, path)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_chat_text(content, f"{path}.content"))
        elif role == "user":
            _add_turn(turns, "user", _user_content(content, f"{path}.content"))
        elif role == "assistant":
            blocks = _assistant_blocks(message, path)
            if blocks:  # Anthropic refuses an empty assistant turn
                _add_turn(turns, "assistant", blocks)
        elif role == "tool":
            _add_turn(turns, "user", [_tool_result(message, path)])
        else:
            raise invalid(f"{path}.role", f"{role!r} cannot be translated")
    for turn in turns:
        if turn["role"] == "user" and isinstance(turn["content"], list):
            # Anthropic wants tool results first in their turn; the sort is stable.
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    return system, turns


def _add_turn(turns: list[JSON], role: str, content: str | list[JSON]) -> None:
    if not turns or turns[-1]["role"] != role:
        turns.append({"role": role, "content": content})
        return
    last = turns[-1]
    last["content"] = _as_blocks(last["content"]) + _as_blocks(content)


def _as_blocks(content: str | list[JSON]) -> list[JSON]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _chat_text(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    parts = array(content, path)
    return "".join(_text_part(part, f"{path}[{j}]") for j, part in enumerate(parts))


def _text_part(part: Any, path: str) -> str:
    part = obj(part, path)
    if part.get("type") != "text":
        raise invalid(f"{path}.type", "only text parts are allowed here")
    return string(part.get("text"), f"{path}.text")


def _user_content(content: Any, path: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    blocks = [_part_to_block(part, f"{path}[{j}]") for j, part in enumerate(array(content, path))]
    # Anthropic refuses empty text blocks, which OpenAI clients do send.
    return [b for b in blocks if b["type"] != "text" or b["text"]]


def _part_to_block(part: Any, path: str) -> JSON:
    part = obj(part, path)
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": string(part.get("text"), f"{path}.text")}
    if kind == "image_url":
        image = obj(part.get("image_url"), f"{path}.image_url")
        url = string(image.get("url"), f"{path}.image_url.url")
        return {"type": "image", "source": _source(url)}
    if kind == "file":
        return _file_to_block(obj(part.get("file"), f"{path}.file"), f"{path}.file")
    raise invalid(f"{path}.type", f"{kind!r} has no Anthropic counterpart")


def _source(url: str) -> JSON:
    match = DATA_URL.fullmatch(url)
    if match:
        return {"type": "base64", "media_type": match[1], "data": match[2]}
    return {"type": "url", "url": url}


def _file_to_block(file: JSON, path: str) -> JSON:
    data = file.get("file_data")
    if not isinstance(data, str):
        raise invalid(f"{path}.file_data", "required: uploaded files (file_id) cannot be sent")
    match = DATA_URL.fullmatch(data)
    if not match:
        raise invalid(f"{path}.file_data", "must be a base64 data URL")
    block: JSON = {
        "type": "document",
        "source": {"type": "base64", "media_type": match[1], "data": match[2]},
    }
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block


def _assistant_blocks(message: JSON, path: str) -> list[JSON]:
    blocks: list[JSON] = []
    content = message.get("content")
    if content is not None:
        text = _chat_text_or_refusal(content, f"{path}.content")
        if text:
            blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for j, call in enumerate(array(calls, f"{path}.tool_calls") if calls is not None else []):
        blocks.append(_call_to_tool_use(call, f"{path}.tool_calls[{j}]"))
    return blocks


def _chat_text_or_refusal(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(array(content, path)):
        where = f"{path}[{j}]"
        kind = obj(part, where).get("type")
        if kind == "refusal":
            texts.append(string(part.get("refusal"), f"{where}.refusal"))
        else:
            texts.append(_text_part(part, where))
    return "".join(texts)


def _call_to_tool_use(call: Any, path: str) -> JSON:
    call = obj(call, path)
    if call.get("type", "function") != "function":
        raise invalid(f"{path}.type", f"{call.get('type')!r} has no Anthropic counterpart")
    function = obj(call.get("function"), f"{path}.function")
    return {
        "type": "tool_use",
        "id": tool_id(string(call.get("id"), f"{path}.id")),
        "name": string(function.get("name"), f"{path}.function.name"),
        "input": _arguments(function.get("arguments"), f"{path}.function.arguments"),
    }


def _arguments(value: Any, path: str) -> JSON:
    text = string(value, path)
    if not text.strip():
        return {}  # models send "" for a tool without parameters
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid(path, "must be a JSON object") from None
    return obj(parsed, path)


def _tool_result(message: JSON, path: str) -> JSON:
    call_id = tool_id(string(message.get("tool_call_id"), f"{path}.tool_call_id"))
    content = message.get("content")
    block: JSON = {"type": "tool_result", "tool_use_id": call_id}
    if content is None:
        return block
    if isinstance(content, str):
        block["content"] = content
        return block
    texts = [_text_part(p, f"{path}.content[{j}]") for j, p in enumerate(array(content, path))]
    block["content"] = [{"type": "text", "text": t} for t in texts if t]
    return block


def _tools_to_messages(body: JSON) -> JSON:
    tools = body.get("tools")
    if tools is None or tools == []:
        return {}
    out: JSON = {
        "tools": [_chat_tool(t, f"tools[{i}]") for i, t in enumerate(array(tools, "tools"))]
    }
    choice: JSON | None = None
    given = body.get("tool_choice")
    if given == "auto":
        choice = {"type": "auto"}
    elif given == "required":
        choice = {"type": "any"}
    elif given == "none":
        choice = {"type": "none"}
    elif given is not None:
        function = obj(obj(given, "tool_choice").get("function"), "tool_choice.function")
        choice = {"type": "tool", "name": string(function.get("name"), "tool_choice.function.name")}
    if body.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = {"type": "auto"} if choice is None else choice
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _chat_tool(tool: Any, path: str) -> JSON:
    tool = obj(tool, path)
    if tool.get("type") != "function":
        raise invalid(f"{path}.type", f"{tool.get('type')!r} has no Anthropic counterpart")
    function = obj(tool.get("function"), f"{path}.function")
    out: JSON = {"name": string(function.get("name"), f"{path}.function.name")}
    if function.get("description") is not None:
        out["description"] = string(function["description"], f"{path}.function.description")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    out["input_schema"] = obj(parameters, f"{path}.function.parameters")
    return out
