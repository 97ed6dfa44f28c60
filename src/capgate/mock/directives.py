"""Test directives written into the prompt, e.g. ``mock:status=429``.

Tests steer the mock through the last user message rather than through headers or extra
body fields because a gateway forwards the prompt untouched, while it may rewrite or drop
everything else. The same directive therefore works against the mock directly and through
the gateway under test.

Syntax: ``mock:NAME`` or ``mock:NAME=DIGITS``, anywhere in the text. Unknown names and
out-of-range values are ignored so a typo degrades to a normal answer instead of an error.
One directive takes JSON: ``mock:usage=<json>`` (e.g. ``mock:usage={"input_tokens":"10"}``)
sends that JSON in place of every usage object of the answer, to test usage readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_DIRECTIVE = re.compile(r"\bmock:([a-z_]+)(?:=(\d+))?")
_USAGE = re.compile(r"\bmock:usage=")
_TOOL_NAMED = re.compile(r"\bmock:tool=([A-Za-z][A-Za-z0-9_-]*)")  # call the tool named so

# Caps keep a mistyped directive from hanging a test run or exhausting memory.
_MAX_DELAY_MS = 60_000
_MAX_WORDS = 100_000


@dataclass(frozen=True, slots=True)
class Directives:
    """What the prompt asked the mock to do differently from a plain answer."""

    status: int | None = None  # answer with this HTTP error status (400-599)
    delay_ms: int = 0  # wait before answering (the server sleeps, not responses.py)
    stream_delay_ms: int = 0  # wait between stream events
    words: int | None = None  # answer with exactly this many words (= output tokens)
    cut_stream: bool = False  # stop a stream midway, without its terminal events
    no_usage: bool = False  # leave usage out of the answer
    tool: bool = False  # call the first tool the request defines instead of writing text
    tool_name: str | None = None  # mock:tool=NAME: the tool named NAME (or ending in _NAME)
    # Report these counts whatever was read or written (a provider that bills input the
    # body does not show, or ignores max_tokens).
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_json: str | None = None  # send this JSON as the usage object (mock:usage=...)

    def usage(self, built: Any) -> Any:
        """The usage object to send: `built`, unless mock:usage replaced it."""
        return built if self.usage_json is None else json.loads(self.usage_json)


def parse_directives(text: str) -> Directives:
    """Read every ``mock:`` directive in ``text``; when one repeats, the last one wins."""
    values: dict[str, Any] = {}
    for name, digits in _DIRECTIVE.findall(text):
        number = int(digits) if digits else None
        if name == "status" and number is not None and 400 <= number <= 599:
            values["status"] = number
        elif name in ("delay_ms", "stream_delay_ms") and number is not None:
            values[name] = min(number, _MAX_DELAY_MS)
        elif name == "words" and number is not None:
            values["words"] = min(number, _MAX_WORDS)
        elif name in ("cut_stream", "no_usage", "tool") and number is None:
            values[name] = True
        elif name in ("input_tokens", "output_tokens") and number is not None:
            values[name] = number
    for named in _TOOL_NAMED.findall(text):
        values.update(tool=True, tool_name=named)
    for match in _USAGE.finditer(text):
        try:
            value, _ = json.JSONDecoder().raw_decode(text, match.end())
        except ValueError:
            continue
        values["usage_json"] = json.dumps(value)
    return Directives(**values)


def strip_directives(text: str) -> str:
    """``text`` without its directives, so the echoed answer reads like a normal reply."""
    for match in reversed(list(_USAGE.finditer(text))):
        try:
            _, end = json.JSONDecoder().raw_decode(text, match.end())
        except ValueError:
            continue
        text = text[: match.start()] + text[end:]
    return _DIRECTIVE.sub("", _TOOL_NAMED.sub("", text))


def conversation(body: Mapping[str, Any]) -> list[Any] | str:
    """The request's turns: ``messages`` (Anthropic, OpenAI Chat) or ``input`` (Responses).

    Only the Responses API allows a bare string, meaning a single user turn.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    given = body.get("input")
    return given if isinstance(given, list | str) else []


def last_user_text(body: Mapping[str, Any]) -> str:
    """Text of the last user turn, for all three dialects.

    In every dialect a turn is a mapping with ``role`` and ``content``, and content is a
    string or a list of parts whose text sits under ``"text"``, so one walk serves all.
    """
    turns = conversation(body)
    if isinstance(turns, str):
        return turns
    for turn in reversed(turns):
        if isinstance(turn, Mapping) and turn.get("role") == "user":
            return _content_text(turn.get("content"))
    return ""


def last_user_images(body: Mapping[str, Any]) -> int:
    """How many images the last user turn holds, in any dialect, those inside Anthropic
    tool results included: a translation may move them in or out of a tool result."""
    turns = conversation(body)
    if isinstance(turns, str):
        return 0
    for turn in reversed(turns):
        if isinstance(turn, Mapping) and turn.get("role") == "user":
            return _images(turn.get("content"))
    return 0


def after_tool_result(body: Mapping[str, Any]) -> bool:
    """Whether the request's last turn hands back a tool's result (an Anthropic
    tool_result block, an OpenAI ``tool`` message or a Responses function_call_output).
    The mock then answers in words, so a client's tool loop ends."""
    turns = conversation(body)
    last = turns[-1] if isinstance(turns, list) and turns else None
    if not isinstance(last, Mapping):
        return False
    if last.get("role") == "tool" or last.get("type") == "function_call_output":
        return True
    content = last.get("content")
    return isinstance(content, list) and any(
        isinstance(part, Mapping) and part.get("type") == "tool_result" for part in content
    )


_IMAGE_PARTS = ("image", "image_url", "input_image")


def _images(content: object) -> int:
    if not isinstance(content, list):
        return 0
    found = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") in _IMAGE_PARTS:
            found += 1
        elif part.get("type") == "tool_result":
            found += _images(part.get("content"))
    return found


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        part["text"]
        for part in content
        if isinstance(part, Mapping) and isinstance(part.get("text"), str)
    ]
    return " ".join(texts)
