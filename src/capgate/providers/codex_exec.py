"""Codex (`codex exec`) as a Chat Completions provider: the request turned into its command
line and stdin, and its JSONL events turned back into a `chat.completion`. Pure.

What runs (Codex 0.169.0), with the prompt on stdin (`-`):

    codex exec --json --skip-git-repo-check --ephemeral --sandbox read-only --ignore-rules
        --color never --disable plugins --disable apps --disable hooks --disable shell_tool
        --disable multi_agent --disable goals
        -c approval_policy="never" -c model_instructions_file="DIR/instructions.md"
        -c include_environment_context=false -c include_permissions_instructions=false
        -c project_doc_max_bytes=0 -c web_search="disabled" -c skills.include_instructions=false
        -m MODEL -

- `model_instructions_file` replaces Codex's ~17,000-character coding-agent prompt with
  the request's system (and developer) messages;
- the `--disable`s and `-c`s remove the shell, plugins, apps, hooks, sub-agents, goals,
  web search, skills, AGENTS.md and the environment and sandbox notes: about 8,000 input
  tokens of agent overhead become about 300;
- `--sandbox read-only` and `approval_policy="never"`: should the model still reach for a
  tool, it can change nothing and nobody is asked;
- `--ephemeral`: no session files; `--json`: one event per line on stdout.

Codex's user config (`$CODEX_HOME/config.toml`: model provider, login) is read as usual.
It has no setting for the output limit, so `max_tokens` is not passed on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from capgate.providers.prompt import (
    Turn,
    Unsupported,
    answer_status,
    check_model,
    merge,
    shorten,
    transcript,
)

INSTRUCTIONS = "instructions.md"
_DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
_STATUS = re.compile(r"\bstatus:?\s+(\d{3})\b")


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (what `-c key=VALUE` parses)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@dataclass(frozen=True, slots=True)
class CodexJob:
    model: str
    instructions: str
    prompt: str
    stream: bool
    include_usage: bool

    def argv(self, program: str, workdir: Path) -> list[str]:
        config = {
            "approval_policy": '"never"',
            "model_instructions_file": toml_string(str(workdir / INSTRUCTIONS)),
            "include_environment_context": "false",
            "include_permissions_instructions": "false",
            "project_doc_max_bytes": "0",
            "web_search": '"disabled"',
            "skills.include_instructions": "false",
        }
        args = [
            program, "exec", "--json", "--skip-git-repo-check", "--ephemeral",
            "--sandbox", "read-only", "--ignore-rules", "--color", "never",
        ]  # fmt: skip
        for feature in ("plugins", "apps", "hooks", "shell_tool", "multi_agent", "goals"):
            args += ["--disable", feature]
        for key, value in config.items():
            args += ["-c", f"{key}={value}"]
        return [*args, "-m", self.model, "-"]

    def files(self) -> dict[str, str]:
        return {INSTRUCTIONS: self.instructions}


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Unsupported(f"{where}: content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise Unsupported(
                f'{where}: content parts of type "{kind}" cannot be passed to a CLI provider '
                "(it takes text only: no images, audio or files)"
            )
    return "\n\n".join(texts)


def chat_job(body: Any) -> CodexJob:
    """The Codex run for a Chat Completions request, or Unsupported (-> 400)."""
    if not isinstance(body, dict):
        raise Unsupported("the request body must be a JSON object")
    model = check_model(body.get("model"))
    if body.get("tools") or body.get("functions"):
        raise Unsupported(
            "this provider runs a CLI, which cannot call client-defined tools: "
            "send the request without `tools`"
        )
    n = body.get("n")
    if n is not None and n != 1:
        raise Unsupported("a CLI provider gives one choice: `n` must be 1")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Unsupported("`messages` must be a list")
    system: list[str] = []
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content"), where))
        elif role in ("user", "assistant"):
            if message.get("tool_calls") or message.get("function_call"):
                raise Unsupported(f"{where}: tool calls cannot be passed to a CLI provider")
            content = message.get("content")
            turns.append(Turn(role, "" if content is None else _text_of(content, where)))
        else:
            raise Unsupported(
                f"{where}: messages of role {role!r} cannot be passed to a CLI provider"
            )
    options = body.get("stream_options")
    return CodexJob(
        model=model,
        instructions="\n\n".join(s for s in system if s.strip()) or _DEFAULT_INSTRUCTIONS,
        prompt=transcript(merge(turns)),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


# -- reading what Codex printed -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodexResult:
    text: str | None  # the last agent message
    usage: dict[str, int] | None  # turn.completed's usage
    error: str | None  # turn.failed's message, else the last error event's

    def failure(self) -> tuple[int, str] | None:
        """The status to answer and a message when the run failed, else None."""
        if self.error is None and self.usage is not None:
            return None
        message = self.error or "Codex printed no completed turn"
        match = _STATUS.search(message)
        status = answer_status(int(match.group(1))) if match else 502
        if match is None and _is_invalid_request(message):
            status = 400  # Codex shows a 400's body as it came, without the status
        return status, shorten(message)


def _is_invalid_request(message: str) -> bool:
    try:
        data = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and error.get("type") == "invalid_request_error"


def read_events(output: bytes) -> CodexResult:
    text: str | None = None
    usage: dict[str, int] | None = None
    failed: str | None = None
    last_error: str | None = None  # e.g. "Reconnecting... 1/5 (...)"
    for line in output.splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "item.completed" and isinstance(event.get("item"), dict):
            item = event["item"]
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                text = item["text"]
        elif kind == "turn.completed" and isinstance(event.get("usage"), dict):
            usage = {k: v for k, v in event["usage"].items() if isinstance(v, int)}
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            failed = message if isinstance(message, str) else "the turn failed"
        elif kind == "error" and isinstance(event.get("message"), str):
            last_error = event["message"]
    if usage is not None and failed is None:
        return CodexResult(text, usage, None)  # earlier errors were retried away
    return CodexResult(text, usage, failed or last_error)


def _usage(result: CodexResult) -> dict[str, Any]:
    usage = result.usage or {}
    prompt = usage.get("input_tokens", 0)  # includes the cached ones
    completion = usage.get("output_tokens", 0)  # includes reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.get("cached_input_tokens", 0)},
        "completion_tokens_details": {"reasoning_tokens": usage.get("reasoning_output_tokens", 0)},
    }


def completion_body(result: CodexResult, model: str, completion_id: str, created: int) -> bytes:
    message = {"role": "assistant", "content": result.text or "", "refusal": None}
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": _usage(result),
        }
    )


def completion_stream(
    result: CodexResult, model: str, completion_id: str, created: int, include_usage: bool
) -> bytes:
    """The whole Chat Completions stream (Codex prints the message in one piece)."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    out = chunk({"role": "assistant", "content": ""}, None)
    if result.text:
        out += chunk({"content": result.text}, None)
    out += chunk({}, "stop")
    if include_usage:
        usage = {**base, "choices": [], "usage": _usage(result)}
        out += b"data: " + orjson.dumps(usage) + b"\n\n"
    return out + b"data: [DONE]\n\n"


def error_body(status: int, message: str) -> bytes:
    kind, code = {
        429: ("rate_limit_exceeded", "rate_limit_exceeded"),
        404: ("invalid_request_error", "model_not_found"),
    }.get(status, ("invalid_request_error", None))
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def completion_id() -> str:
    return "chatcmpl-cli-" + os.urandom(12).hex()
