"""SSE splitting and usage taps (capgate.wire), against realistic stream bytes."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.money import Usage
from capgate.mock.generation import input_tokens
from capgate.mock.responses import (
    anthropic_message,
    anthropic_stream,
    openai_chat,
    openai_chat_stream,
)
from capgate.wire import anthropic as anthropic_wire
from capgate.wire import openai as openai_wire
from capgate.wire.anthropic import AnthropicStreamTap, message_usage
from capgate.wire.openai import OpenAIStreamTap, completion_usage
from capgate.wire.sse import EventSplitter, data_of, events

# --- helpers ----------------------------------------------------------------------------


def sse(event: str | None, data: Any) -> bytes:
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(c for c in cuts if 0 <= c <= len(stream))})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def relay(feed: Callable[[bytes], bytes], chunks: list[bytes]) -> list[bytes]:
    return [feed(c) for c in chunks]


def anthropic_body(text: str, max_tokens: int = 4096, model: str = "claude-test") -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }


def openai_body(text: str, include_usage: bool = True, model: str = "gpt-test") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": text}],
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def delta_texts(block: bytes) -> list[str]:
    """Texts of the content_block_delta events in a block of complete events."""
    out = []
    for event in events(block):
        data = orjson.loads(data_of(event))
        if data.get("type") == "content_block_delta":
            out.append(data["delta"]["text"])
    return out


def chat_texts(block: bytes) -> list[str]:
    out = []
    for event in events(block):
        payload = data_of(event)
        if payload == b"[DONE]":
            continue
        for choice in orjson.loads(payload)["choices"]:
            content = choice["delta"].get("content")
            if content:
                out.append(content)
    return out


# --- EventSplitter ----------------------------------------------------------------------

VALUES = st.text(
    alphabet=st.characters(exclude_characters="\r\n", codec="utf-8"),
    max_size=40,
)
LINES = st.tuples(st.sampled_from(["event: ", "data: ", "data:", "id: ", ": "]), VALUES).map(
    lambda t: (t[0] + t[1]).encode()
)
EVENTS = st.lists(st.lists(LINES, min_size=1, max_size=4), min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(raw=EVENTS, crlf=st.lists(st.booleans(), min_size=12, max_size=12), data=st.data())
def test_splitter_yields_exactly_the_original_events(
    raw: list[list[bytes]], crlf: list[bool], data: st.DataObject
) -> None:
    lf_events = [b"\n".join(lines) + b"\n\n" for lines in raw]
    wire = [e.replace(b"\n", b"\r\n") if crlf[i] else e for i, e in enumerate(lf_events)]
    stream = b"".join(wire)
    expected = b"".join(lf_events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    splitter = EventSplitter()
    fed = b""
    relayed = b""
    for chunk in chunked(stream, cuts):
        out = splitter.feed(chunk)
        fed += chunk
        relayed += out
        # only complete events come out, and every complete one at once
        assert out == b"" or out.endswith(b"\n\n")
        norm = fed.replace(b"\r\n", b"\n")
        end = norm.rfind(b"\n\n")
        assert relayed == (norm[: end + 2] if end >= 0 else b"")
    assert relayed == expected
    assert splitter.rest() == b""
    assert list(events(relayed)) == [e[:-2] for e in lf_events]


@pytest.mark.parametrize("crlf", [False, True])
def test_splitter_byte_by_byte(crlf: bool) -> None:
    stream = b"event: a\ndata: 1\n\ndata: 2\ndata: 3\n\n: keepalive\n\n"
    expected = stream
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    splitter = EventSplitter()
    outs = [splitter.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert b"".join(outs) == expected
    assert [o for o in outs if o] == [
        b"event: a\ndata: 1\n\n",
        b"data: 2\ndata: 3\n\n",
        b": keepalive\n\n",
    ]


def test_splitter_keeps_an_unfinished_tail_for_rest() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: par") == b"data: 1\n\n"
    assert splitter.feed(b"tial") == b""
    assert splitter.rest() == b"data: partial"
    assert splitter.rest() == b""
    assert splitter.feed(b"data: x\n") == b""
    assert splitter.feed(b"\n") == b"data: x\n\n"


def test_splitter_cr_and_lf_in_separate_chunks() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r") == b""
    assert splitter.feed(b"\ndata: 2\r") == b"data: 1\n\n"
    assert splitter.feed(b"\n\r\n") == b"data: 2\n\n"


def test_events_and_data_of() -> None:
    assert list(events(b"a\n\nb\n\n")) == [b"a", b"b"]
    assert list(events(b"\n\na\n\n\n\n")) == [b"a"]
    assert list(events(b"")) == []
    assert data_of(b"event: x\ndata: hello") == b"hello"
    assert data_of(b"data:hello") == b"hello"
    assert data_of(b"data:  two") == b" two"  # only one space is stripped
    assert data_of(b"data: a\ndata: b\nid: 3") == b"a\nb"
    assert data_of(b"event: ping") == b""
    assert data_of(b": comment\ndata: [DONE]") == b"[DONE]"


# --- Anthropic: usage_of / message_usage --------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ("x", None),
        ([], None),
        ({}, None),  # unreadable: no counts
        ({"input_tokens": 10, "output_tokens": 5}, Usage(10, 5)),
        (
            {
                "input_tokens": 12,
                "output_tokens": 34,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 4000,
            },
            Usage(12, 34, 4000, 300, 0),
        ),
        (
            {
                "input_tokens": 12,
                "output_tokens": 34,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 4000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 200,
                },
            },
            Usage(12, 34, 4000, 100, 200),
        ),
        (
            {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 50,
                "cache_creation": {"ephemeral_1h_input_tokens": 80},
            },
            Usage(0, 0, 0, 0, 80),
        ),
        (
            {
                "input_tokens": 1,
                "output_tokens": 2.0,  # an integral float is read
                "cache_creation_input_tokens": 50,
                "cache_creation": None,
            },
            Usage(1, 2, cache_write_tokens=50),
        ),
        # input or output missing, or a nonsense count: the usage cannot be read
        ({"cache_creation_input_tokens": 50, "cache_creation": None}, None),
        ({"input_tokens": -5, "output_tokens": True, "cache_read_input_tokens": "7"}, None),
        ({"input_tokens": 1.5, "output_tokens": None}, None),
        ({"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": "7"}, None),
    ],
)
def test_anthropic_usage_of(usage: Any, expected: Usage | None) -> None:
    assert anthropic_wire.usage_of(usage) == expected


def test_message_usage_of_a_real_looking_answer() -> None:
    body = anthropic_body("mock:words=12", max_tokens=5)
    answer = anthropic_message(body)
    usage, model = message_usage(orjson.dumps(answer))
    assert model == "claude-test"
    assert usage == Usage(input_tokens=input_tokens(body), output_tokens=5)
    # with caching fields as the real API reports them
    answer["usage"] |= {
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 10_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 48, "ephemeral_1h_input_tokens": 2000},
    }
    usage, _ = message_usage(orjson.dumps(answer))
    assert usage == Usage(input_tokens(body), 5, 10_000, 48, 2000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", (None, None)),
        (b"", (None, None)),
        (b"[1, 2]", (None, None)),
        (b'"text"', (None, None)),
        (b'{"model": "m"}', (None, "m")),
        (b'{"model": 5, "usage": {"input_tokens": 3, "output_tokens": 0}}', (Usage(3), None)),
        (b'{"model": "m", "usage": {"input_tokens": 3}}', (None, "m")),  # no output count
        (b'{"type": "error", "error": {"type": "overloaded_error"}}', (None, None)),
    ],
)
def test_message_usage_of_odd_bodies(raw: bytes, expected: tuple[Any, Any]) -> None:
    assert message_usage(raw) == expected


def test_message_usage_without_usage() -> None:
    answer = anthropic_message(anthropic_body("mock:no_usage"))
    assert "usage" not in answer
    assert message_usage(orjson.dumps(answer)) == (None, "claude-test")


# --- Anthropic stream tap ---------------------------------------------------------------


def cached_stream(deltas: list[str], finals: list[int]) -> list[bytes]:
    """A Messages stream with prompt caching, shaped like the real API's."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 3000,
                "cache_read_input_tokens": 500,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    }
    out = [
        sse("message_start", start),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    for text in deltas:
        out.append(
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        )
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for n in finals:
        out.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": n},
                },
            )
        )
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


