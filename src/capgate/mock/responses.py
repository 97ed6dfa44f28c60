"""Answers in the Anthropic Messages, OpenAI Chat Completions and OpenAI Responses formats.

Every function takes the already-parsed JSON request body and does no I/O, so the gateway's
demo mode can call them in-process and the HTTP server only adds transport. They are pure
except for fresh ids and timestamps, which are unique per call as with the real services
(a gateway may key its logs by the upstream id).

With the ``mock:tool`` directive the answer is a call to the first tool the request
defines, in each dialect's shape; its JSON arguments are the pieces that stream out.

Streams are iterators of complete SSE events, one ``bytes`` item per event, so a server can
flush each one as soon as it is produced. Shapes follow the real services closely enough for
the official SDKs to parse them, including their stream accumulators.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from capgate.mock.generation import Completion, as_limit, complete, input_tokens

Body = Mapping[str, Any]
JSONObject = dict[str, Any]
_T = TypeVar("_T")

# Anthropic groups a few tokens per text delta; OpenAI sends one token per chunk.
_ANTHROPIC_WORDS_PER_DELTA = 3
_FINGERPRINT = "fp_capgate_mock"
_DEFAULT_MODEL = "capgate-mock"


# --- Anthropic Messages -------------------------------------------------------------------


def anthropic_message(body: Body) -> JSONObject:
    """A complete ``message`` object, as POST /v1/messages returns without streaming."""
    answer = complete(body, as_limit(body.get("max_tokens")))
    block: JSONObject = {"type": "text", "text": answer.text}
    if answer.tool is not None:
        block = _tool_use(answer, orjson.loads(answer.text))
    message = _anthropic_envelope(body, [block])
    message["stop_reason"] = _anthropic_stop_reason(answer)
    if not answer.directives.no_usage:
        usage = _anthropic_usage(answer.input_tokens, answer.output_tokens)
        message["usage"] = answer.directives.usage(usage)
    return message


def anthropic_stream(body: Body) -> Iterator[bytes]:
    """The SSE events of a streamed message, in the order the real API sends them."""
    answer = complete(body, as_limit(body.get("max_tokens")))
    cut = answer.directives.cut_stream
    with_usage = not answer.directives.no_usage

    start = _anthropic_envelope(body, [])
    if with_usage:
        # The real API reports the input up front and a placeholder of one output token.
        start["usage"] = answer.directives.usage(_anthropic_usage(answer.input_tokens, 1))
    yield _sse("message_start", {"type": "message_start", "message": start})
    block = {"type": "text", "text": ""} if answer.tool is None else _tool_use(answer, {})
    yield _sse(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )
    yield _sse("ping", {"type": "ping"})
    for text in _cut_if(cut, _groups(answer.pieces, _ANTHROPIC_WORDS_PER_DELTA)):
        delta = {"type": "text_delta", "text": text}
        if answer.tool is not None:
            delta = {"type": "input_json_delta", "partial_json": text}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    if cut:
        return
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    message_delta: JSONObject = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop_reason(answer), "stop_sequence": None},
    }
    if with_usage:
        message_delta["usage"] = answer.directives.usage({"output_tokens": answer.output_tokens})
    yield _sse("message_delta", message_delta)
    yield _sse("message_stop", {"type": "message_stop"})


def anthropic_count_tokens(body: Body) -> JSONObject:
    """POST /v1/messages/count_tokens: the input_tokens a message call would report."""
    return {"input_tokens": input_tokens(body)}


def _anthropic_envelope(body: Body, content: list[JSONObject]) -> JSONObject:
    return {
        "id": _new_id("msg_mock_"),
        "type": "message",
        "role": "assistant",
        "model": _model(body),
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
    }


def _anthropic_usage(input_count: int, output_count: int) -> JSONObject:
    return {
        "input_tokens": input_count,
        "output_tokens": output_count,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _anthropic_stop_reason(answer: Completion) -> str:
    if answer.tool is not None:
        return "tool_use"
    return "max_tokens" if answer.truncated else "end_turn"


def _tool_use(answer: Completion, arguments: JSONObject) -> JSONObject:
    return {
        "type": "tool_use",
        "id": _new_id("toolu_mock_"),
        "name": answer.tool,
        "input": arguments,
    }


# --- OpenAI Chat Completions --------------------------------------------------------------


def openai_chat(body: Body) -> JSONObject:
    """A ``chat.completion`` object, as POST /v1/chat/completions returns without streaming."""
    answer = complete(body, _openai_chat_limit(body))
    message: JSONObject = {
        "role": "assistant",
        "content": answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool is not None:
        message["content"] = None
        message["tool_calls"] = [_tool_call(answer, answer.text)]
    completion = _openai_chat_envelope(body, "chat.completion")
    completion["choices"] = [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(answer)}
    ]
    if not answer.directives.no_usage:
        completion["usage"] = answer.directives.usage(_openai_chat_usage(answer))
    return completion


def openai_chat_stream(body: Body) -> Iterator[bytes]:
    """``chat.completion.chunk`` events, then the usage chunk if asked for, then [DONE].

    Like OpenAI, usage is only sent when ``stream_options.include_usage`` is true, as an
    extra chunk with no choices; every earlier chunk then carries ``"usage": null``.
    """
    answer = complete(body, _openai_chat_limit(body))
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    cut = answer.directives.cut_stream
    head = _openai_chat_envelope(body, "chat.completion.chunk")
    if include_usage:
        head["usage"] = None

    def chunk(delta: JSONObject, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse(None, {**head, "choices": [choice]})

    if answer.tool is None:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
    else:  # as OpenAI does: the call's id and name come with the role
        call = {"index": 0, **_tool_call(answer, "")}
        yield chunk({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
    for piece in _cut_if(cut, answer.pieces):
        if answer.tool is None:
            yield chunk({"content": piece})
        else:
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    if cut:
        return
    yield chunk({}, _finish_reason(answer))
    if include_usage and not answer.directives.no_usage:
        usage = answer.directives.usage(_openai_chat_usage(answer))
        yield _sse(None, {**head, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _openai_chat_envelope(body: Body, kind: str) -> JSONObject:
    return {
        "id": _new_id("chatcmpl-mock"),
        "object": kind,
        "created": int(time.time()),
        "model": _model(body),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }


def _openai_chat_limit(body: Body) -> int | None:
    # max_completion_tokens replaced the deprecated max_tokens and wins when both are set.
    limit = as_limit(body.get("max_completion_tokens"))
    return limit if limit is not None else as_limit(body.get("max_tokens"))


def _openai_chat_usage(answer: Completion) -> JSONObject:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(answer: Completion) -> str:
    if answer.tool is not None:
        return "tool_calls"
    return "length" if answer.truncated else "stop"


def _tool_call(answer: Completion, arguments: str) -> JSONObject:
    function = {"name": answer.tool, "arguments": arguments}
    return {"id": _new_id("call_mock"), "type": "function", "function": function}


# --- OpenAI Responses ---------------------------------------------------------------------


def openai_responses(body: Body) -> JSONObject:
    """A ``response`` object, as POST /v1/responses returns without streaming."""
    answer = complete(body, as_limit(body.get("max_output_tokens")))
    item = _output_item(_new_id(_item_prefix(answer)), answer)
    identity = (_new_id("resp_mock"), int(time.time()))
    return _response_object(body, identity, _final_status(answer), [item], answer)


def openai_responses_stream(body: Body) -> Iterator[bytes]:
    """Responses API stream events, ending with response.completed.

    Each event's data carries its ``type`` and a ``sequence_number`` counting from 0; the
    last one carries the full response with usage. As with the real API, an answer cut by
    max_output_tokens ends with response.incomplete instead, which also carries usage.
    """
    answer = complete(body, as_limit(body.get("max_output_tokens")))
    identity = (_new_id("resp_mock"), int(time.time()))  # shared by all its snapshots
    item_id = _new_id(_item_prefix(answer))
    numbers = itertools.count()
    position = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(numbers), **fields})

    opening = _response_object(body, identity, "in_progress", [], answer)
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    if answer.tool is not None:
        yield from _function_call_events(event, _output_item(item_id, answer), answer)
        if answer.directives.cut_stream:
            return
        closing = _response_object(
            body, identity, "completed", [_output_item(item_id, answer)], answer
        )
        yield event("response.completed", response=closing)
        return
    empty_item = {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    yield event("response.output_item.added", output_index=0, item=empty_item)
    yield event("response.content_part.added", **position, part=_output_text(""))
    for piece in _cut_if(answer.directives.cut_stream, answer.pieces):
        yield event("response.output_text.delta", **position, delta=piece, logprobs=[])
    if answer.directives.cut_stream:
        return
    yield event("response.output_text.done", **position, text=answer.text, logprobs=[])
    yield event("response.content_part.done", **position, part=_output_text(answer.text))
    item = _output_item(item_id, answer)
    yield event("response.output_item.done", output_index=0, item=item)
    status = _final_status(answer)
    closing = _response_object(body, identity, status, [item], answer)
    yield event(f"response.{status}", response=closing)


def _response_object(
    body: Body,
    identity: tuple[str, int],
    status: str,
    output: list[JSONObject],
    answer: Completion,
) -> JSONObject:
    """The response object; ``identity`` is (id, created_at). Usage only once final."""
    response_id, created_at = identity
    final = status != "in_progress"
    usage = None
    if final and not answer.directives.no_usage:
        usage = answer.directives.usage(_responses_usage(answer))
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    # Request settings are echoed back, with the real API's defaults when absent.
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata", {}),
        "model": _model(body),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
    }


def _function_call_events(
    event: Callable[..., bytes], done: JSONObject, answer: Completion
) -> Iterator[bytes]:
    """The events of one function_call output item (``done``), its arguments streamed in
    pieces."""
    item_id = done["id"]
    yield event(
        "response.output_item.added",
        output_index=0,
        item={**done, "arguments": "", "status": "in_progress"},
    )
    position = {"item_id": item_id, "output_index": 0}
    for piece in _cut_if(answer.directives.cut_stream, answer.pieces):
        yield event("response.function_call_arguments.delta", **position, delta=piece)
    if answer.directives.cut_stream:
        return
    yield event("response.function_call_arguments.done", **position, arguments=answer.text)
    yield event("response.output_item.done", output_index=0, item=done)


def _output_item(item_id: str, answer: Completion) -> JSONObject:
    """The answer as one output item: a message, or a function_call for a tool call."""
    if answer.tool is not None:
        return {
            "id": item_id,
            "type": "function_call",
            "status": "completed",
            "arguments": answer.text,
            "call_id": "call_" + item_id.removeprefix("fc_"),
            "name": answer.tool,
        }
    return {
        "id": item_id,
        "type": "message",
        "status": _final_status(answer),
        "role": "assistant",
        "content": [_output_text(answer.text)],
    }


def _item_prefix(answer: Completion) -> str:
    return "msg_mock" if answer.tool is None else "fc_mock"


def _output_text(text: str) -> JSONObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _responses_usage(answer: Completion) -> JSONObject:
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _final_status(answer: Completion) -> str:
    return "incomplete" if answer.truncated else "completed"


# --- shared -------------------------------------------------------------------------------


def _sse(event: str | None, data: object) -> bytes:
    """One SSE event. orjson output holds no newline, so the data fits on one line."""
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _groups(pieces: Sequence[str], size: int) -> list[str]:
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]


def _cut_if(cut: bool, items: Sequence[_T]) -> Sequence[_T]:
    """The first half of ``items`` when a stream is to be cut, else all of them."""
    return items[: len(items) // 2] if cut else items


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _model(body: Body) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else _DEFAULT_MODEL


# --- model lists --------------------------------------------------------------------------

# Any model name is accepted by the mock; these lists only let clients discover a few.
_ANTHROPIC_MODELS = ("claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5")
_OPENAI_MODELS = ("gpt-4.1", "gpt-4o", "gpt-4o-mini")
_MODELS_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z, fixed so listings are stable


def anthropic_models() -> JSONObject:
    """GET /v1/models in the Anthropic format (one page holding every model)."""
    data = [
        {
            "type": "model",
            "id": name,
            "display_name": name,
            "created_at": "2025-01-01T00:00:00Z",
        }
        for name in _ANTHROPIC_MODELS
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def openai_models() -> JSONObject:
    """GET /v1/models in the OpenAI format."""
    data = [
        {"id": name, "object": "model", "created": _MODELS_CREATED, "owned_by": "capgate-mock"}
        for name in _OPENAI_MODELS
    ]
    return {"object": "list", "data": data}
