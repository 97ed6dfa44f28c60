"""Deterministic token accounting and answer text shared by every dialect.

One word of the answer is one output token, so tests can predict usage exactly. Input
tokens approximate a real tokenizer (about four bytes per token) but are built so they can
never exceed the byte length of the JSON request: a gateway may bound a request's cost by
its body size, and the mock must not break that assumption.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from capgate.mock.directives import (
    Directives,
    after_tool_result,
    conversation,
    last_user_images,
    last_user_text,
    parse_directives,
    strip_directives,
)

# Request fields that carry prompt content, across the three dialects. The same list is used
# by the message and count_tokens endpoints, which keeps their input_tokens identical.
_PROMPT_FIELDS = ("system", "instructions", "messages", "input", "tools")

# Every turn costs a few tokens of framing, as with real tokenizers. Three is safe for the
# byte bound: the smallest turn in JSON, "{}" plus a separating comma, is three bytes (the
# last turn has no comma, but the enclosing '"messages":[]' more than makes up for it).
_TURN_OVERHEAD = 3

_GREETING = "Hello from the capgate mock."
_ECHO_WORDS = 8
# A tool call's arguments stream in fragments of this many characters, one output token each.
_ARGUMENT_CHARS = 4
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed")


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one request: its text pieces (one per output token) and usage.

    For a tool call (``tool`` set) the pieces are the fragments of its JSON arguments, so
    output tokens are counted the same way for both kinds of answer.
    """

    pieces: tuple[str, ...]
    input_tokens: int
    truncated: bool  # cut by the request's output limit
    directives: Directives
    tool: str | None = None  # the name of the tool called

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        reported = self.directives.output_tokens  # mock:output_tokens=N: a provider that
        return len(self.pieces) if reported is None else reported  # ignored max_tokens


def complete(body: Mapping[str, Any], limit: int | None) -> Completion:
    """Answer ``body``, cut to at most ``limit`` output tokens when a limit is given."""
    directives = parse_directives(last_user_text(body))
    read = input_tokens(body)
    if directives.input_tokens is not None:  # input the body does not show (server state)
        read = directives.input_tokens
    tool = _tool_to_call(body, directives)
    if tool is not None:
        name, schema = tool
        text = orjson.dumps(tool_arguments(schema)).decode()
        pieces = [text[i : i + _ARGUMENT_CHARS] for i in range(0, len(text), _ARGUMENT_CHARS)]
        # A call cut short would be broken JSON; an answer that cannot fit is words.
        if limit is None or len(pieces) <= limit:
            return Completion(tuple(pieces), read, False, directives, name)
    pieces = _answer_pieces(body, directives)
    truncated = limit is not None and len(pieces) > limit
    if truncated:
        pieces = pieces[:limit]
    return Completion(tuple(pieces), read, truncated, directives)


def input_tokens(body: Mapping[str, Any]) -> int:
    """About a token per four bytes of prompt text, plus framing per turn; at least 1.

    Why it never exceeds the body's byte length: ceil(S/4) <= S/4 + 1 for the S bytes of
    strings, which appear in the body with two quotes each; and each turn's overhead is
    covered by that turn's own JSON punctuation.
    """
    text_bytes = sum(_string_bytes(body.get(field)) for field in _PROMPT_FIELDS)
    turns = conversation(body)
    # Only objects count as turns: a bare "1," in a list is too short to pay for overhead.
    n_turns = 1 if isinstance(turns, str) else sum(isinstance(t, Mapping) for t in turns)
    return max(1, -(-text_bytes // 4) + _TURN_OVERHEAD * n_turns)


def as_limit(value: object) -> int | None:
    """``value`` if it is a usable token limit, else None (no limit).

    bool is excluded explicitly because it subclasses int.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def tool_arguments(schema: object) -> dict[str, Any]:
    """Arguments that fit a JSON schema: each required property with a small value of its
    type (a string is "x"), so a client's own validation accepts them."""
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    names = (
        [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    )
    return {name: _example(properties.get(name)) for name in names}


_EXAMPLES: dict[str, Any] = {
    "string": "x",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}


def _example(schema: object) -> Any:
    if not isinstance(schema, Mapping):
        return "x"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):  # e.g. ["string", "null"]: the first real type
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return tool_arguments(schema)
    return _EXAMPLES.get(kind, "x") if isinstance(kind, str) else "x"


def _tool_to_call(body: Mapping[str, Any], directives: Directives) -> tuple[str, Any] | None:
    """(name, schema) of the first tool the request defines (or the one `mock:tool=NAME`
    names), when asked to call one."""
    if not directives.tool or after_tool_result(body):
        return None
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, Mapping):
            continue
        # OpenAI Chat nests the function; Anthropic and Responses tools are flat.
        function = tool.get("function")
        spec: Mapping[str, Any] = function if isinstance(function, Mapping) else tool
        name = spec.get("name")
        wanted = directives.tool_name
        if wanted is not None and name != wanted and not str(name).endswith("_" + wanted):
            continue
        if isinstance(name, str) and name:
            return name, spec.get("input_schema", spec.get("parameters"))
    return None


def _answer_pieces(body: Mapping[str, Any], directives: Directives) -> list[str]:
    if directives.words is not None:
        words = [_FILLER[i % len(_FILLER)] for i in range(directives.words)]
    else:
        echoed = strip_directives(last_user_text(body)).split()[:_ECHO_WORDS]
        words = _GREETING.split()
        images = last_user_images(body)
        if images:  # so tests can see that images arrived, through a translation too
            words += [f"({images}", "image)" if images == 1 else "images)"]
        if echoed:
            words += ["You", "said:", *echoed]
    # Each piece carries its leading space, so joining the pieces rebuilds the text exactly.
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _string_bytes(value: object) -> int:
    """UTF-8 length of every string value (not key) nested in ``value``.

    Iterative rather than recursive: JSON nested a thousand levels deep is valid input.
    """
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item.encode())
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return total
