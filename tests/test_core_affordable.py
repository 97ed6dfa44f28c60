"""Whether a scope's limits can pay one Claude Code request (capgate.core.affordable)."""

from __future__ import annotations

import pytest

from capgate.core.affordable import (
    CLAUDE_CODE_BODY_BYTES,
    claude_code_input_bound,
    shortfalls,
    smallest_reservation,
)
from capgate.core.estimate import REQUEST_OVERHEAD, input_bound
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, format_usd
from capgate.core.money import Price
from capgate.core.windows import WindowKind
from capgate.pricing import PricingTable

USD = 10**9
TABLE = PricingTable.load()
PRICES = {m: p for m in TABLE.models() if (p := TABLE.lookup(m)) is not None}
HAIKU = TABLE.lookup("claude-haiku-4-5")
OPUS = TABLE.lookup("claude-opus-4-5")


def key(*limits: Limit, models: tuple[str, ...] = ()) -> Scope:
    return Scope(ScopeKind.KEY, "id", "k", limits=limits, models=models)


def cost(dollars: str, model: str | None = None) -> Limit:
    return Limit.from_json({"metric": "cost_usd", "window": "day", "max": dollars, "model": model})


def test_the_input_bound_is_the_gateways_own() -> None:
    bound = claude_code_input_bound()
    assert bound == input_bound({"messages": [{}]}, CLAUDE_CODE_BODY_BYTES)
    assert bound > CLAUDE_CODE_BODY_BYTES + REQUEST_OVERHEAD - 1


def test_smallest_reservation_is_the_clamped_worst_case() -> None:
    assert HAIKU is not None
    bound = claude_code_input_bound()
    assert smallest_reservation(Metric.COST_USD, HAIKU, 1024) == HAIKU.worst_cost_nano(bound, 1024)
    assert smallest_reservation(Metric.COST_USD, None, 1024) is None
    assert smallest_reservation(Metric.TOKENS, None, 1024) == bound + 1024
    assert smallest_reservation(Metric.INPUT_TOKENS, None, 1024) == bound
    assert smallest_reservation(Metric.OUTPUT_TOKENS, None, 1024) == 1024
    assert smallest_reservation(Metric.REQUESTS, None, 1024) is None


def test_five_cents_a_day_cannot_pay_one_claude_code_request() -> None:
    assert HAIKU is not None
    need = HAIKU.worst_cost_nano(claude_code_input_bound(), 1024)
    [short] = shortfalls(key(cost("0.05"), models=("claude-haiku-4-5*",)), PRICES, 1024)
    assert short.need == need and short.model is not None
    assert short.model.startswith("claude-haiku-4-5")
    text = short.message(1024)
    assert "$0.05" in text and format_usd(need) in text and "1,024 output tokens" in text
    # exactly the worst case pays; a nano-dollar less does not
    assert shortfalls(key(Limit(Metric.COST_USD, WindowKind.DAY, need)), {"h": HAIKU}, 1024) == []
    less = Limit(Metric.COST_USD, WindowKind.DAY, need - 1)
    assert [s.need for s in shortfalls(key(less), {"h": HAIKU}, 1024)] == [need]


def test_the_cheapest_allowed_model_counts() -> None:
    assert HAIKU is not None and OPUS is not None
    prices = {"claude-haiku-4-5": HAIKU, "claude-opus-4-5": OPUS}
    haiku_need = HAIKU.worst_cost_nano(claude_code_input_bound(), 1024)
    opus_need = OPUS.worst_cost_nano(claude_code_input_bound(), 1024)
    assert haiku_need < opus_need
    limit = Limit(Metric.COST_USD, WindowKind.DAY, haiku_need)
    assert shortfalls(key(limit), prices, 1024) == []  # haiku fits
    only_opus = key(limit, models=("claude-opus*",))
    assert [s.model for s in shortfalls(only_opus, prices, 1024)] == ["claude-opus-4-5"]
    per_model = Limit(Metric.COST_USD, WindowKind.DAY, haiku_need, "claude-opus*")
    assert [s.need for s in shortfalls(key(per_model), prices, 1024)] == [opus_need]


def test_a_bigger_minimum_output_needs_more() -> None:
    assert HAIKU is not None
    limit = Limit(
        Metric.COST_USD, WindowKind.DAY, HAIKU.worst_cost_nano(claude_code_input_bound(), 1024)
    )
    assert shortfalls(key(limit), {"h": HAIKU}, 1024) == []
    assert len(shortfalls(key(limit), {"h": HAIKU}, 1025)) == 1


@pytest.mark.parametrize(
    ("spec", "short"),
    [
        ({"metric": "tokens", "window": "day", "max": 50_000}, True),
        ({"metric": "tokens", "window": "day", "max": 10_000_000}, False),
        ({"metric": "input_tokens", "window": "hour", "max": 60_000}, True),
        ({"metric": "output_tokens", "window": "day", "max": 1000}, True),
        ({"metric": "output_tokens", "window": "day", "max": 1024}, False),
        ({"metric": "requests", "window": "day", "max": 1}, False),
        ({"metric": "cost_usd", "window": "month", "max": "100"}, False),
    ],
)
def test_counting_limits(spec: dict[str, object], short: bool) -> None:
    assert bool(shortfalls(key(Limit.from_json(spec)), PRICES, 1024)) is short


def test_no_priced_model_no_warning() -> None:
    assert shortfalls(key(cost("0.000001")), {}, 1024) == []
    free = Price(0, 0, 0, 0, 0)
    assert shortfalls(key(cost("0")), {"free": free}, 1024) == []
    assert shortfalls(key(cost("0.01"), models=("gpt-*",)), {"claude-x": free}, 1024) == []
