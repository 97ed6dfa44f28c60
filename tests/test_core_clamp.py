"""Clamping in the pure engine: a request whose full worst case does not fit is admitted
with a lower max_tokens that does, or refused when even the minimum does not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.engine import (
    Admission,
    Amounts,
    CounterState,
    OutputFlex,
    Refusal,
    counters_for,
    plan_reserve,
)
from capgate.core.limits import Limit, Metric, Scope, ScopeKind
from capgate.core.windows import WindowKind

NOW = 1_795_300_000.0


def scope(*limits: Limit) -> Scope:
    return Scope(ScopeKind.KEY, "k1", "alice", tuple(limits))


def flex(requested: int = 64_000, minimum: int = 1024, choices: int = 1) -> OutputFlex:
    # 10,000 input tokens at $6/M (dearest input) and output at $15/M, in pico-dollars.
    return OutputFlex(requested, minimum, choices, 10_000, 10_000 * 6_000_000, 15_000_000)


def plan(limits: list[Limit], used: dict[Metric, int], f: OutputFlex) -> Admission | Refusal:
    s = scope(*limits)
    apps = counters_for([s], ["claude-sonnet-4-6"], NOW)
    states = {
        (a.counter, a.window.start): CounterState(used.get(a.limit.metric, 0), 0) for a in apps
    }
    return plan_reserve(apps, states, f.amounts(f.requested), f)


def test_full_worst_case_fits_no_clamp() -> None:
    decision = plan([Limit(Metric.COST_USD, WindowKind.DAY, 10**10)], {}, flex())
    assert isinstance(decision, Admission) and decision.max_output is None


def test_cost_budget_clamps_to_exactly_what_it_pays() -> None:
    # $0.50 left: 10,000 input tokens cost $0.06 at worst, leaving $0.44 = 29,333 output tokens.
    decision = plan([Limit(Metric.COST_USD, WindowKind.DAY, 500_000_000)], {}, flex())
    assert isinstance(decision, Admission)
    assert decision.max_output == 29_333
    assert decision.charges[0].amount == flex().amounts(29_333).cost_nano <= 500_000_000
    assert flex().amounts(29_334).cost_nano > 500_000_000


def test_output_and_token_limits_clamp() -> None:
    d = plan(
        [Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 5_000)], {Metric.OUTPUT_TOKENS: 1_000}, flex()
    )
    assert isinstance(d, Admission) and d.max_output == 4_000
    d = plan([Limit(Metric.TOKENS, WindowKind.DAY, 20_000)], {}, flex())
    assert isinstance(d, Admission) and d.max_output == 10_000


def test_choices_share_the_room() -> None:
    d = plan([Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 9_000)], {}, flex(choices=3))
    assert isinstance(d, Admission) and d.max_output == 3_000
    assert d.charges[0].amount == 9_000


def test_below_the_minimum_is_refused_naming_the_binding_limit() -> None:
    limits = [
        Limit(Metric.COST_USD, WindowKind.DAY, 10**10),
        Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 1_500),
    ]
    d = plan(limits, {Metric.OUTPUT_TOKENS: 1_000}, flex())
    assert isinstance(d, Refusal)
    assert d.limit is not None and d.limit.metric is Metric.OUTPUT_TOKENS
    assert "Daily output token limit" in d.message


def test_limits_that_do_not_depend_on_output_still_refuse() -> None:
    d = plan([Limit(Metric.REQUESTS, WindowKind.DAY, 3)], {Metric.REQUESTS: 3}, flex())
    assert isinstance(d, Refusal) and d.limit is not None and d.limit.metric is Metric.REQUESTS


def test_the_tightest_of_several_limits_wins() -> None:
    limits = [
        Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 50_000),
        Limit(Metric.COST_USD, WindowKind.MONTH, 200_000_000),  # $0.20: 9,333 output tokens
        Limit(Metric.TOKENS, WindowKind.DAY, 40_000),  # 30,000 output tokens
    ]
    d = plan(limits, {}, flex())
    assert isinstance(d, Admission) and d.max_output == 9_333


@settings(max_examples=300, deadline=None)
@given(
    room=st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=4),
    requested=st.integers(1, 200_000),
    minimum=st.integers(1, 5_000),
    choices=st.integers(1, 4),
)
def test_clamped_worst_case_always_fits(
    room: list[int], requested: int, minimum: int, choices: int
) -> None:
    metrics = [Metric.COST_USD, Metric.OUTPUT_TOKENS, Metric.TOKENS, Metric.INPUT_TOKENS]
    limits = [Limit(m, WindowKind.DAY, r) for m, r in zip(metrics, room, strict=False)]
    f = flex(requested, min(minimum, requested), choices)
    d = plan(limits, {}, f)
    if isinstance(d, Admission):
        out = d.max_output if d.max_output is not None else requested
        assert min(minimum, requested) <= out <= requested
        worst = f.amounts(out)
        for limit in limits:
            assert worst.of(limit.metric) <= limit.max
        if d.max_output is not None and out < requested:  # as large as fits: one more does not
            bigger = f.amounts(out + 1)
            assert any(bigger.of(limit.metric) > limit.max for limit in limits)
    else:
        smallest = f.amounts(min(minimum, requested))
        assert any(smallest.of(limit.metric) > limit.max for limit in limits)


def test_amounts_match_price_worst_cost() -> None:
    from capgate.core.money import Price

    price = Price.from_per_million(
        {
            "input": "3",
            "output": "15",
            "cache_write": "3.75",
            "cache_write_1h": "6",
            "cache_read": "0.3",
        }
    )
    f = OutputFlex(8_000, 1024, 2, 12_345, 12_345 * price.dearest_input, price.output)
    assert f.amounts(8_000) == Amounts(1, 12_345, 16_000, price.worst_cost_nano(12_345, 16_000))


def test_credits_count_the_model_weight_whatever_max_tokens() -> None:
    from capgate.config import ServerConfig

    settings = ServerConfig()
    assert settings.credits_for("claude-opus-4-5") == 10
    assert settings.credits_for("claude-sonnet-4-6") == 3
    assert settings.credits_for("claude-haiku-4-5") == 1
    assert settings.credits_for("gpt-5-mini") == 1
    assert ServerConfig(credit_weights={"gpt-5*": 4}).credits_for("gpt-5-mini") == 4
    f = OutputFlex(64_000, 1024, 1, 10_000, 10_000 * 6_000_000, 15_000_000, credits=10)
    ok = plan([Limit(Metric.CREDITS, WindowKind.DAY, 25)], {Metric.CREDITS: 15}, f)
    assert isinstance(ok, Admission) and ok.charges[0].amount == 10
    refused = plan([Limit(Metric.CREDITS, WindowKind.DAY, 25)], {Metric.CREDITS: 16}, f)
    assert isinstance(refused, Refusal) and "Daily credit limit" in refused.message
