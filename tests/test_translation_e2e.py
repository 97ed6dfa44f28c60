"""Translation end to end: an OpenAI SDK client on a Claude model (routed to an Anthropic
provider) and an Anthropic SDK client on an OpenAI model, streaming or not, with text,
tools and images — and the ledger exact in the provider's own terms."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from conftest import Capgate

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": WEATHER_TOOL["name"],
        "description": WEATHER_TOOL["description"],
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


_open: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def _oa(capgate: Capgate, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=0)
    _open.append(client)
    return client


def _an(capgate: Capgate, key: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=0)
    _open.append(client)
    return client


def _only_entry(capgate: Capgate, key_name: str) -> dict:
    (entry,) = capgate.ledger(key=key_name)
    return entry


# -- OpenAI client, Claude model (Chat Completions -> Anthropic Messages) -------------------


def test_openai_client_on_a_claude_model(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    reply = _oa(capgate, key).chat.completions.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say something mock:words=9"},
        ],
    )
    assert reply.object == "chat.completion"
    assert len(reply.choices[0].message.content.split()) == 9
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 9
    entry = _only_entry(capgate, key_name)
    assert (entry["provider"], entry["endpoint"]) == ("anthropic", "chat")
    assert entry["output_tokens"] == 9 and entry["input_tokens"] == reply.usage.prompt_tokens
    expected = (Decimal(1) * entry["input_tokens"] + Decimal(5) * 9) / 1_000_000
    assert Decimal(entry["cost_usd"]) == expected


def test_openai_client_streams_a_claude_model(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    stream = _oa(capgate, key).chat.completions.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "mock:words=12"}],
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(text.split()) == 12 and finish == "stop"
    assert usage is not None and usage.completion_tokens == 12
    entry = _only_entry(capgate, key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 12


def test_openai_stream_without_usage_asked_gets_no_usage_chunk(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name)
    chunks = list(
        _oa(capgate, key).chat.completions.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            stream=True,
            messages=[{"role": "user", "content": "mock:words=3"}],
        )
    )
    assert all(c.usage is None for c in chunks)
    assert _only_entry(capgate, key_name)["output_tokens"] == 3  # capgate still knows


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_tool_call_on_a_claude_model(
    capgate: Capgate, key_name: str, stream: bool
) -> None:
    key = capgate.create_key(key_name)
    client = _oa(capgate, key)
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris? mock:tool"}]
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            tools=[OPENAI_TOOL],
            messages=messages,
            stream=True,
        ):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"id": None, "name": None, "args": ""})
                    slot["id"] = call.id or slot["id"]
                    if call.function is not None:
                        slot["name"] = call.function.name or slot["name"]
                        slot["args"] += call.function.arguments or ""
        (call,) = calls.values()
        call_id, name, args = call["id"], call["name"], call["args"]
    else:
        reply = client.chat.completions.create(
            model="claude-haiku-4-5", max_tokens=100, tools=[OPENAI_TOOL], messages=messages
        )
        finish = reply.choices[0].finish_reason
        (tool_call,) = reply.choices[0].message.tool_calls
        call_id, name, args = tool_call.id, tool_call.function.name, tool_call.function.arguments
    assert finish == "tool_calls" and name == "get_weather"
    assert json.loads(args) == {"city": "x"}
    # Hand the result back: the tool message becomes an Anthropic tool_result.
    follow = client.chat.completions.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=[OPENAI_TOOL],
        messages=[
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"},
        ],
    )  # fmt: skip
    assert follow.choices[0].finish_reason == "stop"
    assert follow.choices[0].message.content


def test_openai_client_sends_an_image_to_a_claude_model(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    reply = _oa(capgate, key).chat.completions.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ]}
        ],
    )  # fmt: skip
    assert "(2 images)" in reply.choices[0].message.content


def test_openai_client_sees_errors_in_its_own_shape(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 2}])
    with pytest.raises(openai.BadRequestError) as caught:
        _oa(capgate, key).chat.completions.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            n=2,
        )
    assert "n" in caught.value.message
    # Refused before anything was held: bad input changes nothing (#18 part 5).
    assert capgate.ledger(key=key_name) == []
    assert {u["metric"]: u["used"] for u in capgate.key_usage(key_name)} == {"requests": 0}
    # An upstream error, translated into the OpenAI shape.
    response = httpx.post(
        capgate.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "claude-haiku-4-5", "max_tokens": 10,
              "messages": [{"role": "user", "content": "mock:status=404"}]},
    )  # fmt: skip
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and response.json()["error"]["message"]


# -- Anthropic client, OpenAI model (Messages -> Chat Completions) ----------------------------


def test_anthropic_client_on_an_openai_model(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    message = _an(capgate, key).messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "mock:words=7"}],
    )
    assert message.type == "message" and message.stop_reason == "end_turn"
    assert len(message.content[0].text.split()) == 7
    assert message.usage.output_tokens == 7
    entry = _only_entry(capgate, key_name)
    assert (entry["provider"], entry["endpoint"]) == ("openai", "messages")
    assert entry["output_tokens"] == 7
    # gpt-4o-mini: $0.15 in, $0.60 out per million.
    expected = (Decimal("0.15") * entry["input_tokens"] + Decimal("0.6") * 7) / 1_000_000
    assert Decimal(entry["cost_usd"]) == expected
    # OpenAI needs max_completion_tokens for its own type of provider.
    assert message.usage.input_tokens == entry["input_tokens"]


def test_anthropic_client_streams_an_openai_model_with_a_tool(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name)
    with _an(capgate, key).messages.stream(
        model="gpt-4o-mini",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather? mock:tool"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.input == {"city": "x"}
    assert final.usage.output_tokens > 0
    entry = _only_entry(capgate, key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == final.usage.output_tokens


def test_anthropic_client_streams_text_and_an_image_to_an_openai_model(
    capgate: Capgate, key_name: str
) -> None:
    key = capgate.create_key(key_name)
    with _an(capgate, key).messages.stream(
        model="gpt-4o-mini",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                    },
                    {"type": "text", "text": "Describe this"},
                ],
            }
        ],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "(1 image" in text
    assert final.usage.output_tokens == _only_entry(capgate, key_name)["output_tokens"]
