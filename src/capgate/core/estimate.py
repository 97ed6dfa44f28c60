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

from capgate.core.frozen import quick_init
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


@quick_init
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

# Per-use fees of the server tools capgate can bound, in nano-dollars (as published: web
# search $10 / 1,000 uses, ...). Their results (search results, fetched pages) are added to
# the input, which the model's context window bounds.
_ANTHROPIC_SERVER_TOOLS = {  # type prefix: (fee per use, whether `max_uses` caps it)
    "web_search_": (10_000_000, True),
    "web_fetch_": (0, True),
    "tool_search_tool_": (0, False),  # adds tool definitions to the input, no fee
}
_ANTHROPIC_CLIENT_TOOLS = ("custom", "bash_", "text_editor_", "computer_", "memory_")
_RESPONSES_SERVER_TOOLS = {  # type prefix: fee per call; `max_tool_calls` caps them all
    "web_search_preview": 25_000_000,  # also its dated variants
    "web_search": 10_000_000,
    "file_search": 2_500_000,
    "mcp": 0,
}
# Hosted tools billed in ways no request field bounds (container time, images).
_RESPONSES_UNBOUNDED_TOOLS = ("code_interpreter", "image_generation")
# What capgate sets when a request leaves a server tool uncapped (`max_uses` on each
# Anthropic server tool, `max_tool_calls` on a Responses request), like max_tokens.
DEFAULT_TOOL_USES = 5
MAX_TOOL_USES = 1000


@quick_init
@dataclass(frozen=True, slots=True)
class Hidden:
    """What a request may cost beyond its body: input the provider adds from its own
    state or from server tools (`context` names why; the model's context window bounds
    it), per-use tool fees (an upper bound), or a reason it cannot be bounded at all."""

    context: str | None = None
    fee_nano: int = 0
    unbounded: str | None = None


def cap_server_tools(body: dict[str, Any], kind: str) -> bool:
    """Set DEFAULT_TOOL_USES where a server tool has no cap, so that the fees and the
    input it adds are bounded upstream too. Returns whether the body changed."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return False
    if kind == "responses":
        if body.get("max_tool_calls") is None and any(
            _responses_fee(t) is not None for t in tools if isinstance(t, dict)
        ):
            body["max_tool_calls"] = DEFAULT_TOOL_USES
            return True
        return False
    if kind != "messages":
        return False
    changed = False
    for i, tool in enumerate(tools):
        server = _anthropic_server_tool(tool)
        if server is not None and server[1] and "max_uses" not in tool:
            tools[i] = {**tool, "max_uses": DEFAULT_TOOL_USES}
            changed = True
    return changed


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


def _uses(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{name}: must be a positive integer")
    if value > MAX_TOOL_USES:
        raise InvalidRequest(f"{name}: {value} is more than capgate holds a budget for")
    return value


def _anthropic_server_tool(tool: Any) -> tuple[int, bool] | None:
    """(fee per use, capped by max_uses) of a server tool; None for a client tool.
    A typed tool of a kind capgate does not know counts as a server tool it cannot
    bound (fee -1)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str) or kind.startswith(_ANTHROPIC_CLIENT_TOOLS):
        return None
    found = next((v for p, v in _ANTHROPIC_SERVER_TOOLS.items() if kind.startswith(p)), None)
    return (-1, False) if found is None else found


def _messages_hidden(body: dict[str, Any]) -> Hidden:
    context: str | None = None
    if body.get("mcp_servers"):
        context = "mcp_servers (tool results added by the provider)"
    fee = 0
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        server = _anthropic_server_tool(tool)
        if server is None:
            continue
        kind = tool["type"]
        per_use, capped = server
        if per_use < 0:
            return Hidden(
                unbounded=f'server tool "{kind}": billed by the provider in a way no field '
                "of the request bounds"
            )
        if capped:
            fee += per_use * _uses(tool.get("max_uses"), f"tools[{kind}].max_uses")
        context = context or f'server tool "{kind}" (its results are added to the input)'
    return Hidden(context, fee)


def _responses_fee(tool: dict[str, Any]) -> int | None:
    """The fee per call of a hosted tool; -1: one capgate cannot bound; None: a tool the
    client runs (functions, Codex's own kinds, and any type capgate does not know)."""
    kind = tool.get("type")
    if not isinstance(kind, str):
        return None
    if kind.startswith(_RESPONSES_UNBOUNDED_TOOLS):
        return -1
    return next((f for p, f in _RESPONSES_SERVER_TOOLS.items() if kind.startswith(p)), None)


def _responses_hidden(body: dict[str, Any]) -> Hidden:
    context: str | None = None
    for field in ("previous_response_id", "conversation", "prompt"):
        if body.get(field) is not None:
            context = f"{field} (context stored by the provider)"
            break
    tools = body.get("tools")
    server: list[tuple[str, int]] = []
    for tool in tools if isinstance(tools, list) else ():
        fee = _responses_fee(tool) if isinstance(tool, dict) else None
        if fee is None:
            continue
        if fee < 0:
            return Hidden(
                unbounded=f'hosted tool "{tool["type"]}": billed by the provider in a way no '
                "field of the request bounds"
            )
        server.append((tool["type"], fee))
    if not server:
        return Hidden(context)
    calls = _uses(body.get("max_tool_calls"), "max_tool_calls")
    fee = max(f for _, f in server) * calls  # each call at the dearest tool's fee
    return Hidden(
        context or f'hosted tool "{server[0][0]}" (its results are added to the input)', fee
    )
