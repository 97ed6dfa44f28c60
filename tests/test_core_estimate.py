"""Request facts and the input upper bound (capgate.core.estimate)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.estimate import (
    DOCUMENT_ALLOWANCE,
    IMAGE_ALLOWANCE,
    MESSAGE_OVERHEAD,
    REQUEST_OVERHEAD,
    RequestFacts,
    anthropic_facts,
    input_bound,
    openai_chat_facts,
)
from capgate.errors import CapgateError, InvalidRequest
from capgate.mock.generation import input_tokens

MSGS = [{"role": "user", "content": "hi"}]
FACTS = [anthropic_facts, openai_chat_facts]


# --- anthropic_facts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "facts"),
    [
        ({"model": "claude-x", "messages": MSGS}, RequestFacts("claude-x", False, None)),
        (
            {"model": "claude-x", "messages": [], "max_tokens": 1024},
            RequestFacts("claude-x", False, 1024),
        ),
        (
            {"model": "m", "messages": MSGS, "max_tokens": 1, "stream": True},
            RequestFacts("m", True, 1),
        ),
        ({"model": "m", "messages": MSGS, "stream": False}, RequestFacts("m", False, None)),
        ({"model": "m", "messages": MSGS, "max_tokens": None}, RequestFacts("m", False, None)),
        # OpenAI-only fields mean nothing here
        (
            {"model": "m", "messages": MSGS, "n": 5, "max_completion_tokens": 9},
            RequestFacts("m", False, None, 1),
        ),
    ],
)
def test_anthropic_facts(body: dict[str, Any], facts: RequestFacts) -> None:
    assert anthropic_facts(body) == facts


BAD_COMMON = [
    # (body, message)
    ([], "request body must be a JSON object"),
    ("text", "request body must be a JSON object"),
    (None, "request body must be a JSON object"),
    ({"messages": MSGS}, "model: field required (a non-empty string)"),
    ({"model": "", "messages": MSGS}, "model: field required (a non-empty string)"),
    ({"model": 5, "messages": MSGS}, "model: field required (a non-empty string)"),
    ({"model": None, "messages": MSGS}, "model: field required (a non-empty string)"),
    ({"model": ["m"], "messages": MSGS}, "model: field required (a non-empty string)"),
    ({"model": "m"}, "messages: field required (a list)"),
    ({"model": "m", "messages": "hi"}, "messages: field required (a list)"),
    ({"model": "m", "messages": {"role": "user"}}, "messages: field required (a list)"),
    ({"model": "m", "messages": None}, "messages: field required (a list)"),
    (
        {"model": "m", "messages": MSGS, "max_tokens": "100"},
        "max_tokens: must be a positive integer",
    ),
    ({"model": "m", "messages": MSGS, "max_tokens": 1.5}, "max_tokens: must be a positive integer"),
    (
        {"model": "m", "messages": MSGS, "max_tokens": 100.0},
        "max_tokens: must be a positive integer",
    ),
    (
        {"model": "m", "messages": MSGS, "max_tokens": True},
        "max_tokens: must be a positive integer",
    ),
    (
        {"model": "m", "messages": MSGS, "max_tokens": False},
        "max_tokens: must be a positive integer",
    ),
    ({"model": "m", "messages": MSGS, "max_tokens": 0}, "max_tokens: must be a positive integer"),
    ({"model": "m", "messages": MSGS, "max_tokens": -5}, "max_tokens: must be a positive integer"),
    ({"model": "m", "messages": MSGS, "max_tokens": [1]}, "max_tokens: must be a positive integer"),
    ({"model": "m", "messages": MSGS, "stream": "true"}, "stream: must be a boolean"),
    ({"model": "m", "messages": MSGS, "stream": 1}, "stream: must be a boolean"),
    ({"model": "m", "messages": MSGS, "stream": 0}, "stream: must be a boolean"),
    ({"model": "m", "messages": MSGS, "stream": {}}, "stream: must be a boolean"),
]


@pytest.mark.parametrize("facts", FACTS)
@pytest.mark.parametrize(("body", "message"), BAD_COMMON)
def test_bad_requests_name_the_field(facts: Any, body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        facts(body)
    assert info.value.message == message
    assert info.value.status == 400
    assert info.value.kind == "invalid_request_error"
    assert isinstance(info.value, CapgateError)


def test_model_is_checked_before_messages_and_messages_before_numbers() -> None:
    with pytest.raises(InvalidRequest, match=r"^model:"):
        anthropic_facts({"messages": "x", "max_tokens": "y", "stream": "z"})
    with pytest.raises(InvalidRequest, match=r"^messages:"):
        anthropic_facts({"model": "m", "max_tokens": "y", "stream": "z"})


# --- openai_chat_facts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "max_output", "choices"),
    [
        ({}, None, 1),
        ({"max_tokens": 100}, 100, 1),
        ({"max_completion_tokens": 50}, 50, 1),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50, 1),  # the newer name wins
        ({"max_completion_tokens": 500, "max_tokens": 100}, 500, 1),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100, 1),
        ({"max_completion_tokens": None, "max_tokens": None}, None, 1),
        ({"n": 3}, None, 3),
        ({"n": 1, "max_tokens": 7}, 7, 1),
        ({"n": None}, None, 1),
        ({"n": 4, "max_completion_tokens": 10, "stream": True}, 10, 4),
    ],
)
def test_openai_chat_facts(extra: dict[str, Any], max_output: int | None, choices: int) -> None:
    body = {"model": "gpt-4o", "messages": MSGS, **extra}
    facts = openai_chat_facts(body)
    assert facts == RequestFacts("gpt-4o", extra.get("stream", False), max_output, choices)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_completion_tokens": "5"}, "max_completion_tokens: must be a positive integer"),
        ({"max_completion_tokens": 0}, "max_completion_tokens: must be a positive integer"),
        ({"max_completion_tokens": True}, "max_completion_tokens: must be a positive integer"),
        (
            {"max_completion_tokens": 2.0, "max_tokens": 5},
            "max_completion_tokens: must be a positive integer",
        ),
        ({"max_tokens": -1}, "max_tokens: must be a positive integer"),
        ({"n": 0}, "n: must be a positive integer"),
        ({"n": True}, "n: must be a positive integer"),
        ({"n": "2"}, "n: must be a positive integer"),
        ({"n": 1.0}, "n: must be a positive integer"),
    ],
)
def test_openai_chat_facts_rejects(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_chat_facts({"model": "gpt-4o", "messages": MSGS, **extra})
    assert info.value.message == message


def test_openai_stream_null_means_not_streaming() -> None:
    facts = openai_chat_facts({"model": "gpt-4o", "messages": MSGS, "stream": None})
    assert facts.stream is False


# --- input_bound ------------------------------------------------------------------------


def _bound(body: dict[str, Any]) -> tuple[int, int]:
    raw = orjson.dumps(body)
    return input_bound(body, len(raw)), len(raw)


def test_plain_text_bound() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}] * 3}
    bound, size = _bound(body)
    assert bound == size + REQUEST_OVERHEAD + 3 * MESSAGE_OVERHEAD
    assert input_bound({"model": "m"}, 10) == 10 + REQUEST_OVERHEAD
    assert input_bound({"model": "m", "messages": "not a list"}, 10) == 10 + REQUEST_OVERHEAD
    # a plain-text system prompt adds only its bytes
    body["system"] = "You are terse."
    bound2, size2 = _bound(body)
    assert bound2 == size2 + REQUEST_OVERHEAD + 3 * MESSAGE_OVERHEAD


IMAGE_B64 = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
}
IMAGE_URL = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
INPUT_IMAGE = {"type": "input_image", "image_url": "https://example.com/a.png"}
PDF = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
}
PDF_URL = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
TEXT_DOC = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
CONTENT_DOC = {
    "type": "document",
    "source": {"type": "content", "content": [{"type": "text", "text": "x"}]},
}
OPENAI_FILE = {"type": "file", "file": {"file_id": "file-abc"}}
INPUT_FILE = {"type": "input_file", "file_id": "file-abc"}
TEXT = {"type": "text", "text": "look at this"}


@pytest.mark.parametrize(
    ("blocks", "extra"),
    [
        ([TEXT], 0),
        ([IMAGE_B64], IMAGE_ALLOWANCE),
        ([IMAGE_URL], IMAGE_ALLOWANCE),
        ([INPUT_IMAGE], IMAGE_ALLOWANCE),
        ([TEXT, IMAGE_B64, IMAGE_URL], 2 * IMAGE_ALLOWANCE),
        ([PDF], DOCUMENT_ALLOWANCE),
        ([PDF_URL], DOCUMENT_ALLOWANCE),
        ([OPENAI_FILE], DOCUMENT_ALLOWANCE),
        ([INPUT_FILE], DOCUMENT_ALLOWANCE),
        ([TEXT_DOC], MESSAGE_OVERHEAD),
        ([CONTENT_DOC], MESSAGE_OVERHEAD),
        ([PDF, IMAGE_B64, TEXT_DOC], DOCUMENT_ALLOWANCE + IMAGE_ALLOWANCE + MESSAGE_OVERHEAD),
        (
            [{"type": "tool_result", "tool_use_id": "t1", "content": [TEXT, IMAGE_B64]}],
            IMAGE_ALLOWANCE,
        ),
        (
            [{"type": "tool_result", "tool_use_id": "t1", "content": [PDF, IMAGE_B64, IMAGE_B64]}],
            DOCUMENT_ALLOWANCE + 2 * IMAGE_ALLOWANCE,
        ),
        ([{"type": "tool_result", "tool_use_id": "t1", "content": "plain text"}], 0),
    ],
)
def test_non_text_allowances(blocks: list[dict[str, Any]], extra: int) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": blocks},
        ],
    }
    bound, size = _bound(body)
    assert bound == size + REQUEST_OVERHEAD + 3 * MESSAGE_OVERHEAD + extra


def test_system_blocks_get_allowances_too() -> None:
    body = {"model": "m", "messages": [], "system": [TEXT, IMAGE_B64, PDF]}
    bound, size = _bound(body)
    assert bound == size + REQUEST_OVERHEAD + IMAGE_ALLOWANCE + DOCUMENT_ALLOWANCE


def test_deeply_nested_content_is_bounded_without_recursion_error() -> None:
    node: Any = IMAGE_B64
    for _ in range(2000):
        node = {"type": "tool_result", "content": [node]}
    body = {"model": "m", "messages": [{"role": "user", "content": [node]}]}
    assert input_bound(body, 10) >= 10 + REQUEST_OVERHEAD


TEXTS = st.text(max_size=200)
CONTENT = TEXTS | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXTS})
    | st.just(IMAGE_B64)
    | st.just(PDF)
    | st.just(IMAGE_URL),
    max_size=4,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system"]), "content": CONTENT}
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES, system=st.none() | TEXTS, tools=st.lists(TEXTS, max_size=3))
def test_input_bound_covers_body_bytes_and_mock_tokens(
    messages: list[Any], system: str | None, tools: list[str]
) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": messages}
    if system is not None:
        body["system"] = system
    if tools:
        body["tools"] = [{"name": f"t{i}", "description": d} for i, d in enumerate(tools)]
    raw = orjson.dumps(body)
    bound = input_bound(body, len(raw))
    assert bound >= len(raw) + REQUEST_OVERHEAD + MESSAGE_OVERHEAD * len(messages)
    # the mock upstream's token count is a byte-bounded stand-in for a real tokenizer
    assert bound >= input_tokens(body)
    images = sum(
        1
        for m in messages
        if isinstance(m["content"], list)
        for b in m["content"]
        if b in (IMAGE_B64, IMAGE_URL)
    )
    docs = sum(
        1 for m in messages if isinstance(m["content"], list) for b in m["content"] if b == PDF
    )
    assert bound == (
        len(raw)
        + REQUEST_OVERHEAD
        + MESSAGE_OVERHEAD * len(messages)
        + IMAGE_ALLOWANCE * images
        + DOCUMENT_ALLOWANCE * docs
    )
