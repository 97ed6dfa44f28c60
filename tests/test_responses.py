"""OpenAI Responses API (`POST /v1/responses`, what Codex speaks): passed through to
OpenAI-type providers with exact usage accounting, streaming and not."""

from __future__ import annotations

from decimal import Decimal

import openai

from conftest import Capgate
from test_gateway_sdk import GPT5_MINI, expected_cost, only_entry, openai_client


def test_responses_create(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    with openai_client(capgate, key) as client:
        response = client.responses.create(
            model="gpt-5-mini", input="hello mock:words=9", max_output_tokens=100
        )
    assert response.output_text and response.usage is not None
    assert response.usage.output_tokens == 9
    entry = only_entry(capgate, key_name)
    assert entry["endpoint"] == "responses" and entry["outcome"] == "ok"
    assert entry["input_tokens"] == response.usage.input_tokens and entry["output_tokens"] == 9
    assert Decimal(entry["cost_usd"]) == expected_cost(GPT5_MINI, response.usage.input_tokens, 9)


def test_responses_stream_ends_with_completed(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    with openai_client(capgate, key) as client:
        events = list(
            client.responses.create(
                model="gpt-5-mini",
                input=[
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "stream mock:words=30"}],
                    }
                ],
                stream=True,
            )
        )
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage
    assert usage is not None and usage.output_tokens == 30
    entry = only_entry(capgate, key_name)
    assert entry["stream"] is True and entry["output_tokens"] == 30
    assert Decimal(entry["cost_usd"]) == expected_cost(GPT5_MINI, usage.input_tokens, 30)


def test_responses_budget_refusal_in_openai_dialect(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    with openai_client(capgate, key) as client:
        try:
            client.responses.create(model="gpt-5-mini", input="hi")
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            assert "Daily request limit" in exc.message
        else:
            raise AssertionError("the budget should refuse")


def test_responses_bad_input_is_a_clear_400(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    with openai_client(capgate, key) as client:
        try:
            client.responses.create(model="gpt-5-mini", input=5)  # type: ignore[arg-type]
        except openai.BadRequestError as exc:
            assert "input" in exc.message
        else:
            raise AssertionError("a bad input should be refused")
    assert capgate.ledger(key=key_name) == []
