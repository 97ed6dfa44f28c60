"""Stream translation between the Anthropic Messages and OpenAI Chat Completions formats
(capgate.wire.translate): event order, the usage that OpenAI sends last, tool calls,
error events, streams cut anywhere (the output must not depend on where the bytes were
split), and the official SDKs parsing the translated streams."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Protocol

import anthropic
import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.mock import responses
from capgate.wire import translate_stream
from capgate.wire.sse import EventSplitter, data_of, events
from capgate.wire.translate import ChatToMessagesStream, MessagesToChatStream

CLAUDE = "claude-capgate-test"
GPT = "gpt-capgate-test"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}


class Translator(Protocol):
    def feed(self, block: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # `created` is the only value that may differ between two runs of one translation.
    monkeypatch.setattr(translate_stream, "now", lambda: 1_700_000_000)


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **fields: Any) -> bytes:
    """One OpenAI chat.completion.chunk event."""
    body: dict[str, Any] = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **fields,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_chunk(prompt: int = 1000, completion: int = 20, cached: int = 800) -> bytes:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return chunk(choices=[], usage=usage)


DONE = b"data: [DONE]\n\n"


def run(translator: Translator, wire: bytes, size: int | None = None) -> bytes:
    """Feed ``wire`` through an EventSplitter in pieces of ``size`` bytes, as the relay
    does, and return everything the translator wrote, its finish() included."""
    splitter = EventSplitter()
    size = size or len(wire) or 1
    out = [translator.feed(splitter.feed(wire[i : i + size])) for i in range(0, len(wire), size)]
    return b"".join(out) + translator.finish()


def anthropic_events(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for event in events(stream):
        name = event.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
        data = orjson.loads(data_of(event))
        assert data["type"] == name  # both the SDK and the capgate tap read the name
        out.append(data)
    return out


def openai_chunks(stream: bytes) -> list[Any]:
    return [
        "[DONE]" if data_of(e) == b"[DONE]" else orjson.loads(data_of(e)) for e in events(stream)
    ]


def stream_client(sdk: Any, base_url: str, body: bytes) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=body, headers=headers)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return sdk(api_key="k", base_url=base_url, http_client=http, max_retries=0)


@pytest.fixture
def claude_reading() -> Iterator[Any]:
    """claude_reading(stream_bytes) -> an Anthropic client whose answer is that stream."""
    clients: list[Any] = []

    def make(body: bytes) -> Any:
        clients.append(stream_client(anthropic.Anthropic, "http://upstream.test", body))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def gpt_reading() -> Iterator[Any]:
    clients: list[Any] = []

    def make(body: bytes) -> Any:
        clients.append(stream_client(openai.OpenAI, "http://upstream.test/v1", body))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def claude_final(client: Any) -> Any:
    with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        return s.get_final_message()


def gpt_final(client: Any) -> Any:
    with client.chat.completions.stream(
        model=GPT, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        return s.get_final_completion()


def mock_openai(text: str, tools: bool = False, include_usage: bool = True) -> bytes:
    body: dict[str, Any] = {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": text}],
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = [
            {"type": "function", "function": {"name": "weather", "parameters": WEATHER}}
        ]
    return b"".join(responses.openai_chat_stream(body))


def mock_anthropic(text: str, tools: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": "upstream-model",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
    }
    if tools:
        body["tools"] = [{"name": "weather", "input_schema": WEATHER}]
    return b"".join(responses.anthropic_stream(body))


# --- OpenAI upstream -> Anthropic client ---------------------------------------------------


def test_text_stream_events_in_anthropic_order() -> None:
    out = anthropic_events(run(ChatToMessagesStream(CLAUDE), mock_openai("mock:words=4")))
    assert [e["type"] for e in out] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = out[0]["message"]
    assert start["model"] == CLAUDE and start["id"].startswith("msg_mock")
    assert "".join(e["delta"]["text"] for e in out[2:6]) == "lorem ipsum dolor sit"
    assert out[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert out[-2]["usage"]["output_tokens"] == 4


def test_message_delta_waits_for_the_usage_chunk() -> None:
    stream = ChatToMessagesStream(CLAUDE)
    head = stream.feed(chunk({"role": "assistant", "content": "Hi"}) + chunk({}, "stop"))
    assert [e["type"] for e in anthropic_events(head)][-1] == "content_block_stop"
    tail = anthropic_events(stream.feed(usage_chunk()))
    assert [e["type"] for e in tail] == ["message_delta", "message_stop"]
    assert tail[0]["usage"] == {
        "input_tokens": 200,
        "output_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 800,
    }
    assert stream.feed(DONE) == b""
    assert stream.finish() == b""


def test_usage_in_the_finish_chunk_closes_at_once() -> None:
    stream = ChatToMessagesStream(CLAUDE)
    usage = {"prompt_tokens": 10, "completion_tokens": 2}
    out = anthropic_events(stream.feed(chunk({"content": "Hi"}) + chunk({}, "length", usage=usage)))
    assert out[-1]["type"] == "message_stop"
    assert out[-2]["delta"]["stop_reason"] == "max_tokens"
    assert out[-2]["usage"]["input_tokens"] == 10


def test_usage_on_every_chunk_waits_for_the_last() -> None:
    # vLLM's continuous usage stats: cumulative usage on every chunk, the final one last.
    def counted(n: int) -> dict[str, Any]:
        return {"prompt_tokens": 10, "completion_tokens": n}

    wire = b"".join(
        [
            chunk({"content": "a"}, usage=counted(1)),
            chunk({"content": "b"}, usage=counted(2)),
            chunk({}, "stop", usage=counted(2)),
            chunk(choices=[], usage=counted(3)),
            DONE,
        ]
    )
    out = anthropic_events(run(ChatToMessagesStream(CLAUDE), wire))
    deltas = [e["delta"]["text"] for e in out if e["type"] == "content_block_delta"]
    assert deltas == ["a", "b"]
    # Closed at the finish chunk, which carries usage; the later count comes too late.
    assert [e["type"] for e in out].count("message_delta") == 1
    assert out[-2]["usage"]["output_tokens"] == 2


def test_done_without_finish_reason_still_closes() -> None:
    out = anthropic_events(run(ChatToMessagesStream(CLAUDE), chunk({"content": "Hi"}) + DONE))
    assert [e["type"] for e in out][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert out[-2]["delta"]["stop_reason"] == "end_turn"
    assert out[-2]["usage"] == {"output_tokens": 0}  # upstream sent none


def test_only_done_gives_an_empty_message(claude_reading: Any) -> None:
    out = run(ChatToMessagesStream(CLAUDE), DONE)
    assert [e["type"] for e in anthropic_events(out)] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]
    final = claude_final(claude_reading(out))
    assert final.content == [] and final.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("wire", "owed"),
    [
        (chunk({"content": "Hi"}) + chunk({}, "stop"), ["message_delta", "message_stop"]),
        (chunk({"content": "Hi"}), []),  # cut before its end: the client must see that
        (b"", []),
        (chunk({"content": "Hi"}) + chunk({}, "stop") + usage_chunk(), []),
    ],
)
def test_chat_finish_owes_only_the_closing_of_a_finished_answer(
    wire: bytes, owed: list[str]
) -> None:
    stream = ChatToMessagesStream(CLAUDE)
    stream.feed(wire)
    assert [e["type"] for e in anthropic_events(stream.finish())] == owed
    assert stream.finish() == b""


def test_tool_call_stream(claude_reading: Any) -> None:
    wire = mock_openai("mock:tool", tools=True)
    out = run(ChatToMessagesStream(CLAUDE), wire)
    kinds = [e["type"] for e in anthropic_events(out)]
    assert kinds[:2] == ["message_start", "content_block_start"]
    start = anthropic_events(out)[1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "weather" and start["input"] == {}
    assert start["id"].startswith("call_mock")
    final = claude_final(claude_reading(out))
    (block,) = final.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.input == {"city": "x", "days": 1}
    assert final.stop_reason == "tool_use"


def test_text_then_parallel_tool_calls(claude_reading: Any) -> None:
    wire = b"".join(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Checking "}),
            chunk({"content": "both."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            # The second call's name comes after its first fragment and its id has
            # characters Anthropic refuses.
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "functions.time:1", "function": {"arguments": '{"tz"'}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "function": {"name": "time", "arguments": ': "UTC"}'}}
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            usage_chunk(),
            DONE,
        ]
    )
    out = run(ChatToMessagesStream(CLAUDE), wire)
    starts = [e for e in anthropic_events(out) if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
    ]
    stops = [e["index"] for e in anthropic_events(out) if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    final = claude_final(claude_reading(out))
    text, first, second = final.content
    assert text.text == "Checking both."
    assert (first.id, first.name, first.input) == ("call_a", "weather", {"city": "Oslo"})
    assert (second.id, second.name, second.input) == ("functions_time_1", "time", {"tz": "UTC"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (200, 20)
    assert final.usage.cache_read_input_tokens == 800


def test_stop_after_tool_calls_reads_as_tool_use() -> None:
    wire = chunk(
        {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}
    )
    out = anthropic_events(run(ChatToMessagesStream(CLAUDE), wire + chunk({}, "stop") + DONE))
    assert out[-2]["delta"]["stop_reason"] == "tool_use"


def test_refusal_and_reasoning_deltas() -> None:
    wire = (
        chunk({"reasoning_content": "thinking..."})
        + chunk({"refusal": "I can't."})
        + chunk({}, "content_filter")
        + DONE
    )
    out = anthropic_events(run(ChatToMessagesStream(CLAUDE), wire))
    deltas = [e["delta"] for e in out if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": "I can't."}]
    assert out[-2]["delta"]["stop_reason"] == "refusal"


def test_openai_error_chunk_becomes_an_error_event(claude_reading: Any) -> None:
    error = {
        "error": {
            "message": "Rate limit reached.",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    wire = (
        chunk({"content": "Hi"})
        + b"data: "
        + orjson.dumps(error)
        + b"\n\n"
        + chunk({"content": "more"})
        + DONE
    )
    stream = ChatToMessagesStream(CLAUDE)
    out = run(stream, wire)
    last = anthropic_events(out)[-1]
    assert last == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached."},
    }
    assert b"more" not in out and b"message_stop" not in out
    client = claude_reading(out)
    with (
        pytest.raises(anthropic.APIStatusError, match="Rate limit reached"),
        client.messages.stream(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as s,
    ):
        s.get_final_message()


def test_comments_crlf_and_junk_events_are_skipped() -> None:
    clean = chunk({"content": "Hi"}) + chunk({}, "stop") + usage_chunk() + DONE
    noisy = (b": keep-alive\n\n" + b"data: not json\n\n" + b"data: [1, 2]\n\n" + clean).replace(
        b"\n", b"\r\n"
    )
    assert run(ChatToMessagesStream(CLAUDE), noisy) == run(ChatToMessagesStream(CLAUDE), clean)


def test_sdk_reads_the_raw_events_too(claude_reading: Any) -> None:
    out = run(ChatToMessagesStream(CLAUDE), mock_openai("mock:words=7"))
    client = claude_reading(out)
    stream = client.messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    final = claude_final(claude_reading(out))
    assert final.content[0].text == "lorem ipsum dolor sit amet consectetur adipiscing"
    assert final.model == CLAUDE
    assert final.usage.output_tokens == 7


# --- Anthropic upstream -> OpenAI client ---------------------------------------------------


def test_anthropic_text_stream_to_chunks() -> None:
    out = openai_chunks(
        run(MessagesToChatStream(GPT, include_usage=True), mock_anthropic("mock:words=5"))
    )
    assert out[-1] == "[DONE]"
    first, *middle, finish, usage, _ = out
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["object"] == "chat.completion.chunk" and first["model"] == GPT
    assert first["id"].startswith("chatcmpl-mock_")
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in middle) == "lorem ipsum dolor sit amet"
    )
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in out[:-1]}) == 1


def test_usage_chunk_only_when_the_client_asked() -> None:
    out = openai_chunks(run(MessagesToChatStream(GPT, include_usage=False), mock_anthropic("hi")))
    assert all(c == "[DONE]" or c["choices"] for c in out)
    assert not any(isinstance(c, dict) and "usage" in c for c in out)


def cached_anthropic_stream(*blocks: bytes, stop: str = "end_turn") -> bytes:
    start_usage = {
        "input_tokens": 50,
        "output_tokens": 1,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 4000,
    }
    message = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "upstream",
        "content": [],
        "stop_reason": None,
        "usage": start_usage,
    }
    return b"".join(
        [
            sse("message_start", {"type": "message_start", "message": message}),
            sse("ping", {"type": "ping"}),
            *blocks,
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 42},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]
    )


def block_events(index: int, block: dict[str, Any], deltas: list[dict[str, Any]]) -> bytes:
    return b"".join(
        [
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            ),
            *(
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                )
                for d in deltas
            ),
            sse("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    )


THINKING_TEXT_TOOL = cached_anthropic_stream(
    block_events(
        0,
        {"type": "thinking", "thinking": "", "signature": ""},
        [
            {"type": "thinking_delta", "thinking": "Hmm."},
            {"type": "signature_delta", "signature": "abc"},
        ],
    ),
    block_events(
        1,
        {"type": "text", "text": ""},
        [{"type": "text_delta", "text": "Let me "}, {"type": "text_delta", "text": "check."}],
    ),
    block_events(
        2,
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {}},
        [
            {"type": "input_json_delta", "partial_json": ""},
            {"type": "input_json_delta", "partial_json": '{"city": "Os'},
            {"type": "input_json_delta", "partial_json": 'lo"}'},
        ],
    ),
    block_events(3, {"type": "tool_use", "id": "toolu_02", "name": "time", "input": {}}, []),
    stop="tool_use",
)


def test_thinking_text_and_tools_to_chunks(gpt_reading: Any) -> None:
    out = run(MessagesToChatStream(GPT, include_usage=True), THINKING_TEXT_TOOL)
    assert b"Hmm." not in out and b"signature" not in out  # no counterpart in OpenAI
    chunks = openai_chunks(out)
    assert chunks[0]["id"] == "chatcmpl-01abc"
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks[:-2]
        if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert [c["index"] for c in calls] == [0, 0, 0, 1]
    assert chunks[-2]["usage"] == {
        "prompt_tokens": 4350,
        "completion_tokens": 42,
        "total_tokens": 4392,
        "prompt_tokens_details": {"cached_tokens": 4000},
    }
    final = gpt_final(gpt_reading(out))
    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("toolu_01", "weather", '{"city": "Oslo"}'),
        ("toolu_02", "time", ""),
    ]
    assert final.usage.prompt_tokens == 4350
    assert final.usage.prompt_tokens_details.cached_tokens == 4000


def test_mock_tool_call_through_the_openai_sdk(gpt_reading: Any) -> None:
    out = run(
        MessagesToChatStream(GPT, include_usage=True), mock_anthropic("mock:tool", tools=True)
    )
    final = gpt_final(gpt_reading(out))
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "weather" and orjson.loads(call.function.arguments) == {
        "city": "x",
        "days": 1,
    }
    assert call.id.startswith("toolu_mock_")
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
    ],
)
def test_stop_reasons_in_streams(stop: str, finish: str, gpt_reading: Any) -> None:
    wire = cached_anthropic_stream(
        block_events(0, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "x"}]),
        stop=stop,
    )
    out = run(MessagesToChatStream(GPT, include_usage=False), wire)
    # The raw stream: the SDK's helper raises on "length" and "content_filter".
    client = gpt_reading(out)
    with client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as stream:
        reasons = [c.choices[0].finish_reason for c in stream if c.choices]
    assert reasons[-1] == finish and set(reasons[:-1]) == {None}


def test_anthropic_error_event_becomes_an_error_chunk(gpt_reading: Any) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    head = cached_anthropic_stream().split(b"event: message_delta")[0]
    stream = MessagesToChatStream(GPT, include_usage=True)
    out = run(stream, head + sse("error", error) + sse("message_stop", {"type": "message_stop"}))
    *_, last = openai_chunks(out)
    assert last == {
        "error": {
            "message": "Overloaded",
            "type": "overloaded_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert not out.endswith(DONE)
    client = gpt_reading(out)
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(
            client.chat.completions.create(
                model=GPT, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )


@pytest.mark.parametrize(
    ("wire", "owed"),
    [
        (cached_anthropic_stream().split(b"event: message_stop")[0], ["usage", "[DONE]"]),
        (cached_anthropic_stream().split(b"event: message_delta")[0], []),
        (b"", []),
        (cached_anthropic_stream(), []),
    ],
)
def test_messages_finish_owes_only_the_end_of_a_finished_answer(
    wire: bytes, owed: list[str]
) -> None:
    stream = MessagesToChatStream(GPT, include_usage=True)
    stream.feed(wire)
    got = [
        "[DONE]" if c == "[DONE]" else "usage" if "usage" in c else "chunk"
        for c in openai_chunks(stream.finish())
    ]
    assert got == owed
    assert stream.finish() == b""


def test_event_name_is_enough_when_data_has_no_type() -> None:
    wire = sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hey"}})
    out = openai_chunks(MessagesToChatStream(GPT, include_usage=False).feed(wire))
    assert out[-1]["choices"][0]["delta"] == {"content": "hey"}


# --- both ways: how the bytes were cut never matters ---------------------------------------


def _streams() -> list[tuple[str, Any, bytes]]:
    chat = mock_openai("mock:words=6")
    chat_tools = mock_openai("mock:tool", tools=True)
    claude = mock_anthropic("mock:words=6")
    return [
        ("chat text", lambda: ChatToMessagesStream(CLAUDE), chat),
        ("chat tools", lambda: ChatToMessagesStream(CLAUDE), chat_tools),
        ("claude text", lambda: MessagesToChatStream(GPT, include_usage=True), claude),
        ("claude tools", lambda: MessagesToChatStream(GPT, include_usage=True), THINKING_TEXT_TOOL),
    ]


@pytest.mark.parametrize(("name", "make", "wire"), _streams(), ids=[s[0] for s in _streams()])
def test_split_at_every_byte_boundary_gives_the_same_output(
    name: str, make: Any, wire: bytes
) -> None:
    whole = run(make(), wire)
    assert whole
    for size in range(1, 65):
        assert run(make(), wire, size) == whole, size
    for cut in range(len(wire) + 1):
        stream, splitter = make(), EventSplitter()
        out = stream.feed(splitter.feed(wire[:cut])) + stream.feed(splitter.feed(wire[cut:]))
        assert out + stream.finish() == whole, cut


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_split_at_random_boundaries_gives_the_same_output(data: st.DataObject) -> None:
    _, make, wire = data.draw(st.sampled_from(_streams()), label="stream")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=30), label="cuts"))
    stream, splitter = make(), EventSplitter()
    points = [0, *cuts, len(wire)]
    out = b"".join(stream.feed(splitter.feed(wire[a:b])) for a, b in itertools.pairwise(points))
    assert out + stream.finish() == run(make(), wire)


def test_round_trip_through_both_streams_keeps_the_answer(claude_reading: Any) -> None:
    there = run(MessagesToChatStream(GPT, include_usage=True), THINKING_TEXT_TOOL)
    back = run(ChatToMessagesStream(CLAUDE), there)
    final = claude_final(claude_reading(back))
    original = claude_final(claude_reading(THINKING_TEXT_TOOL))
    assert [b.model_dump() for b in final.content] == [
        b.model_dump() for b in original.content if b.type != "thinking"
    ]
    assert final.stop_reason == original.stop_reason == "tool_use"
    # Cache writes have no OpenAI count and come back as plain input; the total is kept.
    assert final.usage.cache_read_input_tokens == 4000
    assert final.usage.input_tokens == 350 and final.usage.output_tokens == 42


# --- anything upstream sends: no crash -----------------------------------------------------

_text = st.text(max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)
_kinds = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
        "ping",
    ]
)
_anthropic_event = st.fixed_dictionaries(
    {"type": _kinds},
    optional={
        "index": _json | st.integers(0, 2),
        "message": _json,
        "content_block": _json
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "tool_use"])},
            optional={"id": _json, "name": _json, "text": _json, "input": _json},
        ),
        "delta": _json
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["text_delta", "input_json_delta"])},
            optional={"text": _json, "partial_json": _json, "stop_reason": _json},
        ),
        "usage": _json,
        "error": _json,
    },
)
_openai_chunk = st.fixed_dictionaries(
    {},
    optional={
        "id": _json,
        "choices": _json
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "delta": _json
                    | st.fixed_dictionaries(
                        {},
                        optional={
                            "content": _json,
                            "tool_calls": _json
                            | st.lists(
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "index": _json | st.integers(0, 2),
                                        "id": _json,
                                        "function": _json
                                        | st.fixed_dictionaries(
                                            {}, optional={"name": _json, "arguments": _json}
                                        ),
                                    },
                                ),
                                max_size=2,
                            ),
                        },
                    ),
                    "finish_reason": _json,
                },
            ),
            max_size=2,
        ),
        "usage": _json,
        "error": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    anthropic_in=st.lists(st.tuples(_kinds, _anthropic_event | _json), max_size=8),
    openai_in=st.lists(_openai_chunk | _json | st.just("[DONE]"), max_size=8),
)
def test_odd_upstream_events_never_crash(
    anthropic_in: list[tuple[str, Any]], openai_in: list[Any]
) -> None:
    wire = b"".join(sse(name, data) for name, data in anthropic_in)
    out = run(MessagesToChatStream(GPT, include_usage=True), wire)
    for event in events(out):
        assert event.startswith(b"data: ")
        orjson.loads(data_of(event)) if data_of(event) != b"[DONE]" else None
    wire = b"".join(
        b"data: " + (b"[DONE]" if c == "[DONE]" else orjson.dumps(c)) + b"\n\n" for c in openai_in
    )
    out = run(ChatToMessagesStream(CLAUDE), wire)
    for data in anthropic_events(out):
        assert data["type"] in (
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "error",
        )
