"""Hook mode's pure parts (capgate.hook): lease ids, the model decided, the refusal
message and what is left on other models, reports and OTLP records validated and
priced, the status rows and prices of the offline cache."""

from __future__ import annotations

from typing import Any

import pytest

from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Metric
from capgate.core.money import Price, Usage
from capgate.core.windows import NEVER, WindowKind, format_reset
from capgate.errors import InvalidRequest
from capgate.hook import gate as g
from capgate.hook.otlp import api_requests
from capgate.hook.report import cost_nano, parse_report
from capgate.hook.view import limit_row, per_million
from capgate.pricing import PricingTable
from capgate.store.records import LimitUsage

TABLE = PricingTable.load()
DAY_END = 1_800_000_000


def test_a_lease_id_is_stable_per_machine_and_prompt() -> None:
    one = g.lease_id("k1", "claude", "s", "p")
    assert one == g.lease_id("k1", "claude", "s", "p") and one.startswith("hp-") and len(one) == 35
    assert len({one, g.lease_id("k2", "claude", "s", "p"), g.lease_id("k1", "codex", "s", "p"),
                g.lease_id("k1", "claude", "s", "q")}) == 4  # fmt: skip
    assert g.call_request_id("req_1") == "hc-req_1"


@pytest.mark.parametrize(
    ("agent", "guess", "expected"),
    [
        ("claude", "claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("claude", "claude-sonnet-4-6-20260217", "claude-sonnet-4-6"),  # dated: its price
        ("claude", "sonnet", None),  # resolved below: the dearest sonnet
        ("claude", "no-such-model", None),
        ("claude", None, None),
        ("codex", "sonnet", None),
    ],
)
def test_the_model_a_hook_names_is_resolved(
    agent: str, guess: str | None, expected: str | None
) -> None:
    got = g.resolve(agent, guess, TABLE.models(), TABLE.lookup)
    if guess == "sonnet" and agent == "claude":
        sonnets = g.dearest(
            [m for m in g.family_models("claude", TABLE.models()) if "sonnet" in m], TABLE.lookup
        )
        assert got == sonnets[0]
    elif expected == "claude-sonnet-4-6" and guess != expected:
        assert got == guess  # a dated name has its undated price: kept as named
    else:
        assert got == expected


def test_family_models_are_plain_names_of_the_agent() -> None:
    claude = g.family_models("claude", TABLE.models())
    assert "claude-sonnet-4-6" in claude and all(m.startswith("claude-") for m in claude)
    assert not any(m.endswith("-latest") or m[-8:].isdigit() for m in claude)
    codex = g.family_models("codex", TABLE.models())
    assert codex and not any(m.startswith("claude-") for m in codex)
    ranked = g.dearest(["claude-haiku-4-5", "claude-sonnet-4-6", "nope"], TABLE.lookup)
    assert ranked == ["claude-sonnet-4-6", "claude-haiku-4-5"]


def test_a_prompt_holds_its_estimate_at_the_model_rates() -> None:
    worst = g.prompt_worst(TABLE.lookup("claude-sonnet-4-6"), 3, 20_000, 2_000)
    assert worst == Amounts(1, 20_000, 2_000, 90_000_000, 3)
    assert g.prompt_worst(None, 1, 10, 10) == Amounts(1, 10, 10, 0, 1)


def test_an_unpriced_model_costs_the_dearest_rate_of_its_family_per_token_kind() -> None:
    def rates(i: int, o: int, r: int, w: int, h: int) -> Price:
        return Price(input=i, output=o, cache_read=r, cache_write=w, cache_write_1h=h)

    table = {
        "claude-a": rates(3, 15, 1, 4, 6),
        "claude-b": rates(5, 10, 2, 3, 9),
        "gpt-x": rates(2, 8, 1, 2, 2),
        "o9": rates(90, 90, 90, 90, 90),  # a Codex model, but not gpt-*
    }
    assert g.family_ceiling("claude", table, table.get) == rates(5, 15, 2, 4, 9)
    assert g.family_ceiling("codex", table, table.get) == table["gpt-x"]
    assert g.family_ceiling("codex", ["claude-a"], table.get) is None
    opus = TABLE.lookup("claude-opus-4-0")
    assert opus is not None and g.family_ceiling("claude", TABLE.models(), TABLE.lookup) == (
        Price(opus.input, opus.output, opus.cache_write, opus.cache_write_1h, opus.cache_read)
    )


def standing(scope: str, limit: Limit, used: int, held: int) -> g.Standing:
    return g.Standing(scope, LimitUsage(limit, used, held, DAY_END))


def test_the_block_message_names_the_limit_and_what_is_left_elsewhere() -> None:
    cost = Limit(Metric.COST_USD, WindowKind.DAY, 5_000_000_000)
    opus_cap = Limit(Metric.REQUESTS, WindowKind.DAY, 2, "claude-opus-*")
    rows = [
        standing("user:ann", cost, 4_800_000_000, 100_000_000),
        standing("user:ann", opus_cap, 2, 0),
    ]
    refusal = Refusal("limit_exceeded", "", "user", "ann", cost, 4_800_000_000, DAY_END)
    reset = format_reset(DAY_END, "UTC")
    worst = {
        "claude-opus-4-6": Amounts(1, cost_nano=450_000_000),
        "claude-haiku-4-5": Amounts(1, cost_nano=5_000_000),
    }
    alts = g.alternatives(
        "claude-opus-4-6", ["claude-opus-4-6", "claude-opus-4-5", "claude-haiku-4-5"], rows,
        lambda m: worst.get(m, Amounts(1, cost_nano=450_000_000)), lambda m: True,
    )  # fmt: skip
    assert alts == ["Switch to claude-haiku-4-5: $0.10 of $5.00 left today"]
    message = g.block_message(refusal, rows, worst["claude-opus-4-6"], "UTC", alts)
    assert message == (
        'capgate: The daily dollar limit of user "ann" is reached: $4.80 of $5.00 used, $0.10 '
        "held by prompts in flight, and a prompt holds up to $0.45 until its usage is counted; "
        f"resets {reset}. Switch to claude-haiku-4-5: $0.10 of $5.00 left today."
    )
    capped = Refusal("limit_exceeded", "", "user", "ann", opus_cap, 2, DAY_END)
    assert g.block_message(capped, rows, Amounts(1), "UTC", []) == (
        'capgate: The daily prompt limit for claude-opus-* of user "ann" is reached: 2 of 2 '
        f"prompts used; resets {reset}."
    )
    total = Refusal(
        "limit_exceeded", "", "key", "m", Limit(Metric.TOKENS, WindowKind.TOTAL, 9), 9, NEVER
    )
    assert g.block_message(total, [], Amounts(1), "UTC", []).endswith(
        "9 of 9 tokens used; it does not reset (a total limit). No other model fits either."
    )
    paused = Refusal("paused", 'The user "ann" is paused.', "user", "ann")
    assert (
        g.block_message(paused, [], Amounts(1), "UTC", None) == 'capgate: The user "ann" is paused.'
    )


def call(**fields: Any) -> dict[str, Any]:
    return {"id": "r1", "model": "claude-sonnet-4-6", "prompt_id": "p", **fields}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"agent": "claude", "session_id": "s", "calls": [call(input=-1)]}, "calls[0].input"),
        ({"agent": "claude", "session_id": "s", "calls": [call(output=2**40)]}, "calls[0].output"),
        ({"agent": "claude", "session_id": "s", "calls": [call(input=1.5)]}, "calls[0].input"),
        (
            {
                "agent": "claude",
                "session_id": "s",
                "calls": [call(cache_write=1, cache_write_1h=2)],
            },
            "cache_write_1h",
        ),
        ({"agent": "claude", "session_id": "s", "calls": [{"model": "m"}]}, "needs an id"),
        ({"agent": "claude", "session_id": "s", "calls": [call()] * 1001}, "at most 1000"),
        ({"agent": "gemini", "session_id": "s"}, "agent"),
        ({"agent": "claude", "session_id": ""}, "session_id"),
        ({"agent": "claude", "session_id": "s", "ended_prompts": [1]}, "ended_prompts[0]"),
        ([], "expected a JSON object"),
    ],
)
def test_a_bad_report_names_its_first_bad_field(body: Any, error: str) -> None:
    with pytest.raises(InvalidRequest, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_report(body)


def test_a_report_is_priced_with_both_cache_write_rates() -> None:
    report = parse_report({
        "agent": "codex", "session_id": "s", "session_end": True, "ended_prompts": ["a"],
        "calls": [call(message_id="m", input=1000, output=500, cache_read=2000, cache_write=3000, cache_write_1h=1000)],
    })  # fmt: skip
    (c,) = report.calls
    assert c.usage == Usage(1000, 500, 2000, 2000, 1000) and report.session_end
    assert cost_nano(c, TABLE.lookup) == 24_600_000
    assert (
        cost_nano(
            parse_report({"agent": "claude", "session_id": "s", "calls": [call(model="zz")]}).calls[
                0
            ],
            TABLE.lookup,
        )
        is None
    )
    by_message = parse_report(
        {"agent": "claude", "session_id": "s", "calls": [{"message_id": "m2", "model": "x"}]}
    )
    assert by_message.calls[0].id == "m2"


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def test_otlp_api_requests_become_calls() -> None:
    common = [attr("model", "claude-sonnet-4-6"), attr("session.id", "s"), attr("prompt.id", "p")]
    records = [
        {"attributes": [attr("event.name", "api_request"), attr("request_id", "r1"), *common,
                        attr("input_tokens", 630), attr("output_tokens", 9),
                        attr("cache_creation_tokens", 100), attr("cache_creation_1h_tokens", 40)]},
        {"body": {"stringValue": "claude_code.api_request"},
         "attributes": [attr("request_id", "r2"), *common]},
        {"attributes": [attr("event.name", "tool_result"), attr("request_id", "r3")]},
    ]  # fmt: skip
    body = {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}
    got = api_requests(body)
    assert [(s, c.id, c.prompt_id) for s, c in got] == [("s", "r1", "p"), ("s", "r2", "p")]
    assert got[0][1].usage == Usage(630, 9, 0, 60, 40)
    for bad in ({"resourceLogs": "x"}, [], {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [attr("event.name", "api_request"), attr("model", "m")]}]}]}]}):  # fmt: skip
        with pytest.raises(InvalidRequest):
            api_requests(bad)


def test_status_rows_and_cache_prices_are_exact() -> None:
    price = Price.from_per_million(
        {
            "input": "3",
            "output": "15",
            "cache_write": "3.75",
            "cache_write_1h": "6",
            "cache_read": "0.30",
        }
    )
    assert [per_million(p) for p in (price.input, price.cache_write, price.cache_read)] == [
        "3",
        "3.75",
        "0.3",
    ]
    assert per_million(1) == "0.000001"
    row = limit_row(
        standing("user:ann", Limit(Metric.COST_USD, WindowKind.DAY, 1_500_000_000), 10, 20)
    )
    assert (row["left"], row["max_text"], row["used_text"], row["left_text"]) == (
        1_499_999_970,
        "$1.50",
        "$0.00000001",
        "$1.49999997",
    )
    total_limit = Limit(Metric.REQUESTS, WindowKind.TOTAL, 20)
    total = limit_row(g.Standing("key:m", LimitUsage(total_limit, 14, 0, NEVER)))
    assert (total["resets_at"], total["left_text"]) == (None, "6")
