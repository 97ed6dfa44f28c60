"""The official SDKs against a real capgate in front of a real mock upstream: answers,
usage and the exact cost in the ledger, streaming and not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from conftest import Capgate

# USD per million tokens, from the bundled table (src/capgate/data/pricing.yaml)
SONNET = {"input": Decimal("3"), "output": Decimal("15"), "cache_read": Decimal("0.30")}
GPT5_MINI = {"input": Decimal("0.25"), "output": Decimal("2"), "cache_read": Decimal("0.025")}


def expected_cost(price: dict[str, Decimal], input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 10**6


def only_entry(capgate: Capgate, key: str) -> dict:
    entries = capgate.ledger(key=key)
    assert len(entries) == 1, entries
    return entries[0]


def anthropic_client(capgate: Capgate, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=0)


def openai_client(capgate: Capgate, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=0)


def test_anthropic_sdk_message(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 5}])
    with anthropic_client(capgate, key) as client:
        message = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=200,
            messages=[{"role": "user", "content": "hello there mock:words=12"}],
        )
    assert message.content[0].type == "text"
    assert len(message.content[0].text.split()) == 12
    assert message.usage.output_tokens == 12
    entry = only_entry(capgate, key_name)
    assert entry["outcome"] == "ok" and entry["status"] == 200
    assert entry["input_tokens"] == message.usage.input_tokens
    assert entry["output_tokens"] == 12
    assert entry["provider"] == "anthropic" and entry["model"] == "claude-sonnet-4-6"
    cost = expected_cost(SONNET, message.usage.input_tokens, 12)
    assert Decimal(entry["cost_usd"]) == cost
    used = {u["metric"]: u for u in capgate.key_usage(key_name)}["cost_usd"]
    assert Decimal(used["used"]) == cost and Decimal(used["reserved"]) == 0


def test_anthropic_sdk_stream(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    with (
        anthropic_client(capgate, key) as client,
        client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=300,
            messages=[{"role": "user", "content": "stream please mock:words=40"}],
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 40
    assert final.usage.output_tokens == 40
    entry = only_entry(capgate, key_name)
    assert entry["stream"] is True and entry["outcome"] == "ok"
    assert (entry["input_tokens"], entry["output_tokens"]) == (final.usage.input_tokens, 40)
    assert Decimal(entry["cost_usd"]) == expected_cost(SONNET, final.usage.input_tokens, 40)
    assert entry["ttft_ms"] is not None and entry["ttft_ms"] <= entry["latency_ms"]


def test_anthropic_sdk_bearer_auth_and_beta_query(capgate: Capgate, key_name: str) -> None:
    """Claude Code sends `?beta=true` and, with ANTHROPIC_AUTH_TOKEN, a bearer token."""
    key = capgate.create_key(key_name)
    with anthropic.Anthropic(base_url=capgate.url, auth_token=key, max_retries=0) as client:
        message = client.beta.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            betas=["context-management-2025-06-27"],
        )
    assert message.content[0].text
    assert only_entry(capgate, key_name)["upstream_model"] == "claude-haiku-4-5"


def test_openai_sdk_completion(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name)
    with openai_client(capgate, key) as client:
        completion = client.chat.completions.create(
            model="gpt-5-mini",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi mock:words=7"},
            ],
            max_completion_tokens=100,
        )
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    entry = only_entry(capgate, key_name)
    assert entry["input_tokens"] == completion.usage.prompt_tokens
    assert Decimal(entry["cost_usd"]) == expected_cost(GPT5_MINI, completion.usage.prompt_tokens, 7)


@pytest.mark.parametrize("client_wants_usage", [False, True])
def test_openai_sdk_stream(capgate: Capgate, key_name: str, client_wants_usage: bool) -> None:
    """capgate always asks upstream for usage; the extra chunk reaches only clients that asked."""
    key = capgate.create_key(key_name)
    extra = {"stream_options": {"include_usage": True}} if client_wants_usage else {}
    with openai_client(capgate, key) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-5-mini",
                messages=[{"role": "user", "content": "count mock:words=25"}],
                max_tokens=100,
                stream=True,
                **extra,
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 25
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == (1 if client_wants_usage else 0)
    assert all(c.choices for c in chunks if c.usage is None)
    entry = only_entry(capgate, key_name)
    assert entry["output_tokens"] == 25 and entry["outcome"] == "ok"
    if client_wants_usage:
        assert entry["input_tokens"] == usage_chunks[0].usage.prompt_tokens
    assert Decimal(entry["cost_usd"]) == expected_cost(GPT5_MINI, entry["input_tokens"], 25)


def test_models_listing_both_sdks(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, models=["claude-*"])
    with openai_client(capgate, key) as client:
        ids = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-6" in ids and not any(i.startswith("gpt-") for i in ids)
    with anthropic_client(capgate, key) as aclient:
        aids = [m.id for m in aclient.models.list()]
    assert aids == ids


def test_count_tokens_passes_through_free(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 1}])
    with anthropic_client(capgate, key) as client:
        for _ in range(3):  # free: not limited by the 1-request budget
            count = client.messages.count_tokens(
                model="claude-sonnet-4-6", messages=[{"role": "user", "content": "how many tokens"}]
            )
            assert count.input_tokens > 0
    assert capgate.ledger(key=key_name) == []


def within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a daemon thread; the exception it raised, failing if it runs longer
    (this SDK sleeps for all of a `retry-after`, an hour limit's included)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still retrying after {seconds} s"
    return raised[0] if raised else None


@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
def test_sdks_do_not_retry_what_cannot_succeed(capgate: Capgate, key_name: str, sdk: str) -> None:
    """With their default retries, the SDKs give up at once on a refusal that a retry
    cannot change (an hour limit, a paused key: `x-should-retry: false`): one request in
    the ledger, and the typed error with capgate's message."""
    now = time.gmtime()
    if now.tm_min == 59:  # an hour limit that frees within a minute is rightly retried
        time.sleep(61 - now.tm_sec)
    hourly = capgate.create_key(key_name, [{"metric": "requests", "window": "hour", "max": 0}])
    paused = capgate.create_key(
        key_name + "-p", [{"metric": "requests", "window": "day", "max": 9}]
    )
    assert capgate.admin("POST", f"/admin/keys/{key_name}-p/pause").status_code == 200
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    for key, error, text in [
        (hourly, (anthropic.RateLimitError, openai.RateLimitError), "Hourly request limit"),
        (paused, (anthropic.PermissionDeniedError, openai.PermissionDeniedError), "paused"),
    ]:

        def send(key: str = key) -> None:
            if sdk == "anthropic":
                with anthropic.Anthropic(base_url=capgate.url, api_key=key) as claude:
                    claude.messages.create(
                        model="claude-sonnet-4-6", max_tokens=50, messages=messages
                    )
            else:
                with openai.OpenAI(base_url=capgate.url + "/v1", api_key=key) as gpt:
                    gpt.chat.completions.create(model="gpt-5-mini", messages=messages)

        exc = within(20, send)
        assert isinstance(exc, error) and text in str(exc), exc
    assert len(capgate.ledger(key=key_name, outcome="refused")) == 1  # not retried
    assert len(capgate.ledger(key=key_name + "-p", outcome="refused")) == 1
