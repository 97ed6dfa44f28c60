"""The mock upstream, exercised over real HTTP with the official Anthropic and OpenAI SDKs.

The server runs in a background thread (capgate.mock.runner.MockUpstream), so the blocking
SDK clients can be used directly and no async pytest plugin is needed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.mock import responses
from capgate.mock.directives import (
    Directives,
    after_tool_result,
    last_user_images,
    last_user_text,
    parse_directives,
)
from capgate.mock.generation import input_tokens, tool_arguments
from capgate.mock.runner import MockUpstream

# Not a real model name: the SDK warns about deprecated ones, and the mock accepts any.
MODEL = "claude-capgate-mock"
GPT = "gpt-4o-mini"


# Named apart from conftest's session-wide "upstream" (a subprocess), because these tests
# need the in-thread server's request log.
@pytest.fixture(scope="module")
def mock_server() -> Iterator[MockUpstream]:
    with MockUpstream() as server:
        yield server


@pytest.fixture
def claude(mock_server: MockUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="sk-test", base_url=mock_server.url, max_retries=0) as client:
        yield client


@pytest.fixture
def gpt(mock_server: MockUpstream) -> Iterator[openai.OpenAI]:
    base_url = mock_server.url + "/v1"
    with openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0) as client:
        yield client


@pytest.fixture
def raw(mock_server: MockUpstream) -> Iterator[httpx.Client]:
    """A plain HTTP client, for what the SDKs hide (headers, exact bytes, broken streams)."""
    with httpx.Client(base_url=mock_server.url, trust_env=False, timeout=10) as client:
        yield client


def user(text: str) -> Any:
    """A one-turn conversation, typed Any to fit every SDK's TypedDict message params."""
    return [{"role": "user", "content": text}]


def text_of(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    return block.text


def sse_data(lines: list[str]) -> list[Any]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


# --- directives and pure functions ----------------------------------------------------------


def test_parse_directives_reads_every_kind() -> None:
    text = "hi mock:status=429 mock:delay_ms=5 mock:stream_delay_ms=7 mock:words=3 mock:cut_stream"
    assert parse_directives(text + " mock:no_usage mock:tool") == Directives(
        status=429,
        delay_ms=5,
        stream_delay_ms=7,
        words=3,
        cut_stream=True,
        no_usage=True,
        tool=True,
    )


def test_parse_directives_ignores_unknown_and_out_of_range() -> None:
    assert parse_directives(
        "mock:status=200 mock:bogus=1 mock:words mock:cut_stream=1 mock:tool=1"
    ) == (Directives())
    assert parse_directives("plain text") == Directives()


def test_last_user_text_covers_all_dialects() -> None:
    blocks = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    turns = [
        *user("first"),
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": blocks},
    ]
    assert last_user_text({"messages": turns}) == "a b"
    assert last_user_text({"input": "just a string"}) == "just a string"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hey"}]}
    assert last_user_text({"input": [item]}) == "hey"
    assert last_user_text({"messages": "not a list"}) == ""


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_turn = st.fixed_dictionaries({}, optional={"role": _text, "content": _json})
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": _text,
        "system": _json,
        "instructions": _json,
        "messages": _json | st.lists(_turn | _json, max_size=5),
        "input": _json | st.lists(_turn | _json, max_size=5),
        "tools": _json,
    },
)


@settings(database=None, deadline=None, max_examples=300)
@given(_body)
def test_input_tokens_never_exceed_body_bytes(body: dict[str, Any]) -> None:
    # orjson writes the most compact form a client could send, so this is the tight bound.
    assert 1 <= input_tokens(body) <= len(orjson.dumps(body))


def test_input_tokens_are_deterministic_and_grow_with_the_prompt() -> None:
    short = {"model": MODEL, "messages": user("hello")}
    long = {"model": MODEL, "messages": user("hello " * 400)}
    assert input_tokens(short) == input_tokens(dict(short))
    assert input_tokens(long) > input_tokens(short)
    assert 400 <= input_tokens(long) <= 700  # about 4 bytes a token