def test_anthropic_tap_reads_cached_usage_and_cumulative_output() -> None:
    stream = cached_stream(["Hello", " there", ", friend."], [15, 42])
    tap = AnthropicStreamTap()
    out = [tap.feed(e) for e in stream]
    assert out == stream  # each complete event passes through unchanged
    assert tap.finished
    assert tap.model == "claude-sonnet-4-6"
    assert tap.usage() == Usage(
        input_tokens=12,
        output_tokens=42,  # the newest cumulative count wins
        cache_read_tokens=500,
        cache_write_tokens=1000,
        cache_write_1h_tokens=2000,
    )
    assert tap.partial_usage() == tap.usage()


def test_anthropic_tap_message_delta_may_update_input_counts() -> None:
    stream = cached_stream(["x"], [])
    update = sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 600, "output_tokens": 9},
        },
    )
    tap = AnthropicStreamTap()
    for e in [*stream[:-1], update, stream[-1]]:
        tap.feed(e)
    assert tap.usage() == Usage(20, 9, 600, 1000, 2000)


def test_anthropic_tap_finished_only_on_message_stop() -> None:
    stream = b"".join(cached_stream(["a", "b"], [3]))
    stop = sse("message_stop", {"type": "message_stop"})
    tap = AnthropicStreamTap()
    for i in range(len(stream)):
        tap.feed(stream[i : i + 1])
        assert tap.finished is (i == len(stream) - 1), i
    assert len(stream) - len(stop) > 0


