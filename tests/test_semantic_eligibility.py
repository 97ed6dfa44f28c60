"""Which requests the semantic cache may answer (capgate.semantic.eligibility): single-turn
text, no tools, temperature 0 unless configured; everything else that shapes the answer
in the context."""

from __future__ import annotations

from typing import Any

import pytest

from capgate.semantic.eligibility import Question, eligible

Q = "How do I sort a list in Python?"


def anthropic(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 512,
        "temperature": 0,
        "messages": [{"role": "user", "content": Q}],
    }
    return body | extra


def chat(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-5",
        "temperature": 0,
        "messages": [{"role": "user", "content": Q}],
    }
    return body | extra


def responses(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "temperature": 0, "input": Q} | extra


TEXT_BLOCKS = [{"type": "text", "text": "How do I sort"}, {"type": "text", "text": "a list?"}]

ELIGIBLE = [
    ("anthropic", anthropic(), Q),
    ("anthropic", anthropic(messages=[{"role": "user", "content": TEXT_BLOCKS}]), None),
    ("anthropic", anthropic(system="You are terse.", stream=True), Q),
    ("anthropic", anthropic(system=[{"type": "text", "text": "Be terse."}]), Q),
    ("openai", chat(), Q),
    (
        "openai",
        chat(messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": Q}]),
        Q,
    ),
    (
        "openai",
        chat(messages=[{"role": "developer", "content": "x"}, {"role": "user", "content": Q}]),
        Q,
    ),
    ("openai", responses(), Q),
    ("openai", responses(instructions="Be terse."), Q),
    (
        "openai",
        responses(input=[{"role": "user", "content": [{"type": "input_text", "text": Q}]}]),
        Q,
    ),
]


@pytest.mark.parametrize(("dialect", "body", "text"), ELIGIBLE)
def test_eligible(dialect: str, body: dict[str, Any], text: str | None) -> None:
    question = eligible(body, dialect)
    assert question is not None
    assert question.text == (text or "How do I sort\na list?")


USER = {"role": "user", "content": Q}
ASSISTANT = {"role": "assistant", "content": "Use sorted()."}
TOOL = {"name": "run", "input_schema": {"type": "object"}}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}

NOT_ELIGIBLE = [
    (
        "no temperature (the default is 1)",
        "anthropic",
        {k: v for k, v in anthropic().items() if k != "temperature"},
    ),
    ("temperature 0.2", "anthropic", anthropic(temperature=0.2)),
    ("temperature true", "anthropic", anthropic(temperature=True)),
    ("temperature as text", "openai", chat(temperature="0")),
    ("negative temperature", "openai", chat(temperature=-1)),
    ("tools", "anthropic", anthropic(tools=[TOOL])),
    ("tool_choice", "anthropic", anthropic(tool_choice={"type": "auto"})),
    ("openai tools", "openai", chat(tools=[{"type": "function", "function": {"name": "f"}}])),
    ("functions", "openai", chat(functions=[{"name": "f"}])),
    ("responses tools", "openai", responses(tools=[{"type": "web_search"}])),
    ("a second turn", "anthropic", anthropic(messages=[USER, ASSISTANT, USER])),
    ("a second turn (openai)", "openai", chat(messages=[USER, ASSISTANT, USER])),
    ("ends with the assistant", "anthropic", anthropic(messages=[USER, ASSISTANT])),
    ("previous_response_id", "openai", responses(previous_response_id="resp_1")),
    ("an image", "anthropic", anthropic(messages=[{"role": "user", "content": [IMAGE]}])),
    (
        "an image_url",
        "openai",
        chat(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
    ),
    ("audio out", "openai", chat(modalities=["text", "audio"])),
    ("a named user", "openai", chat(messages=[{"role": "user", "content": Q, "name": "bob"}])),
    ("empty text", "anthropic", anthropic(messages=[{"role": "user", "content": "  "}])),
    ("no messages", "anthropic", anthropic(messages=[])),
    ("messages not a list", "anthropic", anthropic(messages="hi")),
    ("a system prompt of images", "anthropic", anthropic(system=[IMAGE])),
    ("instructions not text", "openai", responses(instructions=["x"])),
    ("too long", "anthropic", anthropic(messages=[{"role": "user", "content": "x" * 8001}])),
    ("unknown dialect", "admin", anthropic()),
]


@pytest.mark.parametrize(
    ("dialect", "body"), [c[1:] for c in NOT_ELIGIBLE], ids=[c[0] for c in NOT_ELIGIBLE]
)
def test_not_eligible(dialect: str, body: dict[str, Any]) -> None:
    assert eligible(body, dialect) is None


def test_temperature_up_to_what_is_configured() -> None:
    assert eligible(anthropic(temperature=0.2), "anthropic", max_temperature=0.3) is not None
    assert eligible(anthropic(temperature=0.4), "anthropic", max_temperature=0.3) is None
    unset = {k: v for k, v in responses().items() if k != "temperature"}
    assert eligible(unset, "openai", max_temperature=0.9) is None  # the default is 1
    assert eligible(unset, "openai", max_temperature=1) is not None


def context(dialect: str, body: dict[str, Any]) -> str:
    question = eligible(body, dialect)
    assert isinstance(question, Question)
    return question.context


def test_the_context_holds_what_shapes_the_answer() -> None:
    base = context("anthropic", anthropic())
    for changed in (
        anthropic(system="Answer in French."),
        anthropic(max_tokens=10),
        anthropic(stop_sequences=["\n"]),
        anthropic(top_k=5),
    ):
        assert context("anthropic", changed) != base
    assert context("openai", chat(response_format={"type": "json_object"})) != context(
        "openai", chat()
    )
    assert context("openai", chat(n=2)) != context("openai", chat())
    # a system message or instructions with the same text are the same context in one dialect
    with_system = chat(messages=[{"role": "system", "content": "Be terse."}, USER])
    assert context("openai", with_system) != context("openai", chat())


def test_the_context_ignores_what_does_not() -> None:
    base = context("anthropic", anthropic())
    for same in (
        anthropic(stream=True),
        anthropic(metadata={"user_id": "u1"}),
        anthropic(messages=[{"role": "user", "content": "Sort a Python list?"}]),
    ):
        assert context("anthropic", same) == base
    assert context(
        "openai", chat(stream=True, stream_options={"include_usage": True}, user="u")
    ) == context("openai", chat())


def test_bad_values_are_ineligible_not_errors() -> None:
    assert eligible(anthropic(max_tokens=2**70), "anthropic") is None  # orjson refuses it
    assert eligible({"temperature": 0, "messages": [None]}, "anthropic") is None
    assert eligible({"temperature": 0, "input": 5}, "openai") is None