def test_anthropic_stream_events_are_complete_sse_events() -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": user("mock:words=7")}
    events = list(responses.anthropic_stream(body))
    names = [event.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for event in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for event in events:
        assert event.endswith(b"\n\n") and event.count(b"\n") == 3
    start = json.loads(events[0].split(b"data: ", 1)[1])
    assert start["message"]["usage"]["output_tokens"] == 1
    assert start["message"]["usage"]["input_tokens"] == input_tokens(body)


def test_openai_chat_stream_ends_with_done() -> None:
    body = {"model": GPT, "messages": user("hi"), "stream": True}
    events = list(responses.openai_chat_stream(body))
    assert events[-1] == b"data: [DONE]\n\n"
    assert all(event.startswith(b"data: ") for event in events)


# --- Anthropic over HTTP ---------------------------------------------------------------------


def test_anthropic_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=100, messages=user("What is the capital of France?")
    )
    assert message.id.startswith("msg_mock_")
    assert message.model == MODEL
    assert message.role == "assistant"
    text = text_of(message)
    assert text == "Hello from the capgate mock. You said: What is the capital of France?"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(text.split())
    assert message.usage.input_tokens == input_tokens(
        {"model": MODEL, "messages": user("What is the capital of France?")}
    )
    assert message.usage.cache_read_input_tokens == 0


def test_anthropic_stream_helper_final_message(claude: anthropic.Anthropic) -> None:
    messages = user("stream this please")
    with claude.messages.stream(model=MODEL, max_tokens=100, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text_of(final) == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(text.split())
    plain = claude.messages.create(model=MODEL, max_tokens=100, messages=messages)
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_anthropic_raw_stream_event_order(claude: anthropic.Anthropic) -> None:
    stream = claude.messages.create(
        model=MODEL, max_tokens=100, messages=user("mock:words=4"), stream=True
    )
    with stream:
        types = [event.type for event in stream]
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_words_directive_sets_output_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=500, messages=user("mock:words=42"))
    assert message.usage.output_tokens == 42
    assert len(text_of(message).split()) == 42
    assert message.stop_reason == "end_turn"


def test_anthropic_max_tokens_truncates(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=10, messages=user("mock:words=50"))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 10
    assert len(text_of(message).split()) == 10
    with claude.messages.stream(model=MODEL, max_tokens=10, messages=user("mock:words=50")) as s:
        final = s.get_final_message()
    assert (final.stop_reason, final.usage.output_tokens) == ("max_tokens", 10)


def test_anthropic_count_tokens_matches_message(claude: anthropic.Anthropic) -> None:
    system = "You are terse."
    messages = [*user("one"), {"role": "assistant", "content": "two"}, *user("three four")]
    counted = claude.messages.count_tokens(model=MODEL, system=system, messages=messages)
    message = claude.messages.create(model=MODEL, max_tokens=50, system=system, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens


def test_anthropic_beta_sdk_and_query(
    claude: anthropic.Anthropic, raw: httpx.Client, mock_server: MockUpstream
) -> None:
    message = claude.beta.messages.create(
        model=MODEL, max_tokens=20, messages=user("beta"), betas=["some-feature-2025-01-01"]
    )
    assert message.stop_reason == "end_turn"
    assert mock_server.last_request().headers["anthropic-beta"] == "some-feature-2025-01-01"
    # Claude Code calls "/v1/messages?beta=true"; the query must not change the route.
    body = {"model": MODEL, "max_tokens": 20, "messages": user("beta")}
    reply = raw.post("/v1/messages?beta=true", headers={"x-api-key": "k"}, json=body)
    assert reply.json()["usage"] == message.usage.model_dump(exclude_none=True)
    assert mock_server.last_request().query == {"beta": "true"}
    counted = raw.post("/v1/messages/count_tokens?beta=true", headers={"x-api-key": "k"}, json=body)
    assert counted.json() == {"input_tokens": message.usage.input_tokens}


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_injected_errors(
    claude: anthropic.Anthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(error_class) as caught:
        claude.messages.create(model=MODEL, max_tokens=10, messages=user(f"mock:status={status}"))
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": f"Injected by mock:status={status}."},
    }


def test_anthropic_injected_error_on_stream(claude: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.RateLimitError),
        claude.messages.stream(model=MODEL, max_tokens=10, messages=user("mock:status=429")),
    ):
        pass


