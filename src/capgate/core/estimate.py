"""What the engine needs to know about a request, and its worst case.

Only a few fields are read; the body itself is passed on untouched. The input bound is a
true upper bound on the tokens a model can read from the request: a byte-level tokenizer
never makes more tokens than UTF-8 bytes of text, JSON encoding only adds bytes, and what
is not text (images, PDF documents, the provider's own tool prompt) gets a
generous fixed allowance. It is deliberately loose; budgets close to their end pay for it
with an earlier refusal, never with an overspend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capgate.errors import InvalidRequest

REQUEST_OVERHEAD = 1_000  # system prompt for tools, formatting tokens
MESSAGE_OVERHEAD = 8  # role markers and separators per message
IMAGE_ALLOWANCE = 3_000  # a resized image costs ~1,600 (Anthropic) to ~2,500 (OpenAI) tokens
# A PDF's pages are read as images too, and neither a URL nor compressed bytes bound them;
# one model context (200K tokens) bounds any document. Plain-text documents need no extra.
DOCUMENT_ALLOWANCE = 200_000

# No model writes more than this in one answer (the largest limits are ~128K); a larger
# max_tokens is a client bug, and a worst case far past any budget or the store's 64-bit
# integers. OpenAI allows at most 128 choices.
MAX_OUTPUT_TOKENS = 2**31 - 1
MAX_CHOICES = 128

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_DOCUMENT_TYPES = frozenset({"document", "file", "input_file"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str
    stream: bool
    max_output: int | None  # what the client asked for; None = not given
    choices: int = 1  # OpenAI `n`: each choice may produce max_output tokens


def _require_model(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    return model


def _positive_int(body: dict[str, Any], name: str, most: int = MAX_OUTPUT_TOKENS) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{name}: must be a positive integer")
    if value > most:
        raise InvalidRequest(f"{name}: {value} is more than any model allows (at most {most:,})")
    return value


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean")
    return stream


def anthropic_facts(body: Any) -> RequestFacts:
    model = _require_model(body)
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: field required (a list)")
    return RequestFacts(model, _stream_flag(body), _positive_int(body, "max_tokens"))


def openai_chat_facts(body: Any) -> RequestFacts:
    model = _require_model(body)
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: field required (a list)")
    max_out = _positive_int(body, "max_completion_tokens")
    if max_out is None:
        max_out = _positive_int(body, "max_tokens")
    choices = _positive_int(body, "n", MAX_CHOICES) or 1
    return RequestFacts(model, _stream_flag(body), max_out, choices)


def responses_facts(body: Any) -> RequestFacts:
    """OpenAI Responses: `input` is a string or a list of items."""
    model = _require_model(body)
    if not isinstance(body.get("input"), str | list):
        raise InvalidRequest("input: field required (a string or a list)")
    return RequestFacts(model, _stream_flag(body), _positive_int(body, "max_output_tokens"))


def input_bound(body: dict[str, Any], body_bytes: int) -> int:
    """An upper bound on the input tokens of a Messages, Chat Completions or Responses
    request."""
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")  # Responses
    count = len(messages) if isinstance(messages, list) else 0
    extra = _non_text_allowance(messages) + _non_text_allowance(body.get("system"))
    return body_bytes + REQUEST_OVERHEAD + MESSAGE_OVERHEAD * count + extra


def _non_text_allowance(node: Any, depth: int = 0) -> int:
    """Allowances for content blocks whose tokens their bytes do not bound."""
    if depth > 8:
        return 0
    total = 0
    if isinstance(node, list):
        for item in node:
            total += _non_text_allowance(item, depth + 1)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _IMAGE_TYPES:
            total += IMAGE_ALLOWANCE
        elif kind in _DOCUMENT_TYPES:
            source = node.get("source")
            is_text = isinstance(source, dict) and source.get("type") in {"text", "content"}
            total += MESSAGE_OVERHEAD if is_text else DOCUMENT_ALLOWANCE
        content = node.get("content")
        if isinstance(content, list):  # messages, tool results
            total += _non_text_allowance(content, depth + 1)
    return total


# -- input and fees the body does not show ---------------------------------------------

NANO_PER_USD = 10**9
# Per-use fees of the server tools capgate can bound (USD per 1,000 uses, as published).
# Tool results (search results, fetched pages) are added to the input, which the model's
# context window bounds.
_ANTHROPIC_SERVER_TOOLS = {"web_search_": 10, "web_fetch_": 0}
_ANTHROPIC_CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")
_RESPONSES_SERVER_TOOLS = {
    "web_search_preview": 25,  # also its dated variants
    "web_search": 10,
    "file_search": 2.5,
    "mcp": 0,
}
_RESPONSES_CLIENT_TOOLS = frozenset(
    {"function", "custom", "local_shell", "shell", "apply_patch", "computer_use_preview"}
)


@dataclass(frozen=True, slots=True)
class Hidden:
    """What a request may cost beyond its body: input the provider adds from its own
    state or from server tools (`context` names why; the model's context window bounds
    it), per-use tool fees (an upper bound), or a reason it cannot be bounded at all."""

    context: str | None = None
    fee_nano: int = 0
    unbounded: str | None = None


def hidden_costs(body: dict[str, Any], kind: str) -> Hidden:
    """`kind`: "messages", "chat" or "responses"."""
    if kind == "messages":
        return _messages_hidden(body)
    if kind == "responses":
        return _responses_hidden(body)
    if body.get("web_search_options") is not None:
        return Hidden(
            unbounded="web_search_options: the searches a Chat Completions search model "
            "makes (each billed, their results added to the input) have no cap to bound them"
        )
    return Hidden()


def _fee_nano(per_thousand_usd: float, uses: int) -> int:
    return int(per_thousand_usd * 1000) * NANO_PER_USD // 1_000_000 * uses


def _uses(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{name}: must be a positive integer")
    if value > MAX_CHOICES * 100:
        raise InvalidRequest(f"{name}: {value} is more than capgate can hold a budget for")
    return value


def _messages_hidden(body: dict[str, Any]) -> Hidden:
    context: str | None = None
    if body.get("mcp_servers"):
        context = "mcp_servers (tool results added by the provider)"
    fee = 0
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if (
            not isinstance(kind, str)
            or kind == "custom"
            or kind.startswith(_ANTHROPIC_CLIENT_TOOLS)
        ):
            continue
        per_thousand = next(
            (f for prefix, f in _ANTHROPIC_SERVER_TOOLS.items() if kind.startswith(prefix)), None
        )
        if per_thousand is None:
            return Hidden(
                unbounded=f'server tool "{kind}": billed by the provider in a way no field '
                "of the request bounds"
            )
        assert isinstance(tool, dict)
        if "max_uses" not in tool:
            return Hidden(
                unbounded=f'server tool "{kind}" has no max_uses, so its fees and the input '
                "it adds have no bound: set max_uses on the tool"
            )
        fee += _fee_nano(per_thousand, _uses(tool["max_uses"], f"tools[{kind}].max_uses"))
        context = context or f'server tool "{kind}" (its results are added to the input)'
    return Hidden(context, fee)


def _responses_hidden(body: dict[str, Any]) -> Hidden:
    context: str | None = None
    for field in ("previous_response_id", "conversation", "prompt"):
        if body.get(field) is not None:
            context = f"{field} (context stored by the provider)"
            break
    tools = body.get("tools")
    server: list[tuple[str, float]] = []
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind in _RESPONSES_CLIENT_TOOLS:
            continue
        per_thousand = next(
            (f for prefix, f in _RESPONSES_SERVER_TOOLS.items() if kind.startswith(prefix)), None
        )
        if per_thousand is None:
            return Hidden(
                unbounded=f'built-in tool "{kind}": billed by the provider in a way no field '
                "of the request bounds"
            )
        server.append((kind, per_thousand))
    if not server:
        return Hidden(context)
    if body.get("max_tool_calls") is None:
        return Hidden(
            unbounded=f'built-in tool "{server[0][0]}" with no max_tool_calls, so its fees and '
            "the input it adds have no bound: set max_tool_calls"
        )
    calls = _uses(body["max_tool_calls"], "max_tool_calls")
    fee = _fee_nano(max(f for _, f in server), calls)  # each call at the dearest tool's fee
    return Hidden(
        context or f'built-in tool "{server[0][0]}" (its results are added to the input)', fee
    )
