"""Translation of requests, answers and errors between the Anthropic Messages and OpenAI
Chat Completions formats (capgate.wire.translate): tables for each field both ways, round
trips, generated bodies that must translate or be refused cleanly, and the official SDKs
parsing what the translation produces. Streams are in test_translate_stream.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.errors import InvalidRequest, UpstreamFailed
from capgate.mock import responses
from capgate.wire import anthropic as anthropic_wire
from capgate.wire import openai as openai_wire
from capgate.wire.translate import (
    chat_completion_to_message,
    chat_to_messages,
    error_to_anthropic,
    error_to_openai,
    message_to_chat_completion,
    messages_to_chat,
)

CLAUDE = "claude-capgate-test"  # not a real name: the SDK warns about deprecated ones
GPT = "gpt-capgate-test"
PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def claude_body(*turns: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": CLAUDE, "max_tokens": 100, "messages": list(turns or [user("hi")]), **fields}


def chat_body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": GPT, "max_tokens": 100, "messages": list(messages or [user("hi")]), **fields}


def image_block(data: str = PNG) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def image_part(data: str = PNG) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# --- clients that read fixed bytes, to let the SDKs parse what the translation produced ---


def replying(status: int, body: bytes, content_type: str = "application/json") -> httpx2.Client:
    """An HTTP client (of httpx2, which the SDKs use) that answers every request with
    ``body``."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def claude_client(status: int, body: bytes, content_type: str = "application/json") -> Any:
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://upstream.test",
        http_client=replying(status, body, content_type),
        max_retries=0,
    )


def gpt_client(status: int, body: bytes, content_type: str = "application/json") -> Any:
    return openai.OpenAI(
        api_key="k",
        base_url="http://upstream.test/v1",
        http_client=replying(status, body, content_type),
        max_retries=0,
    )


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    clients: list[Any] = []
    yield lambda client: clients.append(client) or client
    for client in clients:
        client.close()


# --- Anthropic request -> Chat Completions request, field by field ----------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"system": "Be brief."}, {"messages": [{"role": "system", "content": "Be brief."}]}),
        (
            {"system": [text("One."), {**text("Two."), "cache_control": {"type": "ephemeral"}}]},
            {"messages": [{"role": "system", "content": "One.\n\nTwo."}]},
        ),
        ({"system": ""}, {"messages": []}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"stop_sequences": ["END", "STOP"]}, {"stop": ["END", "STOP"]}),
        ({"stop_sequences": []}, {}),
        ({"metadata": {"user_id": "alice"}}, {"user": "alice"}),
        ({"metadata": {}}, {}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {"stream": False}),
        # Dropped: no counterpart, and none changes what a correct answer is.
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, {}),
        ({"top_k": 5, "service_tier": "auto", "context_management": {}}, {}),
    ],
)
def test_messages_to_chat_top_level_fields(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = {"model": CLAUDE, "max_tokens": 50, "messages": [], **fields}
    chat = messages_to_chat(body)
    assert chat.pop("model") == CLAUDE
    assert chat.pop("max_tokens") == 50
    assert chat == {"messages": [], **expected}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_messages_to_chat_max_field(field: str) -> None:
    chat = messages_to_chat(claude_body(), max_field=field)
    assert chat[field] == 100
    assert [name for name in ("max_tokens", "max_completion_tokens") if name in chat] == [field]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain", "plain"),
        ([text("a"), text("b")], [text("a"), text("b")]),
        ([image_block(), text("what is it?")], [image_part(), text("what is it?")]),
        (
            [{"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}}],
            [{"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}],
        ),
        (
            [
                {
                    "type": "document",
                    "title": "report.pdf",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                }
            ],
            [
                {
                    "type": "file",
                    "file": {
                        "filename": "report.pdf",
                        "file_data": "data:application/pdf;base64,JVBE",
                    },
                }
            ],
        ),
        (
            [
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                }
            ],
            [text("notes")],
        ),
    ],
)
def test_messages_to_chat_user_content(content: Any, expected: Any) -> None:
    assert messages_to_chat(claude_body(user(content)))["messages"] == [user(expected)]


def test_messages_to_chat_assistant_tool_use_and_thinking() -> None:
    turn = assistant(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xx"},
            text("Let me look."),
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
        ]
    )
    (message,) = messages_to_chat(claude_body(turn))["messages"]
    assert message == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
            },
            {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], None),
        ([{"type": "thinking", "thinking": "x", "signature": "s"}], ""),
        ("Sure.", "Sure."),
        ([text("a"), text("b")], "ab"),
    ],
)
def test_messages_to_chat_assistant_content(content: Any, expected: Any) -> None:
    (message,) = messages_to_chat(claude_body(assistant(content)))["messages"]
    assert message["content"] == expected


