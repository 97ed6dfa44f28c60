"""Bedrock's Converse API (`type: bedrock`, `api: converse`) through a real capgate server,
against the mock Bedrock runtime (capgate.mock.bedrock_converse), which checks every
request's SigV4 signature with botocore and refuses bodies Converse would refuse: the
Anthropic SDK and the OpenAI SDK, whole and streamed, tool use, cache usage charged
exactly, errors in each dialect, and failover from Anthropic to Converse."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from cloudmocks import ConverseSetup as Setup
from cloudmocks import converse_gateway, cost_at

AWS = ("AKIAMOCKCONVERSE", "converse/secret+KEY0123456789", "converse-session-token")
REGION = "eu-west-1"
NOVA = "eu.amazon.nova-pro-v1:0"
SONNET = "anthropic.claude-sonnet-4-5-20250929-v1:0"
# USD per million tokens: input, output, cache write, cache read (data/pricing.yaml).
NOVA_PRICE = ("0.80", "3.20", "0.80", "0.20")  # Nova has no cache-write price: input's
SONNET_PRICE = ("3", "15", "3.75", "0.30")
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    models: list[dict[str, Any]] = [
        {"match": "nova-pro", "retries": 0, "targets": [{"provider": "converse", "model": NOVA}]},
        {"match": "converse-sonnet", "retries": 0,
         "targets": [{"provider": "converse", "model": SONNET}]},
        {"match": "claude-sonnet-4-5", "retries": 0, "targets": [{"provider": "anthropic"}],
         "fallbacks": [{"provider": "converse", "model": SONNET}]},
    ]  # fmt: skip
    with converse_gateway(tmp_path_factory.mktemp("converse"), AWS, REGION, models) as setup:
        yield setup


def _anthropic(setup: Setup, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=setup.gw.url, api_key=key, max_retries=0)


def _openai(setup: Setup, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.gw.url + "/v1", api_key=key, max_retries=0)


def test_an_anthropic_client_gets_a_whole_converse_answer(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    with _anthropic(setup, key) as client:
        message = client.messages.create(
            model="nova-pro", max_tokens=100, system="Be brief.", stop_sequences=["END"],
            messages=[{"role": "user", "content": "hello mock:words=6"}],
            extra_body={"temperature": 0.2, "top_p": 0.9},  # this SDK no longer takes them
        )  # fmt: skip
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 6
    assert message.stop_reason == "end_turn" and message.model == NOVA
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0
    sent = setup.bedrock.last_request()
    # The model id in the path (`:` as %3A; the mock checked the signature with botocore),
    # the body in Converse's shape, nothing of Anthropic's left.
    assert sent.path == "/model/eu.amazon.nova-pro-v1:0/converse"  # as the mock decoded it
    assert sent.headers["x-amz-security-token"] == AWS[2]
    assert sent.body == {
        "messages": [{"role": "user", "content": [{"text": "hello mock:words=6"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {
            "maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"],
        },
    }  # fmt: skip
    (entry,) = setup.gw.ledger(key=key_name)
    assert (entry["provider"], entry["upstream_model"], entry["outcome"]) == (
        "converse", NOVA, "ok",
    )  # fmt: skip
    assert entry["input_tokens"] == message.usage.input_tokens and entry["output_tokens"] == 6
    assert Decimal(entry["cost_usd"]) == cost_at(entry, NOVA_PRICE) > 0


def test_an_anthropic_client_gets_a_converse_stream(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    with (
        _anthropic(setup, key) as client,
        client.messages.stream(
            model="nova-pro", max_tokens=100,
            messages=[{"role": "user", "content": "stream it mock:words=9"}],
        ) as stream,
    ):  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 9 and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 9 and final.usage.input_tokens > 0
    assert setup.bedrock.last_request().path.endswith("/converse-stream")
    (entry,) = setup.gw.ledger(key=key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 9
    assert entry["input_tokens"] == final.usage.input_tokens
    assert Decimal(entry["cost_usd"]) == cost_at(entry, NOVA_PRICE) > 0


def test_an_openai_client_gets_converse_answers_whole_and_streamed(
    setup: Setup, key_name: str
) -> None:
    key = setup.gw.create_key(key_name)
    with _openai(setup, key) as client:
        completion = client.chat.completions.create(
            model="nova-pro", max_tokens=50,
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hi mock:words=4"}],
        )  # fmt: skip
        chunks = list(
            client.chat.completions.create(
                model="nova-pro", max_tokens=50, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi mock:words=5"}],
            )
        )  # fmt: skip
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert [r.path.rsplit("/", 1)[1] for r in setup.bedrock.requests()[-2:]] == [
        "converse", "converse-stream",
    ]  # fmt: skip
    entries = setup.gw.ledger(key=key_name)
    assert sorted(e["output_tokens"] for e in entries) == [4, 5]
    assert all(Decimal(e["cost_usd"]) == cost_at(e, NOVA_PRICE) > 0 for e in entries)


def test_a_tool_use_round_trip_from_the_anthropic_sdk(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    question = {"role": "user", "content": "weather in Paris? mock:tool"}
    with _anthropic(setup, key) as client:
        first = client.messages.create(
            model="nova-pro", max_tokens=200, tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "any"}, messages=[question],  # type: ignore[list-item]
        )  # fmt: skip
        use = next(b for b in first.content if b.type == "tool_use")
        assert first.stop_reason == "tool_use" and use.name == "get_weather"
        assert use.input == {"city": "x"}
        sent = setup.bedrock.last_request().body
        assert sent["toolConfig"] == {
            "tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city.",
                                    "inputSchema": {"json": TOOLS[0]["input_schema"]}}}],
            "toolChoice": {"any": {}},
        }  # fmt: skip
        second = client.messages.create(
            model="nova-pro", max_tokens=200, tools=TOOLS,  # type: ignore[arg-type]
            messages=[
                question,  # type: ignore[list-item]
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
            ],
        )  # fmt: skip
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    history = setup.bedrock.last_request().body["messages"]
    assert {"toolUse": {"toolUseId": use.id, "name": "get_weather", "input": {"city": "x"}}} in (
        history[1]["content"]
    )
    assert history[2]["content"] == [
        {"toolResult": {"toolUseId": use.id, "content": [{"text": "sunny, 21 C"}]}}
    ]
    assert [e["outcome"] for e in setup.gw.ledger(key=key_name)] == ["ok", "ok"]


def test_a_streamed_tool_call_reaches_an_openai_client(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    tool = {"type": "function", "function": {"name": "get_weather",
            "parameters": TOOLS[0]["input_schema"]}}  # fmt: skip
    with _openai(setup, key) as client:
        chunks = list(
            client.chat.completions.create(
                model="nova-pro", max_tokens=200, stream=True, tools=[tool],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather? mock:tool"}],
            )
        )  # fmt: skip
    calls = [c for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or []]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join((c.function.arguments or "") for c in calls if c.function)
    assert orjson.loads(arguments) == {"city": "x"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    sent = setup.bedrock.last_request()
    assert sent.path.endswith("/converse-stream") and "toolConfig" in sent.body


@pytest.mark.parametrize("stream", [False, True])
def test_cache_reads_and_writes_are_charged_exactly(
    setup: Setup, key_name: str, stream: bool
) -> None:
    usage = {"inputTokens": 40, "outputTokens": 7, "totalTokens": 6047,
             "cacheReadInputTokens": 5000, "cacheWriteInputTokens": 1000}  # fmt: skip
    prompt = "cached mock:words=7 mock:usage=" + orjson.dumps(usage).decode()
    key = setup.gw.create_key(key_name)
    response = httpx.post(
        setup.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "converse-sonnet", "max_tokens": 50, "stream": stream,
              "system": [{"type": "text", "text": "A long system prompt.",
                          "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": prompt}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    # Anthropic's cache_control became Converse's cachePoint after the block.
    assert setup.bedrock.last_request().body["system"] == [
        {"text": "A long system prompt."}, {"cachePoint": {"type": "default"}}
    ]  # fmt: skip
    if not stream:
        assert response.json()["usage"] == {
            "input_tokens": 40, "output_tokens": 7,
            "cache_read_input_tokens": 5000, "cache_creation_input_tokens": 1000,
        }  # fmt: skip
    (entry,) = setup.gw.ledger(key=key_name)
    assert (entry["input_tokens"], entry["output_tokens"]) == (40, 7)
    assert (entry["cache_read_tokens"], entry["cache_write_tokens"]) == (5000, 1000)
    # 40 x $3 + 7 x $15 + 1000 x $3.75 + 5000 x $0.30, per million: exactly $0.005475.
    assert Decimal(entry["cost_usd"]) == cost_at(entry, SONNET_PRICE) == Decimal("0.005475")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    "usage", [{}, {"inputTokens": "40", "outputTokens": 7}, {"inputTokens": 40}],
    ids=["empty", "text-count", "no-output"],
)  # fmt: skip
def test_an_answer_without_readable_usage_is_charged_the_reservation(
    setup: Setup, key_name: str, stream: bool, usage: dict[str, Any]
) -> None:
    """Found in review: an unreadable Converse usage read as zeros, charged $0. SPEC §2.2:
    an answer without usage is charged at the reservation."""
    prompt = "no usage mock:words=5 mock:usage=" + orjson.dumps(usage).decode()
    key = setup.gw.create_key(key_name)
    response = httpx.post(
        setup.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "converse-sonnet", "max_tokens": 300, "stream": stream,
              "messages": [{"role": "user", "content": prompt}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    (entry,) = setup.gw.ledger(key=key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 300, entry
    assert entry["error"] and "no usage" in entry["error"]
    assert Decimal(entry["cost_usd"]) > 300 * Decimal(SONNET_PRICE[1]) / 10**6


@pytest.mark.parametrize(
    ("status", "anthropic_error", "anthropic_type", "openai_error"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error", openai.RateLimitError),
        (400, anthropic.BadRequestError, "invalid_request_error", openai.BadRequestError),
        (403, anthropic.PermissionDeniedError, "permission_error", openai.PermissionDeniedError),
        (503, anthropic.InternalServerError, "overloaded_error", openai.InternalServerError),
    ],
)
def test_converse_errors_reach_each_client_in_its_dialect(
    setup: Setup,
    key_name: str,
    status: int,
    anthropic_error: type[anthropic.APIStatusError],
    anthropic_type: str,
    openai_error: type[openai.APIStatusError],
) -> None:
    key = setup.gw.create_key(key_name)
    prompt = f"hi mock:status={status}"
    with _anthropic(setup, key) as client, pytest.raises(anthropic_error) as caught:
        client.messages.create(
            model="nova-pro", max_tokens=50, messages=[{"role": "user", "content": prompt}]
        )
    assert caught.value.status_code == status
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == anthropic_type and f"mock:status={status}" in error["message"]
    with _openai(setup, key) as client, pytest.raises(openai_error) as raised:
        client.chat.completions.create(
            model="nova-pro", max_tokens=50, messages=[{"role": "user", "content": prompt}]
        )
    assert raised.value.status_code == status
    assert f"mock:status={status}" in raised.value.body["message"]  # type: ignore[index]
    assert setup.bedrock.last_request().path.endswith("/converse")
    entries = setup.gw.ledger(key=key_name)
    assert [e["status"] for e in entries] == [status, status]
    assert all(Decimal(e["cost_usd"]) == 0 for e in entries)


def test_a_request_converse_cannot_carry_is_refused_in_each_dialect(
    setup: Setup, key_name: str
) -> None:
    """An image by URL has no Converse form: a 400 naming the field, nothing sent."""
    key = setup.gw.create_key(key_name)
    before = len(setup.bedrock.requests())
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    response = httpx.post(
        setup.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "nova-pro", "max_tokens": 20,
              "messages": [{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]},
    )  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "messages.0.content.0.source" in error["message"] and "Converse" in error["message"]
    with _openai(setup, key) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="nova-pro", max_tokens=20,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
        )  # fmt: skip
    assert "Converse" in raised.value.body["message"]  # type: ignore[index]
    assert len(setup.bedrock.requests()) == before
    entries = setup.gw.ledger(key=key_name)
    assert [e["status"] for e in entries] == [400, 400]
    assert all(Decimal(e["cost_usd"]) == 0 for e in entries)


def test_an_image_goes_to_converse_as_bytes(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    data = base64.b64encode(b"\x89PNG\r\n\x1a\nmock").decode()
    with _anthropic(setup, key) as client:
        message = client.messages.create(
            model="nova-pro", max_tokens=50,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": data}},
                {"type": "text", "text": "what is it?"}]}],
        )  # fmt: skip
    assert "(1 image)" in message.content[0].text  # type: ignore[union-attr]
    content = setup.bedrock.last_request().body["messages"][0]["content"]
    assert content[0] == {"image": {"format": "png", "source": {"bytes": data}}}


def test_anthropic_429_falls_over_to_converse(setup: Setup, key_name: str) -> None:
    faults = setup.anthropic.url + "/mock/faults"
    httpx.post(faults, json={"status": 429, "count": -1}, timeout=10).raise_for_status()
    try:
        key = setup.gw.create_key(key_name)
        with _anthropic(setup, key) as client:
            message = client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100,
                messages=[{"role": "user", "content": "fall over mock:words=8"}],
            )  # fmt: skip
    finally:
        httpx.post(faults, json={}, timeout=10).raise_for_status()
    assert message.usage.output_tokens == 8
    assert setup.bedrock.last_request().path.endswith("-v1:0/converse")
    (entry,) = setup.gw.ledger(key=key_name)
    assert entry["provider"] == "converse" and entry["attempts"] == 2
    assert entry["upstream_model"] == SONNET
    assert Decimal(entry["cost_usd"]) == cost_at(entry, SONNET_PRICE) > 0


def test_an_exception_inside_a_converse_stream_ends_it(setup: Setup, key_name: str) -> None:
    key = setup.gw.create_key(key_name)
    with httpx.stream(
        "POST", setup.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "nova-pro", "max_tokens": 100, "stream": True,
              "messages": [{"role": "user", "content": "hi mock:words=20 mock:cut_stream"}]},
    ) as response:  # fmt: skip
        body = response.read()
    assert response.status_code == 200
    assert body.count(b"event: content_block_delta") > 0 and b"event: message_stop" not in body
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\n") and b"modelStreamErrorException" in last
    assert setup.bedrock.last_request().path.endswith("/converse-stream")
    (entry,) = setup.gw.ledger(key=key_name)
    assert entry["outcome"] == "error" and 0 < entry["output_tokens"] <= 100


def test_no_aws_secret_in_the_log(setup: Setup) -> None:
    text = setup.log.read_text()
    assert "converse" in text.lower()  # the log has lines about these requests
    assert AWS[1] not in text and AWS[2] not in text
