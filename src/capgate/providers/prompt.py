"""What a CLI provider hands its program, and what it makes of the program's verdict.
Shared by `claude_code.py` and `codex_exec.py`; pure.

A CLI takes one prompt, not a conversation: the turns are flattened into a transcript that
reads unambiguously to the model. A single user turn goes as it is, so a one-shot request
reaches the model exactly as the client wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

# A model name becomes one argument (`--model NAME`): letters, digits and the punctuation
# real model ids use (`claude-sonnet-4-5[1m]`, `gpt-5.1-codex`, `org:model`); never a
# leading `-`, so it cannot pass for an option. Checked with fullmatch: `$` would let a
# trailing newline through.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\[\]-]{0,127}")


class Unsupported(ValueError):
    """The request asks for something a CLI cannot do (client tools, images, ...). The
    provider answers 400 `invalid_request_error` with this message."""


def check_model(name: object) -> str:
    if isinstance(name, str) and MODEL_NAME.fullmatch(name):
        return name
    shown = repr(name)[:80]
    raise Unsupported(
        f"model name {shown} is not allowed for a CLI provider: use 1-128 letters, digits, "
        "'.', '_', ':', '[', ']' or '-', starting with a letter or digit."
    )


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str


_PREAMBLE = (
    "Below is a conversation between a user and an assistant, oldest turn first, each "
    "turn inside <user> or <assistant> tags."
)
_NEXT = "Write the assistant's next reply. Answer with the reply text only, without tags."
_CONTINUE = (
    "The last assistant turn is unfinished. Continue it from exactly where it stops. "
    "Answer with the continuation only, without tags."
)


def transcript(turns: Sequence[Turn]) -> str:
    """The prompt for `turns`: the text itself for a single user turn, else a tagged
    transcript with an instruction to write (or continue) the assistant's reply."""
    if not turns:
        raise Unsupported("the request has no messages")
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].text
    parts = [_PREAMBLE, ""]
    for turn in turns:
        parts += [f"<{turn.role}>", turn.text, f"</{turn.role}>", ""]
    parts.append(_CONTINUE if turns[-1].role == "assistant" else _NEXT)
    return "\n".join(parts)


def merge(turns: list[Turn]) -> list[Turn]:
    """Consecutive turns of one role become one (APIs allow them; a transcript reads
    better without)."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, merged[-1].text + "\n\n" + turn.text)
        else:
            merged.append(turn)
    return merged


def nano_from_usd(value: object) -> int | None:
    """A cost the CLI reported, read as a Decimal from the JSON number's own text, in
    nano-dollars: exact to 9 decimals. Digits beyond are the noise of the CLI's binary
    floats (0.0010680000000000001) and round to the nearest nano-dollar. None if it is
    not a cost."""
    if not isinstance(value, Decimal | int) or isinstance(value, bool):
        return None
    dec = Decimal(value)
    if not dec.is_finite() or dec < 0:
        return None
    return int(dec.scaleb(9).to_integral_value(ROUND_HALF_UP))


# Statuses of the provider's API, as the CLI reports them, that are about the request
# itself and pass on unchanged. 429 passes on too (a rate limit: retry later, or elsewhere).
# Anything else (401/403: the CLI's own login; 402: its plan; 5xx) is the gateway's
# problem, not the client's: 502.
_PASSED_ON = frozenset({400, 404, 413, 422, 429})


def answer_status(api_status: object) -> int:
    if isinstance(api_status, int) and api_status in _PASSED_ON:
        return api_status
    return 502


def shorten(text: str, limit: int = 1000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