def test_messages_to_chat_tool_results_come_first_as_tool_messages() -> None:
    turns = [
        user("weather in Oslo and Rome?"),
        assistant(
            [
                {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {"city": "Rome"}},
            ]
        ),
        user(
            [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "cold"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": [text("warm")]},
                text("and tomorrow?"),
            ]
        ),
    ]
    messages = messages_to_chat(claude_body(*turns))["messages"]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "cold"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "warm"},
        user([text("and tomorrow?")]),
    ]


def test_messages_to_chat_tool_result_error_and_images() -> None:
    turn = user(
        [
            {"type": "tool_result", "tool_use_id": "toolu_a", "is_error": True, "content": "boom"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_b",
                "content": [text("a screenshot"), image_block()],
            },
            {"type": "tool_result", "tool_use_id": "toolu_c"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_d",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"},
                    }
                ],
            },
        ]
    )
    assert messages_to_chat(claude_body(turn))["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "Error: boom"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "a screenshot"},
        {"role": "tool", "tool_call_id": "toolu_c", "content": ""},
        # OpenAI tool messages hold text only: the image follows in a user message.
        {"role": "tool", "tool_call_id": "toolu_d", "content": ""},
        user(
            [
                text("Images returned by tool call toolu_b:"),
                image_part(),
                text("Files returned by tool call toolu_d:"),
                {
                    "type": "file",
                    "file": {
                        "filename": "document.pdf",
                        "file_data": "data:application/pdf;base64,JV",
                    },
                },
            ]
        ),
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {}),
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "weather"},
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    ],
)
def test_messages_to_chat_tools_and_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [
        {"name": "weather", "description": "Forecast", "input_schema": WEATHER_SCHEMA},
        {"name": "now", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "custom_one", "input_schema": {"type": "object"}},
    ]
    fields: dict[str, Any] = {"tools": tools}
    if choice is not None:
        fields["tool_choice"] = choice
    chat = messages_to_chat(claude_body(**fields))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Forecast",
                "parameters": WEATHER_SCHEMA,
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "custom_one", "parameters": {"type": "object"}}},
    ]
    assert {k: v for k, v in chat.items() if k in ("tool_choice", "parallel_tool_calls")} == (
        expected
    )


def test_messages_to_chat_tool_choice_without_tools_is_dropped() -> None:
    # OpenAI refuses tool_choice and parallel_tool_calls when no tools are given.
    chat = messages_to_chat(claude_body(tools=[], tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat and "tools" not in chat


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": CLAUDE, "max_tokens": 5}, "messages"),
        ([], "body"),
        (claude_body(messages="hi"), "messages"),
        (claude_body(user("x"), {"role": "system", "content": "x"}), "messages[1].role"),
        (claude_body(user(None)), "messages[0].content"),
        (claude_body(user(["x"])), "messages[0].content[0]"),
        (claude_body(user([{"type": "audio"}])), "messages[0].content[0].type"),
        (claude_body(user([{"type": "tool_use", "id": "t", "name": "f"}])), "content[0].type"),
        (claude_body(assistant([{"type": "server_tool_use"}])), "messages[0].content[0].type"),
        (claude_body(assistant([{"type": "tool_use", "name": "f"}])), "content[0].id"),
        (
            claude_body(assistant([{"type": "tool_use", "id": "t", "name": "f", "input": []}])),
            ".input",
        ),
        (claude_body(user([{"type": "image", "source": {"type": "file"}}])), "source.type"),
        (claude_body(user([{"type": "image", "source": {"type": "base64"}}])), "source.media_type"),
        (claude_body(user([{"type": "image"}])), "content[0].source"),
        (claude_body(user([{"type": "document", "source": {"type": "url"}}])), "source.type"),
        (claude_body(user([{"type": "tool_result"}])), "content[0].tool_use_id"),
        (
            claude_body(user([{"type": "tool_result", "tool_use_id": "t", "content": 3}])),
            ".content",
        ),
        (claude_body(system=[{"type": "image"}]), "system[0].type"),
        (claude_body(system=7), "system"),
        (
            claude_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0].type",
        ),
        (claude_body(tools=[{"name": "f"}]), "tools[0].input_schema"),
        (claude_body(tools={"name": "f"}), "tools"),
        (
            claude_body(tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "x"}),
            "tool_choice.type",
        ),
        (
            claude_body(tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "tool"}),
            "tool_choice.name",
        ),
        (claude_body(max_tokens="100"), "max_tokens"),
        (claude_body(max_tokens=True), "max_tokens"),
        (claude_body(temperature="hot"), "temperature"),
        (claude_body(stop_sequences="END"), "stop_sequences"),
        (claude_body(stop_sequences=[1]), "stop_sequences[0]"),
        (claude_body(metadata={"user_id": 5}), "metadata.user_id"),
        (claude_body(stream="yes"), "stream"),
        (claude_body(model=None), "model"),
        (claude_body(mcp_servers=[{"type": "url", "url": "https://x.test"}]), "mcp_servers"),
    ],
)
def test_messages_to_chat_refuses_with_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(body)
    assert field in caught.value.message
    assert caught.value.status == 400