def test_anthropic_tap_placeholder_output_before_message_delta() -> None:
    stream = cached_stream(["Hello", " world"], [7])
    tap = AnthropicStreamTap()
    for e in stream[:-3]:  # everything up to and including the last text delta
        tap.feed(e)
    assert not tap.finished
    usage = tap.usage()
    assert usage is not None
    assert usage.output_tokens == 1  # message_start's placeholder
    partial = tap.partial_usage()
    assert partial.output_tokens >= len(b"Hello world")
    assert (partial.input_tokens, partial.cache_read_tokens) == (12, 500)
    assert (partial.cache_write_tokens, partial.cache_write_1h_tokens) == (1000, 2000)
    tap.feed(stream[-2])  # message_delta: the count is now exact
    assert tap.partial_usage() == Usage(12, 7, 500, 1000, 2000)


def test_anthropic_tap_without_any_usage() -> None:
    tap = AnthropicStreamTap()
    assert tap.usage() is None
    assert tap.partial_usage() == Usage()
    for e in anthropic_stream(anthropic_body("mock:no_usage mock:words=30")):
        tap.feed(e)
    assert tap.finished
    assert tap.usage() is None
    assert tap.model == "claude-test"


def test_anthropic_tap_ignores_broken_events() -> None:
    tap = AnthropicStreamTap()
    junk = [
        b"event: message_start\ndata: {not json\n\n",
        b"event: message_start\ndata: [1]\n\n",
        b'event: message_start\ndata: {"type":"message_start","message":"x"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":null}\n\n',
        b"event: ping\ndata: {}\n\n",
    ]
    assert [tap.feed(j) for j in junk] == junk
    assert tap.usage() is None
    assert not tap.finished


@settings(max_examples=150, deadline=None)
@given(words=st.integers(0, 60), max_tokens=st.integers(1, 80), data=st.data())
def test_anthropic_tap_over_any_chunking(words: int, max_tokens: int, data: st.DataObject) -> None:
    body = anthropic_body(f"mock:words={words}", max_tokens=max_tokens)
    stream = b"".join(anthropic_stream(body))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=15), label="cuts")
    tap = AnthropicStreamTap()
    out = relay(tap.feed, chunked(stream, cuts))
    assert b"".join(out) + tap.splitter.rest() == stream
    assert tap.finished
    assert tap.model == "claude-test"
    expected = Usage(input_tokens=input_tokens(body), output_tokens=min(words, max_tokens))
    assert tap.usage() == expected
    assert tap.partial_usage() == expected


