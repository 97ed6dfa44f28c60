"""Claude Code (`claude -p`) as a Messages provider: the request turned into its command
line, stdin and environment, and its output turned back into a Messages answer. Pure.

What runs (Claude Code 2.1.330):

    claude -p --output-format json --model M --system-prompt-file DIR/system.md \\
        --tools "" --strict-mcp-config --disable-slash-commands --no-session-persistence \\
        --max-turns 1 --setting-sources ""

- `--system-prompt-file` replaces Claude Code's own agent prompt with the request's system
  prompt (Claude Code still puts one line of its own before it); a file, because one
  argument may not pass 128 KiB and cannot hold a NUL;
- `--tools ""`, `--strict-mcp-config` (and no `--mcp-config`), `--max-turns 1`: no built-in
  tools, no MCP servers, one model call: it answers, it does not act;
- `--disable-slash-commands`: a prompt starting with `/` is text, not a command;
- `--no-session-persistence`: nothing of the conversation is saved on the server;
- `--setting-sources ""`: no user, project or local settings (hooks, permissions);
- streamed requests: `--output-format stream-json --verbose --include-partial-messages`,
  which prints the API's own stream events as they arrive.

Its environment bounds the output to what capgate reserved: `CLAUDE_CODE_MAX_OUTPUT_TOKENS`
is the request's `max_tokens`, `MAX_THINKING_TOKENS` its thinking budget (0 without
`thinking`), and `CLAUDE_CODE_MAX_RETRIES=0` leaves retries to the gateway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from capgate.providers.prompt import (
    Turn,
    Unsupported,
    answer_status,
    check_model,
    merge,
    nano_from_usd,
    shorten,
    transcript,
)

SYSTEM = "system.md"
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # earlier turns' reasoning
_USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "cache_creation",
    "service_tier",
)


@dataclass(frozen=True, slots=True)
class ClaudeJob:
    model: str
    system: str
    prompt: str
    max_tokens: int
    thinking_tokens: int
    stream: bool

    def argv(self, program: str, workdir: Path) -> list[str]:
        output = (
            ["--output-format", "stream-json", "--verbose", "--include-partial-messages"]
            if self.stream
            else ["--output-format", "json"]
        )
        return [
            program, "-p", *output, "--model", self.model,
            "--system-prompt-file", str(workdir / SYSTEM), "--tools", "", "--strict-mcp-config",
            "--disable-slash-commands",
            "--no-session-persistence", "--max-turns", "1", "--setting-sources", "",
        ]  # fmt: skip

    def files(self) -> dict[str, str]:
        return {SYSTEM: self.system}

    def env(self) -> dict[str, str]:
        """Set last, over the provider's `env`: the budget depends on them."""
        return {
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(self.max_tokens),
            "MAX_THINKING_TOKENS": str(self.thinking_tokens),
        }


DEFAULT_ENV = {  # under the provider's `env`, which may change them
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
}


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Unsupported(f"{where}: content must be a string or a list of blocks")
    texts = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind not in _SKIPPED_BLOCKS:
            raise Unsupported(
                f'{where}: content blocks of type "{kind}" cannot be passed to a CLI provider '
                "(it takes text only: no images, documents or tool calls)"
            )
    return "\n\n".join(texts)


def messages_job(body: Any, default_max_tokens: int = 4096) -> ClaudeJob:
    """The Claude Code run for a Messages request, or Unsupported (-> 400)."""
    if not isinstance(body, dict):
        raise Unsupported("the request body must be a JSON object")
    model = check_model(body.get("model"))
    if body.get("tools"):
        raise Unsupported(
            "this provider runs a CLI, which cannot call client-defined tools: "
            "send the request without `tools`"
        )
    system = [] if body.get("system") is None else [_text_of(body["system"], "system")]
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Unsupported("`messages` must be a list")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant", "system"):
            raise Unsupported(f"messages[{i}]: role must be user or assistant, not {role!r}")
        text = _text_of(message.get("content"), f"messages[{i}]")
        if role == "system":  # some clients put system text among the turns
            system.append(text)
        else:
            turns.append(Turn(role, text))
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        max_tokens = default_max_tokens
    thinking = body.get("thinking")
    budget = 0
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        given = thinking.get("budget_tokens")
        budget = given if isinstance(given, int) and 0 < given < max_tokens else 0
    return ClaudeJob(
        model=model,
        system="\n\n".join(s for s in system if s),
        prompt=transcript(merge(turns)),
        max_tokens=max_tokens,
        thinking_tokens=budget,
        stream=body.get("stream") is True,
    )