# --- Chat Completions request -> Anthropic request, field by field ----------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 7}, {"max_tokens": 7}),
        ({"max_completion_tokens": 9, "max_tokens": 7}, {"max_tokens": 9}),
        ({"max_completion_tokens": 9}, {"max_tokens": 9}),
        ({"temperature": 0.3, "top_p": 0.5}, {"temperature": 0.3, "top_p": 0.5}),
        ({"temperature": 1.7}, {"temperature": 1.0}),  # OpenAI's scale goes to 2
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["A", "B"]}, {"stop_sequences": ["A", "B"]}),
        ({"stop": None}, {}),
        ({"user": "alice"}, {"metadata": {"user_id": "alice"}}),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
        ({"n": 1, "response_format": {"type": "json_object"}}, {}),
        ({"seed": 1, "presence_penalty": 0.5, "frequency_penalty": 0.1, "logprobs": False}, {}),
        ({"reasoning_effort": "high", "service_tier": "auto", "store": True}, {}),
        ({"tool_choice": "auto", "parallel_tool_calls": False}, {}),  # no tools: nothing to say
    ],
)
def test_chat_to_messages_top_level_fields(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = {"model": GPT, "max_tokens": 100, "messages": [user("hi")], **fields}
    if "max_tokens" in fields or "max_completion_tokens" in fields:
        body = {k: v for k, v in body.items() if k in fields or k in ("model", "messages")}
    out = chat_to_messages(body)
    assert out.pop("model") == GPT
    assert out.pop("messages") == [user("hi")]
    assert out == {"max_tokens": 100, **expected}


def test_chat_to_messages_needs_max_tokens() -> None:
    with pytest.raises(InvalidRequest, match="max_tokens"):
        chat_to_messages({"model": GPT, "messages": [user("hi")]})


def test_chat_to_messages_system_and_developer_messages_are_joined() -> None:
    out = chat_to_messages(
        chat_body(
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [text("Answer in "), text("French.")]},
            user("hi"),
            {"role": "system", "content": "Late rule."},
            assistant("Salut."),
        )
    )
    assert out["system"] == "You are terse.\n\nAnswer in French.\n\nLate rule."
    assert out["messages"] == [user("hi"), assistant([text("Salut.")])]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain", "plain"),
        ([text("a"), text(""), text("b")], [text("a"), text("b")]),
        ([image_part(), text("what is it?")], [image_block(), text("what is it?")]),
        (
            [
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/cat.png", "detail": "low"},
                }
            ],
            [{"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}}],
        ),
        (
            [
                {
                    "type": "file",
                    "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                }
            ],
            [
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                    "title": "r.pdf",
                }
            ],
        ),
    ],
)
def test_chat_to_messages_user_content(content: Any, expected: Any) -> None:
    assert chat_to_messages(chat_body(user(content)))["messages"] == [user(expected)]


