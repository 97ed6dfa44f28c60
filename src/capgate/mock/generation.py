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

from capgate.mock.directives import (
    Directives,
    conversation,
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
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed")


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one request: its text pieces (one per output token) and usage."""

    pieces: tuple[str, ...]
    input_tokens: int
    truncated: bool  # cut by the request's output limit
    directives: Directives

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)


def complete(body: Mapping[str, Any], limit: int | None) -> Completion:
    """Answer ``body``, cut to at most ``limit`` output tokens when a limit is given."""
    directives = parse_directives(last_user_text(body))
    pieces = _answer_pieces(body, directives)
    truncated = limit is not None and len(pieces) > limit
    if truncated:
        pieces = pieces[:limit]
    return Completion(tuple(pieces), input_tokens(body), truncated, directives)


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


def _answer_pieces(body: Mapping[str, Any], directives: Directives) -> list[str]:
    if directives.words is not None:
        words = [_FILLER[i % len(_FILLER)] for i in range(directives.words)]
    else:
        echoed = strip_directives(last_user_text(body)).split()[:_ECHO_WORDS]
        words = _GREETING.split()
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