def test_anthropic_missing_max_tokens_is_400(raw: httpx.Client) -> None:
    reply = raw.post(
        "/v1/messages", headers={"x-api-key": "k"}, json={"model": MODEL, "messages": user("hi")}
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


def test_models_list_in_both_dialects(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    assert all(model.type == "model" for model in claude.models.list())
    assert GPT in [model.id for model in gpt.models.list()]


# --- OpenAI Chat Completions over HTTP -------------------------------------------------------


def test_openai_chat(gpt: openai.OpenAI) -> None:
    completion = gpt.chat.completions.create(model=GPT, messages=user("Say hi"))
    assert completion.id.startswith("chatcmpl-mock")
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.content == "Hello from the capgate mock. You said: Say hi"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == len(choice.message.content.split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens == input_tokens({"model": GPT, "messages": user("Say hi")})
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_chat_stream_without_usage(gpt: openai.OpenAI) -> None:
    stream = gpt.chat.completions.create(model=GPT, messages=user("mock:words=5"), stream=True)
    with stream:
        chunks = list(stream)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert len(text.split()) == 5
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_chat_stream_with_usage(gpt: openai.OpenAI) -> None:
    stream = gpt.chat.completions.create(
        model=GPT,
        messages=user("mock:words=5"),
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert all(chunk.usage is None and chunk.choices for chunk in content)


def test_openai_chat_stream_usage_null_on_the_wire(raw: httpx.Client) -> None:
    body = {"model": GPT, "messages": user("hi"), "stream": True}
    headers = {"authorization": "Bearer k"}
    plain = raw.post("/v1/chat/completions", headers=headers, json=body)
    asked = raw.post(
        "/v1/chat/completions",
        headers=headers,
        json={**body, "stream_options": {"include_usage": True}},
    )
    assert plain.headers["content-type"].startswith("text/event-stream")
    assert all("usage" not in chunk for chunk in sse_data(plain.text.splitlines()))
    chunks = sse_data(asked.text.splitlines())
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert plain.text.endswith("data: [DONE]\n\n") and asked.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_openai_chat_length_limit(gpt: openai.OpenAI, limit_field: str) -> None:
    limit: Any = {limit_field: 7}
    completion = gpt.chat.completions.create(model=GPT, messages=user("mock:words=30"), **limit)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 7


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
    ],
)
def test_openai_injected_errors(
    gpt: openai.OpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class) as caught:
        gpt.chat.completions.create(model=GPT, messages=user(f"mock:status={status}"))
    assert caught.value.status_code == status
    error = caught.value.body
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}


# --- OpenAI Responses over HTTP --------------------------------------------------------------


def test_openai_responses_string_input(gpt: openai.OpenAI) -> None:
    response = gpt.responses.create(model=GPT, input="Tell me a joke")
    assert response.id.startswith("resp_mock")
    assert response.status == "completed"
    assert response.output_text == "Hello from the capgate mock. You said: Tell me a joke"
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == len(response.output_text.split())
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_openai_responses_item_input_and_limit(gpt: openai.OpenAI) -> None:
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "mock:words=40"}]}]
    response = gpt.responses.create(
        model=GPT,
        input=items,
        instructions="Be brief.",
        max_output_tokens=16,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 16
    assert response.instructions == "Be brief."


def test_openai_responses_stream_events(gpt: openai.OpenAI) -> None:
    stream = gpt.responses.create(model=GPT, input="mock:words=6", stream=True)
    with stream:
        events = list(stream)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types.count("response.output_text.delta") == 6
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.usage is not None and last.response.usage.output_tokens == 6


def test_openai_responses_stream_helper(gpt: openai.OpenAI) -> None:
    with gpt.responses.stream(model=GPT, input="streamed") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == len(deltas)


def test_openai_responses_truncated_stream_ends_incomplete(gpt: openai.OpenAI) -> None:
    # Like the real API, a stream cut by max_output_tokens ends with response.incomplete,
    # which carries the usage (the SDK's get_final_response() only accepts .completed).
    stream = gpt.responses.create(model=GPT, input="mock:words=9", max_output_tokens=3, stream=True)
    with stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.usage is not None and last.response.usage.output_tokens == 3


# --- tool calls (mock:tool) and images ------------------------------------------------------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "note": {"type": "string"},
    },
    "required": ["city", "days", "unit"],
}
WEATHER_ARGS = {"city": "x", "days": 1, "unit": "celsius"}
# One output token per 4-character fragment of the arguments' JSON.
WEATHER_TOKENS = -(-len(orjson.dumps(WEATHER_ARGS)) // 4)
CLAUDE_TOOLS: Any = [
    {"name": "weather", "description": "Forecast", "input_schema": WEATHER_SCHEMA},
    {"name": "other", "input_schema": {"type": "object"}},
]
GPT_TOOLS: Any = [
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "other"}},
]
RESPONSES_TOOLS: Any = [
    {"type": "web_search"},  # a built-in tool has no name: the first function is called
    {"type": "function", "name": "weather", "parameters": WEATHER_SCHEMA, "strict": False},
]
PNG = "iVBORw0KGgo="


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (WEATHER_SCHEMA, WEATHER_ARGS),
        ({"type": "object"}, {}),
        (None, {}),
        ({"properties": {"a": {}}, "required": ["a", 3]}, {"a": "x"}),
        (
            {
                "properties": {
                    "n": {"type": "number"},
                    "b": {"type": "boolean"},
                    "l": {"type": "array"},
                    "o": {
                        "type": "object",
                        "properties": {"s": {"type": "string"}},
                        "required": ["s"],
                    },
                    "maybe": {"type": ["null", "string"]},
                },
                "required": ["n", "b", "l", "o", "maybe"],
            },
            {"n": 1, "b": True, "l": [], "o": {"s": "x"}, "maybe": "x"},
        ),
    ],
)
def test_tool_arguments_fit_the_schema(schema: Any, expected: dict[str, Any]) -> None:
    assert tool_arguments(schema) == expected