def test_chat_to_messages_tool_calls_and_results() -> None:
    out = chat_to_messages(
        chat_body(
            user("weather?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "functions.now:1",  # ids some compatible servers write
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
            {"role": "tool", "tool_call_id": "functions.now:1", "content": [text("noon")]},
            user("thanks"),
            user([text("and tomorrow?")]),
        )
    )
    assert out["messages"] == [
        user("weather?"),
        assistant(
            [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "functions_now_1", "name": "now", "input": {}},
            ]
        ),
        user(
            [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "cold"},
                {
                    "type": "tool_result",
                    "tool_use_id": "functions_now_1",
                    "content": [text("noon")],
                },
                text("thanks"),
                text("and tomorrow?"),
            ]
        ),
    ]


def test_chat_to_messages_tool_results_go_first_in_their_turn() -> None:
    # A user message before the tool message (allowed by some OpenAI-compatible servers):
    # Anthropic wants the tool results first in the merged turn.
    out = chat_to_messages(
        chat_body(
            assistant(None)
            | {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            user("look"),
            {"role": "tool", "tool_call_id": "c", "content": "done"},
        )
    )
    assert out["messages"][1] == user(
        [{"type": "tool_result", "tool_use_id": "c", "content": "done"}, text("look")]
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (assistant(""), None),  # Anthropic refuses an empty assistant turn
        (assistant(None), None),
        (assistant([text("x"), {"type": "refusal", "refusal": "no"}]), [text("xno")]),
        (assistant("Hi") | {"name": "bot"}, [text("Hi")]),
    ],
)
def test_chat_to_messages_assistant_content(message: Any, expected: Any) -> None:
    out = chat_to_messages(chat_body(user("a"), message))
    assert out["messages"][1:] == ([] if expected is None else [assistant(expected)])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {}),
        ({"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
        ({"tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
        ({"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
            {"tool_choice": {"type": "tool", "name": "weather"}},
        ),
        (
            {"parallel_tool_calls": False},
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
        (
            {"tool_choice": "required", "parallel_tool_calls": False},
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        ),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"tool_choice": {"type": "none"}}),
        ({"parallel_tool_calls": True}, {}),
    ],
)
def test_chat_to_messages_tools_and_choice(fields: dict[str, Any], expected: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Forecast",
                "parameters": WEATHER_SCHEMA,
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    out = chat_to_messages(chat_body(tools=tools, **fields))
    assert out["tools"] == [
        {"name": "weather", "description": "Forecast", "input_schema": WEATHER_SCHEMA},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert {k: v for k, v in out.items() if k == "tool_choice"} == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not an object", "body"),
        (chat_body(n=2), "n"),
        (chat_body(n="1"), "n"),
        (chat_body(logprobs=True), "logprobs"),
        (chat_body(top_logprobs=3), "logprobs"),
        (chat_body(modalities=["text", "audio"]), "modalities"),
        (chat_body(audio={"voice": "alloy"}), "audio"),
        (chat_body(functions=[{"name": "f"}]), "functions"),
        (chat_body(function_call="auto"), "function_call"),
        (chat_body(web_search_options={}), "web_search_options"),
        (
            chat_body(response_format={"type": "json_schema", "json_schema": {}}),
            "response_format.type",
        ),
        (chat_body(response_format="json"), "response_format"),
        (chat_body(max_tokens=None, max_completion_tokens=1.5), "max_completion_tokens"),
        (chat_body(messages=None), "messages"),
        (chat_body({"role": "function", "name": "f", "content": "x"}), "messages[0].role"),
        (chat_body({"content": "x"}), "messages[0].role"),
        (chat_body({"role": "system", "content": [image_part()]}), "messages[0].content[0].type"),
        (
            chat_body(user([{"type": "input_audio", "input_audio": {}}])),
            "messages[0].content[0].type",
        ),
        (
            chat_body(user([{"type": "image_url", "image_url": "https://x"}])),
            "content[0].image_url",
        ),
        (chat_body(user([{"type": "file", "file": {"file_id": "file-1"}}])), "file.file_data"),
        (chat_body(user([{"type": "file", "file": {"file_data": "JVBE"}}])), "file.file_data"),
        (chat_body(user(5)), "messages[0].content"),
        (chat_body({"role": "tool", "content": "x"}), "messages[0].tool_call_id"),
        (chat_body({"role": "tool", "tool_call_id": "c", "content": [image_part()]}), ".type"),
        (
            chat_body(
                assistant(None)
                | {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}
            ),
            "function.arguments",
        ),
        (
            chat_body(
                assistant(None)
                | {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}
            ),
            "function.arguments",
        ),
        (
            chat_body(
                assistant(None) | {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
            ),
            "tool_calls[0].id",
        ),
        (
            chat_body(
                assistant(None) | {"tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}
            ),
            "tool_calls[0].type",
        ),
        (chat_body(assistant(None) | {"tool_calls": {"id": "c"}}), "messages[0].tool_calls"),
        (chat_body(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type"),
        (
            chat_body(tools=[{"type": "function", "function": {"parameters": {}}}]),
            "tools[0].function.name",
        ),
        (
            chat_body(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="any"),
            "tool_choice",
        ),
        (chat_body(stop=[None]), "stop[0]"),
        (chat_body(temperature=None, top_p="high"), "top_p"),
        (chat_body(user=["alice"]), "user"),
        (chat_body(stream=1), "stream"),
    ],
)
def test_chat_to_messages_refuses_with_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_messages(body)
    assert field in caught.value.message


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_of_a_tool_conversation_keeps_its_meaning() -> None:
    body = claude_body(
        user([image_block(), text("Weather where this photo was taken?")]),
        assistant(
            [
                text("Checking."),
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "weather",
                    "input": {"city": "Oslo", "days": 2},
                },
            ]
        ),
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": "Cold, 2 days of snow.",
                },
                text("Thanks! And Rome?"),
            ]
        ),
        system="Be brief.",
        tools=[{"name": "weather", "description": "Forecast", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.8,
        metadata={"user_id": "alice"},
        stream=True,
    )
    assert chat_to_messages(messages_to_chat(body)) == body


def test_round_trip_of_a_chat_request_keeps_its_meaning() -> None:
    body = chat_body(
        {"role": "system", "content": "Be brief."},
        user([text("What is this?"), image_part()]),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "cold"},
        tools=[{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}],
        tool_choice="required",
        parallel_tool_calls=False,
        stop=["END"],
        user="bob",
        stream=True,
    )
    again = messages_to_chat(chat_to_messages(body))
    assert again == {**body, "stream_options": {"include_usage": True}}


# Generated conversations in the canonical form both formats share: each assistant tool
# call is answered first thing in the next user turn.
_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
_ids = st.from_regex(r"toolu_[A-Za-z0-9]{4,10}", fullmatch=True)
_inputs = st.dictionaries(_names, st.integers(-5, 5) | _words | st.booleans(), max_size=3)


@st.composite
def _conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    pending: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        results = [
            {"type": "tool_result", "tool_use_id": i, "content": draw(_words)} for i in pending
        ]
        extra = draw(st.lists(st.one_of(_words.map(text), st.just(image_block())), max_size=2))
        if results or extra or draw(st.booleans()):
            turns.append(user(results + extra))
        else:
            turns.append(user(draw(_words)))
        blocks: list[dict[str, Any]] = []
        if draw(st.booleans()):
            blocks.append(text(draw(_words)))
        ids = draw(
            st.lists(_ids, unique=True, max_size=2).filter(
                lambda x, used=set(pending): not set(x) & used
            )
        )
        blocks += [
            {"type": "tool_use", "id": i, "name": draw(_names), "input": draw(_inputs)} for i in ids
        ]
        if not blocks:
            blocks.append(text(draw(_words)))
        turns.append(assistant(blocks))
        pending = ids
    return [t for t in turns if t["content"] != []] or [user("hi")]


@settings(max_examples=200, deadline=None)
@given(
    turns=_conversations(),
    system=st.none() | _words,
    temperature=st.none() | st.floats(0, 1),
    stops=st.lists(_words, max_size=3),
)
def test_round_trip_of_generated_conversations(
    turns: list[dict[str, Any]], system: str | None, temperature: float | None, stops: list[str]
) -> None:
    body = claude_body(*turns)
    for name, value in (("system", system), ("temperature", temperature)):
        if value is not None:
            body[name] = value
    if stops:
        body["stop_sequences"] = stops
    back = chat_to_messages(messages_to_chat(body))
    # Consecutive user turns merge into one, which Anthropic reads the same way.
    assert back == {**body, "messages": _merged(turns)}


def _merged(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for turn in turns:
        if out and out[-1]["role"] == turn["role"]:

            def blocks(c: Any) -> list[Any]:
                return c if isinstance(c, list) else [text(c)]

            out[-1] = {**out[-1], "content": blocks(out[-1]["content"]) + blocks(turn["content"])}
        else:
            out.append(turn)
    return out


# Anything a client could send: every translation is a dict or an InvalidRequest.
_scalar = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False) | _words
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_words | _names, inner, max_size=3),
    max_leaves=12,
)
_kinds = st.sampled_from(
    [
        "text",
        "image",
        "image_url",
        "tool_use",
        "tool_result",
        "thinking",
        "document",
        "file",
        "refusal",
        "function",
    ]
)
_part = st.fixed_dictionaries(
    {"type": _kinds},
    optional={
        "text": _json,
        "source": _json
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url", "text"])},
            optional={"media_type": _json, "data": _json, "url": _json},
        ),
        "image_url": _json,
        "file": _json,
        "id": _json,
        "name": _json,
        "input": _json,
        "tool_use_id": _json,
        "content": _json,
        "is_error": _json,
    },
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"]) | _json,
        "content": _json | st.lists(_part, max_size=3),
        "tool_calls": _json
        | st.lists(
            st.fixed_dictionaries(
                {
                    "id": _json,
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": _json, "arguments": _json | st.just('{"a": 1}')}
                    ),
                }
            ),
            max_size=2,
        ),
        "tool_call_id": _json,
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": _json,
        "max_tokens": _json,
        "max_completion_tokens": _json,
        "messages": _json | st.lists(_message, max_size=4),
        "system": _json | st.lists(_part, max_size=2),
        "tools": _json
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={"name": _json, "type": _json, "input_schema": _json, "function": _json},
            ),
            max_size=2,
        ),
        "tool_choice": _json
        | st.sampled_from(["auto", "required", "none"])
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "function"])},
            optional={"name": _json, "function": _json},
        ),
        "stop": _json,
        "stop_sequences": _json,
        "metadata": _json,
        "temperature": _json,
        "stream": _json,
        "n": _json,
        "response_format": _json,
        "parallel_tool_calls": _json,
    },
)


