"""A streamed answer as the text its client put together, pure: the text deltas joined,
tool calls as `[tool_use NAME] {arguments}`, thinking as `[thinking] ...`, an error
event as `[error] ...`.

Why assembled and not the raw events: a model streams a word, an e-mail address or a key
over several deltas, so redaction of the raw events would miss what only the joined text
shows; and the text is what a reader of the log wants (the events are ~20 times larger).
The events are kept on the request path as they are sent (one append each, bounded) and
assembled here, in the background, before redaction.
"""

from __future__ import annotations

from typing import Any

import orjson


def _events(raw: bytes) -> list[Any]:
    found = []
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            found.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            continue  # the event the cap cut in two
    return [event for event in found if isinstance(event, dict)]


def _messages(event: dict[str, Any], out: list[str]) -> None:
    kind = event.get("type")
    if kind == "content_block_start":
        block = event.get("content_block") or {}
        if block.get("type") in ("tool_use", "server_tool_use"):
            out.append(f"\n[tool_use {block.get('name')}] ")
        elif block.get("type") in ("thinking", "redacted_thinking"):
            out.append("\n[thinking] ")
        elif out:
            out.append("\n")
    elif kind == "content_block_delta":
        delta = event.get("delta") or {}
        for field in ("text", "partial_json", "thinking"):
            value = delta.get(field)
            if isinstance(value, str):
                out.append(value)
    elif kind == "error":
        out.append(f"\n[error] {(event.get('error') or {}).get('message')}")


def _chat(event: dict[str, Any], out: list[str]) -> None:
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {} if isinstance(choice, dict) else {}
        content = delta.get("content")
        if isinstance(content, str):
            out.append(content)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {} if isinstance(call, dict) else {}
            if function.get("name"):
                out.append(f"\n[tool_call {function['name']}] ")
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                out.append(arguments)
    if "error" in event:
        out.append(f"\n[error] {(event.get('error') or {}).get('message')}")


def _responses(event: dict[str, Any], out: list[str]) -> None:
    kind = event.get("type")
    if kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
        delta = event.get("delta")
        if isinstance(delta, str):
            out.append(delta)
    elif kind == "response.output_item.added":
        item = event.get("item") or {}
        if item.get("type") == "function_call":
            out.append(f"\n[function_call {item.get('name')}] ")
    elif kind in ("error", "response.failed"):
        out.append(
            f"\n[error] {orjson.dumps(event.get('error') or event.get('response')).decode()}"
        )


_READERS = {"messages": _messages, "chat": _chat, "responses": _responses}


def assemble(endpoint: str, raw: bytes) -> str:
    """The text of a stream of `endpoint` (messages, chat, responses) from its events."""
    reader = _READERS.get(endpoint)
    if reader is None:
        return raw.decode("utf-8", "replace")
    out: list[str] = []
    for event in _events(raw):
        try:
            reader(event, out)
        except (AttributeError, TypeError):
            continue  # an event of an unexpected shape: skipped, never an error
    return "".join(out).strip("\n")