@settings(max_examples=200, deadline=None)
@given(words=st.integers(1, 80), cut_stream=st.booleans(), data=st.data())
def test_anthropic_partial_usage_bounds_the_text_relayed(
    words: int, cut_stream: bool, data: st.DataObject
) -> None:
    directive = " mock:cut_stream" if cut_stream else ""
    body = anthropic_body(f"mock:words={words}{directive}")
    stream = b"".join(anthropic_stream(body))
    # the connection drops somewhere; whatever complete events arrived were relayed
    stop = data.draw(st.integers(0, len(stream)), label="stop")
    cuts = data.draw(st.lists(st.integers(0, stop), max_size=10), label="cuts")
    tap = AnthropicStreamTap()
    relayed = b"".join(relay(tap.feed, chunked(stream[:stop], cuts)))
    texts = delta_texts(relayed)
    partial = tap.partial_usage()
    if b"message_delta" in relayed:
        assert partial == tap.usage()
        assert partial.output_tokens == words
    else:
        assert partial.output_tokens >= len("".join(texts).encode())
        assert partial.output_tokens >= len("".join(texts).split())  # one word, one token
    if b"message_start" in relayed:
        assert partial.input_tokens == input_tokens(body)
    else:
        assert partial == Usage()
    assert tap.finished is (b"message_stop" in relayed)


def test_anthropic_finished_not_fooled_by_text() -> None:
    stream = cached_stream(["Say message_stop now", " and then write a novel"], [5000])
    tap = AnthropicStreamTap()
    for e in stream[:5]:  # up to the text delta that mentions message_stop
        tap.feed(e)
    assert not tap.finished


def test_anthropic_partial_bound_not_fooled_by_text() -> None:
    text = " ".join(["content_block_delta"] * 10)
    stream = cached_stream([text], [500])
    tap = AnthropicStreamTap()
    for e in stream[:4]:
        tap.feed(e)
    assert tap.partial_usage().output_tokens >= len(text.encode())


# --- OpenAI: usage_of / completion_usage --------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ("x", None),
        ({}, None),
        ({"prompt_tokens": 100, "completion_tokens": 20}, Usage(100, 20)),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "total_tokens": 120,
                "prompt_tokens_details": {"cached_tokens": 30, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 10},
            },
            Usage(input_tokens=70, output_tokens=20, cache_read_tokens=30),
        ),
        # cached can never exceed the prompt
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 50},
            },
            Usage(0, 1, 10),
        ),
        ({"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": None}, Usage(10)),
        ({"prompt_tokens": 10, "prompt_tokens_details": None}, None),  # no output count
        # Responses API names
        (
            {"input_tokens": 40, "output_tokens": 8, "input_tokens_details": {"cached_tokens": 16}},
            Usage(24, 8, 16),
        ),
        ({"prompt_tokens": -1, "completion_tokens": "2"}, None),
        ({"prompt_tokens": 10.0, "completion_tokens": 2.0}, Usage(10, 2)),
    ],
)
def test_openai_usage_of(usage: Any, expected: Usage | None) -> None:
    assert openai_wire.usage_of(usage) == expected


def test_completion_usage_of_a_real_looking_answer() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "mock:words=9"}]}
    answer = openai_chat(body)
    assert completion_usage(orjson.dumps(answer)) == (
        Usage(input_tokens=input_tokens(body), output_tokens=9),
        "gpt-4o",
    )
    answer["usage"]["prompt_tokens_details"]["cached_tokens"] = 2
    usage, _ = completion_usage(orjson.dumps(answer))
    assert usage == Usage(input_tokens(body) - 2, 9, 2)
    assert completion_usage(b"{oops") == (None, None)
    assert completion_usage(b"[]") == (None, None)
    no_usage = openai_chat({**body, "messages": [{"role": "user", "content": "mock:no_usage"}]})
    assert completion_usage(orjson.dumps(no_usage)) == (None, "gpt-4o")


# --- OpenAI stream tap ------------------------------------------------------------------


def _is_usage_chunk(event: bytes) -> bool:
    payload = data_of(event[:-2])
    if payload == b"[DONE]":
        return False
    data = orjson.loads(payload)
    return data.get("choices") == [] and isinstance(data.get("usage"), dict)