@settings(max_examples=400, deadline=None)
@given(_body | _json)
def test_any_body_translates_or_is_refused(body: Any) -> None:
    for translate in (messages_to_chat, chat_to_messages):
        try:
            out = translate(body)
        except InvalidRequest as error:
            assert ":" in error.message  # names the field
        else:
            assert isinstance(out, dict)
            orjson.dumps(out)


# --- answers -------------------------------------------------------------------------------


def chat_completion(message: dict[str, Any], finish: Any = "stop", **fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1,
        "model": GPT,
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 20,
            "total_tokens": 1020,
            "prompt_tokens_details": {"cached_tokens": 800},
        },
        **fields,
    }


def claude_message(content: list[Any], stop: Any = "end_turn", **fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_01xyz",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 50,
            "output_tokens": 20,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 4000,
        },
        **fields,
    }


def test_chat_completion_to_message_text_and_usage() -> None:
    message = chat_completion_to_message(chat_completion({"content": "Hello."}))
    assert message == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": GPT,
        "content": [text("Hello.")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 200,
            "output_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 800,
        },
    }


def test_chat_completion_to_message_tool_calls() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
        {"id": "call_3", "type": "function", "function": {"name": "bad", "arguments": "{oops"}},
        "junk",
    ]
    message = chat_completion_to_message(
        chat_completion({"content": "Checking.", "tool_calls": calls}, "tool_calls")
    )
    assert message["content"] == [
        text("Checking."),
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
        # Broken JSON from the model is kept for the client's tool to report.
        {"type": "tool_use", "id": "call_3", "name": "bad", "input": {"_raw_arguments": "{oops"}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "tools", "expected"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("something_new", False, "end_turn"),
        ("stop", True, "tool_use"),  # some compatible servers say "stop" after calls
        ("length", True, "max_tokens"),
    ],
)
def test_stop_reasons_from_openai(finish: Any, tools: bool, expected: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if tools:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    assert chat_completion_to_message(chat_completion(message, finish))["stop_reason"] == expected


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_finish_reasons_from_anthropic(stop: Any, expected: str) -> None:
    answer = message_to_chat_completion(claude_message([text("x")], stop))
    assert answer["choices"][0]["finish_reason"] == expected


def test_chat_completion_refusal_and_odd_fields() -> None:
    message = chat_completion_to_message(
        chat_completion({"content": None, "refusal": "I can't help with that."}, "content_filter")
        | {"usage": None, "id": None, "model": 5}
    )
    assert message["content"] == [text("I can't help with that.")]
    assert message["stop_reason"] == "refusal"
    assert "usage" not in message  # never a made-up zero that would bill nothing
    assert message["id"].startswith("msg_") and message["model"] == ""


@pytest.mark.parametrize("data", [{}, {"choices": []}, {"choices": ["x"]}, [], "x"])
def test_chat_completion_without_choices_is_an_upstream_failure(data: Any) -> None:
    with pytest.raises(UpstreamFailed):
        chat_completion_to_message(data)


def test_message_to_chat_completion_text_tools_and_usage() -> None:
    answer = message_to_chat_completion(
        claude_message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                text("Checking "),
                text("now."),
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                "junk",
            ],
            "tool_use",
        )
    )
    assert answer["id"] == "chatcmpl-01xyz"
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["created"], int) and answer["model"] == CLAUDE
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking now.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 4350,
        "completion_tokens": 20,
        "total_tokens": 4370,
        "prompt_tokens_details": {"cached_tokens": 4000},
    }