def test_images_and_tool_results_in_every_dialect() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    claude_turn = {
        "role": "user",
        "content": [
            image,
            {"type": "tool_result", "tool_use_id": "t", "content": [image]},
            {"type": "text", "text": "see"},
        ],
    }
    assert last_user_images({"messages": [claude_turn]}) == 2
    assert after_tool_result({"messages": [claude_turn]})
    gpt_turn = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
    assert last_user_images({"messages": [gpt_turn, {"role": "assistant", "content": "x"}]}) == 1
    assert after_tool_result({"messages": [gpt_turn, {"role": "tool", "tool_call_id": "c"}]})
    item = {"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}
    assert last_user_images({"input": [item]}) == 1
    assert after_tool_result({"input": [item, {"type": "function_call_output", "call_id": "c"}]})
    assert not after_tool_result({"input": "hi"}) and last_user_images({"input": "hi"}) == 0
    assert not after_tool_result({"messages": [*user("hi")]})


def test_anthropic_tool_call(claude: anthropic.Anthropic) -> None:
    messages = user("What's the weather? mock:tool")
    message = claude.messages.create(
        model=MODEL, max_tokens=100, messages=messages, tools=CLAUDE_TOOLS
    )
    (block,) = message.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.id.startswith("toolu_mock_")
    assert (block.name, block.input) == ("weather", WEATHER_ARGS)
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == WEATHER_TOKENS
    body = {"model": MODEL, "messages": messages, "tools": CLAUDE_TOOLS}
    assert message.usage.input_tokens == input_tokens(body)

    with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=messages, tools=CLAUDE_TOOLS
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK saw the arguments stream in
    (streamed,) = final.content
    assert isinstance(streamed, anthropic.types.ToolUseBlock)
    assert (streamed.name, streamed.input) == ("weather", WEATHER_ARGS)
    assert streamed.id != block.id  # fresh per call, as upstream ids are
    assert (final.stop_reason, final.usage.output_tokens) == ("tool_use", WEATHER_TOKENS)
    assert final.usage.input_tokens == message.usage.input_tokens


def test_openai_chat_tool_call(gpt: openai.OpenAI) -> None:
    messages = user("weather? mock:tool")
    completion = gpt.chat.completions.create(model=GPT, messages=messages, tools=GPT_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
    assert call.id.startswith("call_mock")
    assert (call.function.name, orjson.loads(call.function.arguments)) == ("weather", WEATHER_ARGS)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == WEATHER_TOKENS

    with gpt.chat.completions.stream(
        model=GPT, messages=messages, tools=GPT_TOOLS, stream_options={"include_usage": True}
    ) as stream:
        deltas = [
            e.arguments_delta
            for e in stream
            if e.type == "tool_calls.function.arguments.delta" and e.arguments_delta
        ]
        final = stream.get_final_completion()
    assert len(deltas) == WEATHER_TOKENS
    assert final.choices[0].finish_reason == "tool_calls"
    tool_calls = final.choices[0].message.tool_calls
    assert tool_calls is not None
    (streamed,) = tool_calls
    assert isinstance(streamed, openai.types.chat.ParsedFunctionToolCall)
    assert orjson.loads(streamed.function.arguments) == WEATHER_ARGS
    assert final.usage is not None and final.usage.completion_tokens == WEATHER_TOKENS
    assert final.usage.prompt_tokens == completion.usage.prompt_tokens


def test_openai_responses_tool_call(gpt: openai.OpenAI) -> None:
    response = gpt.responses.create(model=GPT, input="weather? mock:tool", tools=RESPONSES_TOOLS)
    (item,) = response.output
    assert isinstance(item, openai.types.responses.ResponseFunctionToolCall)
    assert (item.name, orjson.loads(item.arguments)) == ("weather", WEATHER_ARGS)
    assert item.call_id.startswith("call_mock") and item.id is not None
    assert item.id.startswith("fc_mock")
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == WEATHER_TOKENS

    with gpt.responses.stream(
        model=GPT, input="weather? mock:tool", tools=RESPONSES_TOOLS
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds.count("response.function_call_arguments.delta") == WEATHER_TOKENS
    assert "response.function_call_arguments.done" in kinds
    (streamed,) = final.output
    assert isinstance(streamed, openai.types.responses.ResponseFunctionToolCall)
    assert orjson.loads(streamed.arguments) == WEATHER_ARGS
    assert final.usage is not None and final.usage.output_tokens == WEATHER_TOKENS


def test_tool_directive_answers_in_words_when_it_cannot_call(
    claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    # No tools to call:
    plain = claude.messages.create(model=MODEL, max_tokens=100, messages=user("hi mock:tool"))
    assert text_of(plain).startswith("Hello from the capgate mock.")
    # The last turn hands back the tool's result, so the client's loop can end:
    asked = gpt.chat.completions.create(model=GPT, messages=user("mock:tool"), tools=GPT_TOOLS)
    assert asked.choices[0].message.tool_calls is not None
    call = asked.choices[0].message.tool_calls[0]
    history: Any = [
        *user("mock:tool"),
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    after = gpt.chat.completions.create(model=GPT, messages=history, tools=GPT_TOOLS)
    assert after.choices[0].finish_reason == "stop"
    assert after.choices[0].message.content == "Hello from the capgate mock."
    # A call longer than max_tokens would be broken JSON: the answer is words, cut.
    cut = claude.messages.create(
        model=MODEL, max_tokens=2, messages=user("mock:tool"), tools=CLAUDE_TOOLS
    )
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 2)
    assert text_of(cut) == "Hello from"


def test_cut_stream_cuts_a_tool_call_too(raw: httpx.Client) -> None:
    body = {
        "model": GPT,
        "stream": True,
        "tools": GPT_TOOLS,
        "messages": user("mock:tool mock:cut_stream"),
    }
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        raw.stream(
            "POST", "/v1/chat/completions", headers={"authorization": "Bearer k"}, json=body
        ) as reply,
    ):
        lines.extend(reply.iter_lines())
    chunks = sse_data(lines)
    assert len(chunks) == 1 + WEATHER_TOKENS // 2  # the call's head, then half its fragments
    assert "data: [DONE]" not in lines


def test_answers_count_the_images_they_saw(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    two: Any = [image, image, {"type": "text", "text": "what are these?"}]
    message = claude.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": two}]
    )
    assert text_of(message) == ("Hello from the capgate mock. (2 images) You said: what are these?")
    assert message.usage.output_tokens == len(text_of(message).split())
    part: Any = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    completion = gpt.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": [part]}]
    )
    assert completion.choices[0].message.content == "Hello from the capgate mock. (1 image)"
    item: Any = {
        "role": "user",
        "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}],
    }
    response = gpt.responses.create(model=GPT, input=[item])
    assert "(1 image)" in response.output_text
    # Only the last user turn counts.
    turns: Any = [
        {"role": "user", "content": two},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and now?"},
    ]
    later = claude.messages.create(model=MODEL, max_tokens=100, messages=turns)
    assert "image" not in text_of(later)


# --- server behaviour: recording, directives needing a server, transport ------------------


def test_records_forwarded_bodies_and_headers(
    claude: anthropic.Anthropic, mock_server: MockUpstream
) -> None:
    mock_server.clear()
    claude.messages.create(
        model=MODEL,
        max_tokens=33,
        messages=user("hi"),
        extra_body={"unknown_field": {"nested": [1, 2]}},
    )
    (recorded,) = mock_server.requests()
    assert recorded.method == "POST" and recorded.path == "/v1/messages"
    assert recorded.body["unknown_field"] == {"nested": [1, 2]}
    assert recorded.body["max_tokens"] == 33
    # The SDK sends its key as x-api-key or, in recent versions, as a bearer token.
    key = recorded.headers.get("x-api-key") or recorded.headers["authorization"]
    assert key.removeprefix("Bearer ") == "sk-test"
    assert "anthropic-version" in recorded.headers
    assert orjson.loads(recorded.raw) == recorded.body


def test_history_is_bounded() -> None:
    with MockUpstream(history=2) as small, httpx.Client(trust_env=False) as client:
        for _ in range(3):
            client.get(small.url + "/v1/models", headers={"x-api-key": "k"})
        assert len(small.requests()) == 2


def test_invalid_json_is_400_in_each_dialect(raw: httpx.Client) -> None:
    claude_reply = raw.post("/v1/messages", headers={"x-api-key": "k"}, content=b"{not json")
    gpt_reply = raw.post(
        "/v1/chat/completions", headers={"authorization": "Bearer k"}, content=b"[1, 2]"
    )
    assert claude_reply.status_code == gpt_reply.status_code == 400
    assert claude_reply.json()["error"]["type"] == "invalid_request_error"
    assert gpt_reply.json()["error"]["type"] == "invalid_request_error"


def test_missing_credentials_is_401_in_each_dialect(raw: httpx.Client) -> None:
    claude_reply = raw.post("/v1/messages", json={})
    gpt_reply = raw.post("/v1/responses", json={}, headers={"authorization": "Basic a2V5"})
    assert claude_reply.status_code == gpt_reply.status_code == 401
    assert claude_reply.json()["error"]["type"] == "authentication_error"
    assert gpt_reply.json()["error"]["code"] == "invalid_api_key"
    assert raw.get("/health").json() == {"status": "ok"}


def test_no_usage_directive(raw: httpx.Client) -> None:
    body = {"model": MODEL, "max_tokens": 20, "messages": user("mock:no_usage")}
    message = raw.post("/v1/messages", headers={"x-api-key": "k"}, json=body).json()
    assert "usage" not in message and message["content"][0]["text"]
    streamed = raw.post(
        "/v1/messages", headers={"x-api-key": "k"}, json={**body, "stream": True}
    ).text
    assert "usage" not in streamed and "message_stop" in streamed


def test_cut_stream_drops_the_connection_mid_answer(raw: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "messages": user("mock:words=30 mock:cut_stream"),
    }
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        raw.stream("POST", "/v1/messages", headers={"x-api-key": "k"}, json=body) as reply,
    ):
        lines.extend(reply.iter_lines())
    events = [event["type"] for event in sse_data(lines)]
    assert events.count("content_block_delta") == 5  # half of the 10 deltas
    assert "message_stop" not in events and "message_delta" not in events


def test_cut_stream_openai_has_no_done(raw: httpx.Client) -> None:
    body = {"model": GPT, "stream": True, "messages": user("mock:words=8 mock:cut_stream")}
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        raw.stream(
            "POST", "/v1/chat/completions", headers={"authorization": "Bearer k"}, json=body
        ) as reply,
    ):
        lines.extend(reply.iter_lines())
    assert len(sse_data(lines)) == 1 + 4  # the role chunk, then half of the 8 words
    assert "data: [DONE]" not in lines


def test_delay_directive_waits_before_answering(claude: anthropic.Anthropic) -> None:
    started = time.perf_counter()
    claude.messages.create(model=MODEL, max_tokens=10, messages=user("mock:delay_ms=150"))
    assert time.perf_counter() - started >= 0.15


def test_stream_is_incremental(raw: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "messages": user("mock:words=6 mock:stream_delay_ms=60"),
    }
    arrivals: list[float] = []
    started = time.perf_counter()
    with raw.stream("POST", "/v1/messages", headers={"x-api-key": "k"}, json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith("event: "):
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 8
    # Eight events 60 ms apart: the first must arrive well before the stream is over.
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_cli_entry_point_announces_its_port() -> None:
    command = [sys.executable, "-m", "capgate.mock", "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("listening on 127.0.0.1:")
            port = int(line.rsplit(":", 1)[1])
            with httpx.Client(trust_env=False) as client:
                health = client.get(f"http://127.0.0.1:{port}/health")
            assert health.json() == {"status": "ok"}
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