# -- reading what Claude Code printed ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaudeResult:
    """Claude Code's final `result` object."""

    data: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return self.data.get("is_error") is not False or self.data.get("subtype") != "success"

    @property
    def text(self) -> str:
        result = self.data.get("result")
        return result if isinstance(result, str) else ""

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.data.get("usage")
        if not isinstance(usage, dict):
            return {}
        return {k: _plain(usage[k]) for k in _USAGE_FIELDS if k in usage}

    @property
    def cost_nano(self) -> int | None:
        return nano_from_usd(self.data.get("total_cost_usd"))

    @property
    def stop_reason(self) -> str:
        reason = self.data.get("stop_reason")
        return reason if isinstance(reason, str) and reason else "end_turn"

    def failure(self) -> tuple[int, str]:
        """The status to answer and a message, for a result that is an error."""
        status = self.data.get("api_error_status")
        detail = self.text or f"subtype {self.data.get('subtype')!r}"
        return answer_status(status), shorten(detail)


def _plain(value: Any) -> Any:
    """JSON numbers were read as Decimal (for the exact cost); usage counts are ints."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One JSON line of Claude Code's output. The result line is read again with its
    fractional numbers as Decimal from their own text, so `total_cost_usd` converts to
    nano-dollars exactly."""
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        data = orjson.loads(line)
        if isinstance(data, dict) and data.get("type") == "result":
            data = json.loads(line, parse_float=Decimal)
    except ValueError:  # orjson.JSONDecodeError is one too
        return None
    return data if isinstance(data, dict) else None


def find_result(output: bytes) -> ClaudeResult | None:
    """The result object in `--output-format json` output (the last JSON line)."""
    for line in reversed(output.splitlines()):
        data = parse_line(line)
        if data is not None and data.get("type") == "result":
            return ClaudeResult(data)
    return None


def message_body(result: ClaudeResult, model: str, message_id: str) -> bytes:
    """A Messages answer, as the API would send it."""
    return orjson.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": result.stop_reason,
            "stop_sequence": None,
            "usage": result.usage,
        }
    )


def error_body(status: int, message: str) -> bytes:
    kinds = {
        400: "invalid_request_error",
        404: "not_found_error",
        413: "request_too_large",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }
    kind = kinds.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class MessagesStream:
    """Claude Code's `stream-json` lines -> the Anthropic event stream.

    The API's own events (`stream_event` lines) pass through as they come, for the first
    message only. `message_delta` and `message_stop` wait for the final result, whose
    usage is the run's total: the last `message_delta` carries it, and the cost is known
    before `message_stop` (when capgate settles) goes out."""

    def __init__(self, model: str, message_id: str) -> None:
        self._model = model
        self._id = message_id
        self._message: str | None = None  # the id of the message being passed through
        self.started = False

    def feed(self, data: dict[str, Any]) -> bytes:
        if data.get("type") != "stream_event" or not isinstance(data.get("event"), dict):
            return b""
        event = data["event"]
        kind = event.get("type")
        if kind == "message_start":
            if self.started:  # a second model call (a retry): keep the first only
                return b""
            self.started = True
            self._message = data.get("api_message_id")
            return sse(event)
        if not self.started or data.get("api_message_id") != self._message:
            return b""
        if kind in ("message_delta", "message_stop"):
            return b""
        return sse(event)

    def finish(self, result: ClaudeResult) -> bytes:
        """The closing events (or the whole stream, if no event came through)."""
        out = b""
        if not self.started:
            self.started = True
            start: dict[str, Any] = {
                "id": self._id, "type": "message", "role": "assistant", "model": self._model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {**result.usage, "output_tokens": 0},
            }  # fmt: skip
            out += sse({"type": "message_start", "message": start})
            out += sse(
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}
            )  # fmt: skip
            if result.text:
                out += sse(
                    {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": result.text}}
                )  # fmt: skip
            out += sse({"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": result.stop_reason, "stop_sequence": None}
        out += sse({"type": "message_delta", "delta": delta, "usage": result.usage})
        return out + sse({"type": "message_stop"})


def stream_error(message: str, status: int = 502) -> bytes:
    kind = "rate_limit_error" if status == 429 else "api_error"
    return sse({"type": "error", "error": {"type": kind, "message": message}})


def message_id() -> str:
    return "msg_cli_" + os.urandom(12).hex()