def test_message_to_chat_completion_only_tools_has_null_content() -> None:
    answer = message_to_chat_completion(
        claude_message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_use")
    )
    assert answer["choices"][0]["message"]["content"] is None
    empty = message_to_chat_completion(claude_message([], "end_turn") | {"usage": "x"})
    assert empty["choices"][0]["message"]["content"] == ""
    assert "usage" not in empty
    with pytest.raises(UpstreamFailed):
        message_to_chat_completion([])  # type: ignore[arg-type]


_counts = st.integers(0, 10**7)


@settings(max_examples=200, deadline=None)
@given(inp=_counts, out=_counts, read=_counts, write=_counts)
def test_usage_bills_the_same_from_anthropic(inp: int, out: int, read: int, write: int) -> None:
    usage = {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    original = anthropic_wire.usage_of(usage)
    translated = openai_wire.usage_of(
        message_to_chat_completion(claude_message([], usage=usage))["usage"]
    )
    assert original is not None and translated is not None
    # OpenAI has no cache-write count: those tokens read as plain input.
    assert translated.input_tokens == original.input_tokens + original.cache_write_tokens
    assert translated.cache_read_tokens == original.cache_read_tokens
    assert translated.output_tokens == original.output_tokens


@settings(max_examples=200, deadline=None)
@given(prompt=_counts, cached=_counts, out=_counts)
def test_usage_bills_the_same_from_openai(prompt: int, cached: int, out: int) -> None:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt)},
    }
    message = chat_completion_to_message(chat_completion({"content": "x"}, usage=usage))
    assert anthropic_wire.usage_of(message["usage"]) == openai_wire.usage_of(usage)