@settings(max_examples=150, deadline=None)
@given(words=st.integers(0, 40), hide=st.booleans(), data=st.data())
def test_openai_tap_hides_exactly_the_usage_chunk(
    words: int, hide: bool, data: st.DataObject
) -> None:
    body = openai_body(f"mock:words={words}")
    parts = list(openai_chat_stream(body))
    assert sum(_is_usage_chunk(p) for p in parts) == 1
    stream = b"".join(parts)
    expected = b"".join(p for p in parts if not (hide and _is_usage_chunk(p)))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=15), label="cuts")
    tap = OpenAIStreamTap(hide_usage_chunk=hide)
    out = b"".join(relay(tap.feed, chunked(stream, cuts)))
    assert out + tap.splitter.rest() == expected
    assert tap.finished
    assert tap.model == "gpt-test"
    usage = Usage(input_tokens=input_tokens(body), output_tokens=words)
    assert tap.usage() == usage
    assert tap.partial_usage(10**9) == usage
    assert out.endswith(b"data: [DONE]\n\n")


def test_openai_tap_usage_chunk_with_cached_tokens() -> None:
    head = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
    }
    stream = [
        sse(
            None,
            {
                **head,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                "usage": None,
            },
        ),
        sse(None, {**head, "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None}),
        sse(
            None,
            {
                **head,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": None,
            },
        ),
        sse(
            None,
            {
                **head,
                "choices": [],
                "usage": {
                    "prompt_tokens": 2000,
                    "completion_tokens": 2,
                    "total_tokens": 2002,
                    "prompt_tokens_details": {"cached_tokens": 1536},
                },
            },
        ),
        b"data: [DONE]\n\n",
    ]
    hidden = OpenAIStreamTap(hide_usage_chunk=True)
    assert [hidden.feed(e) for e in stream] == [*stream[:3], b"", stream[4]]
    assert hidden.usage() == Usage(464, 2, 1536)
    assert hidden.model == "gpt-4o-2024-08-06"
    kept = OpenAIStreamTap(hide_usage_chunk=False)
    assert [kept.feed(e) for e in stream] == stream
    assert kept.usage() == hidden.usage()
    # all in one block: the usage chunk alone is dropped, the rest byte-identical
    once = OpenAIStreamTap(hide_usage_chunk=True)
    assert once.feed(b"".join(stream)) == b"".join([*stream[:3], stream[4]])


def test_openai_tap_keeps_usage_on_a_chunk_with_choices() -> None:
    # some providers put usage on the last chunk that still has choices: never drop that
    event = sse(
        None,
        {
            "choices": [{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        },
    )
    tap = OpenAIStreamTap(hide_usage_chunk=True)
    assert tap.feed(event) == event
    assert tap.usage() == Usage(5, 1)


def test_openai_tap_without_usage() -> None:
    body = openai_body("mock:words=5", include_usage=False)
    parts = list(openai_chat_stream(body))
    tap = OpenAIStreamTap(hide_usage_chunk=True)
    assert [tap.feed(p) for p in parts] == parts
    assert tap.finished
    assert tap.usage() is None


@settings(max_examples=150, deadline=None)
@given(words=st.integers(1, 60), data=st.data())
def test_openai_partial_usage_bounds_the_text_relayed(words: int, data: st.DataObject) -> None:
    body = openai_body(f"mock:words={words} mock:cut_stream")
    stream = b"".join(openai_chat_stream(body))
    stop = data.draw(st.integers(0, len(stream)), label="stop")
    tap = OpenAIStreamTap(hide_usage_chunk=True)
    relayed = tap.feed(stream[:stop])
    texts = chat_texts(relayed)
    partial = tap.partial_usage(input_bound=777)
    assert partial.input_tokens == 777
    assert partial.output_tokens >= len("".join(texts).encode())
    assert partial.output_tokens >= len(texts)  # one chunk, one token
    assert tap.usage() is None
    assert not tap.finished


def test_openai_finished_not_fooled_by_text() -> None:
    tap = OpenAIStreamTap(hide_usage_chunk=True)
    tap.feed(
        sse(None, {"choices": [{"index": 0, "delta": {"content": "I am [DONE]"}}], "usage": None})
    )
    assert not tap.finished