def test_answers_parse_in_the_sdks(closing: Callable[[Any], Any]) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    message = chat_completion_to_message(
        chat_completion({"content": "Let me check.", "tool_calls": calls}, "tool_calls")
    )
    claude = closing(claude_client(200, orjson.dumps(message)))
    parsed = claude.messages.create(model=CLAUDE, max_tokens=10, messages=[user("hi")])
    assert isinstance(parsed, anthropic.types.Message)
    first, second = parsed.content
    assert isinstance(first, anthropic.types.TextBlock) and first.text == "Let me check."
    assert isinstance(second, anthropic.types.ToolUseBlock)
    assert (second.id, second.name, second.input) == ("call_1", "weather", {"city": "Oslo"})
    assert parsed.stop_reason == "tool_use"
    assert (parsed.usage.input_tokens, parsed.usage.cache_read_input_tokens) == (200, 800)

    answer = message_to_chat_completion(
        claude_message(
            [
                text("Sure: "),
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1]}},
            ],
            "tool_use",
        )
    )
    gpt = closing(gpt_client(200, orjson.dumps(answer)))
    completion = gpt.chat.completions.create(model=GPT, messages=[user("hi")])
    choice = completion.choices[0]
    assert choice.message.content == "Sure: " and choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "toolu_9",
        "f",
        {"a": [1]},
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4350
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 4000


def test_mock_answers_through_a_translation_see_images_and_call_tools() -> None:
    """The mock upstream answers a translated request as it would a native one: images
    reach it, and mock:tool calls the tool the translated request defines."""
    body = claude_body(
        user([image_block(), image_block("AAAA"), text("What are these? mock:tool")]),
        tools=[{"name": "lookup", "input_schema": WEATHER_SCHEMA}],
    )
    chat = messages_to_chat(body)
    answer = chat_completion_to_message(responses.openai_chat(chat))
    (call,) = answer["content"]
    assert (call["type"], call["name"], call["input"]) == ("tool_use", "lookup", {"city": "x"})
    assert answer["stop_reason"] == "tool_use"

    no_tools = messages_to_chat(claude_body(body["messages"][0]))
    words = chat_completion_to_message(responses.openai_chat(no_tools))
    assert "(2 images)" in words["content"][0]["text"]

    back = chat_to_messages(chat_body(user([image_part(), text("hi")]), tools=chat["tools"]))
    assert (
        "(1 image)"
        in message_to_chat_completion(responses.anthropic_message(back))["choices"][0]["message"][
            "content"
        ]
    )


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "api_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_to_anthropic_type_from_status(status: int, kind: str) -> None:
    body = orjson.dumps({"error": {"message": "Upstream says no.", "type": "x", "code": None}})
    assert orjson.loads(error_to_anthropic(status, body)) == {
        "type": "error",
        "error": {"type": kind, "message": "Upstream says no."},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "Bad model.", "type": "invalid_request_error"}}', "Bad model."),
        (b'{"error": "Model not loaded"}', "Model not loaded"),
        (b'{"message": "flat"}', "flat"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (
            b'{"detail": [{"loc": ["body"], "msg": "field required"}]}',
            '[{"loc":["body"],"msg":"field required"}]',
        ),
        (b'[{"error": {"message": "in a list"}}]', "in a list"),
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            "Overloaded",
        ),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "Bad Request"),
        (b"{}", "{}"),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_error_messages_are_kept(body: bytes, message: str) -> None:
    assert orjson.loads(error_to_anthropic(400, body))["error"]["message"] == message
    assert orjson.loads(error_to_openai(400, body))["error"]["message"] == message


@pytest.mark.parametrize(
    ("status", "kind", "expected_type", "expected_code"),
    [
        (400, "invalid_request_error", "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
        (402, "billing_error", "insufficient_quota", "insufficient_quota"),
        (403, "permission_error", "permission_error", "permission_error"),
        (429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_exceeded"),
        (500, "api_error", "api_error", "api_error"),
        (529, "overloaded_error", "overloaded_error", "overloaded_error"),
        (529, None, "overloaded_error", "overloaded_error"),  # no type in the body: the status
        (404, None, "not_found_error", "not_found_error"),
        (418, None, "api_error", "api_error"),
    ],
)
def test_error_to_openai(status: int, kind: Any, expected_type: str, expected_code: Any) -> None:
    error = {"message": "Nope."} if kind is None else {"type": kind, "message": "Nope."}
    body = orjson.dumps({"type": "error", "error": error})
    assert orjson.loads(error_to_openai(status, body)) == {
        "error": {"message": "Nope.", "type": expected_type, "param": None, "code": expected_code}
    }


@pytest.mark.parametrize(
    ("status", "claude_error", "gpt_error"),
    [
        (400, anthropic.BadRequestError, openai.BadRequestError),
        (401, anthropic.AuthenticationError, openai.AuthenticationError),
        (429, anthropic.RateLimitError, openai.RateLimitError),
        (529, anthropic.OverloadedError, openai.InternalServerError),
    ],
)
def test_translated_errors_parse_in_the_sdks(
    status: int,
    claude_error: type[Exception],
    gpt_error: type[Exception],
    closing: Callable[[Any], Any],
) -> None:
    claude = closing(
        claude_client(status, error_to_anthropic(status, b'{"error":{"message":"No way."}}'))
    )
    with pytest.raises(claude_error) as caught:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=[user("hi")])
    assert "No way." in str(caught.value)
    assert caught.value.body["error"]["message"] == "No way."  # type: ignore[attr-defined]

    anthropic_body = b'{"type":"error","error":{"type":"api_error","message":"No way."}}'
    gpt = closing(gpt_client(status, error_to_openai(status, anthropic_body)))
    with pytest.raises(gpt_error) as raised:
        gpt.chat.completions.create(model=GPT, messages=[user("hi")])
    assert "No way." in str(raised.value)
