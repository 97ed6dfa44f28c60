"""Prices and exact cost arithmetic (capgate.core.money)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.money import PICO_PER_NANO, Price, Usage, per_million_to_pico

# --- per_million_to_pico ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pico"),
    [
        ("3", 3_000_000),
        (3, 3_000_000),
        ("15", 15_000_000),
        ("0.075", 75_000),
        (0.075, 75_000),
        ("0.000001", 1),
        ("1.234567", 1_234_567),
        ("0", 0),
        ("3.750000", 3_750_000),
        (Decimal("0.3"), 300_000),
        ("1e-6", 1),
    ],
)
def test_per_million_to_pico(value: Any, pico: int) -> None:
    result = per_million_to_pico(value)
    assert result == pico
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0.0000001", "6 decimals"),
        ("1.2345678", "6 decimals"),
        ("-1", ">= 0"),
        (-0.5, ">= 0"),
        ("NaN", ""),
        ("Infinity", ""),
        ("abc", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_per_million_to_pico_rejects(value: Any, problem: str) -> None:
    # a ValueError that names the bad price
    with pytest.raises(ValueError) as info:
        per_million_to_pico(value)
    assert repr(value) in str(info.value)
    assert problem in str(info.value)


# --- Price.from_per_million -------------------------------------------------------------


def test_price_from_per_million_anthropic_style() -> None:
    price = Price.from_per_million(
        {
            "input": "3",
            "output": "15",
            "cache_write": "3.75",
            "cache_write_1h": "6",
            "cache_read": "0.3",
        }
    )
    assert price == Price(
        input=3_000_000, output=15_000_000, cache_write=3_750_000, cache_write_1h=6_000_000,
        cache_read=300_000,
    )  # fmt: skip


def test_price_openai_style_prices_cache_writes_at_input() -> None:
    price = Price.from_per_million({"input": "2.5", "output": "10", "cache_read": "1.25"})
    assert price == Price(
        input=2_500_000,
        output=10_000_000,
        cache_write=2_500_000,
        cache_write_1h=2_500_000,
        cache_read=1_250_000,
    )
    usage = Usage(cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000)
    assert price.cost_nano(usage) == price.cost_nano(Usage(input_tokens=2_000_000)) == 5 * 10**9


def test_price_defaults() -> None:
    # no cache_read: reads cost input; cache_write_1h defaults to cache_write
    price = Price.from_per_million({"input": 1, "output": 2, "cache_write": "1.25"})
    assert price.cache_read == 1_000_000
    assert price.cache_write == 1_250_000
    assert price.cache_write_1h == 1_250_000


@pytest.mark.parametrize(
    "data",
    [
        {"input": "1.0000001", "output": "1"},
        {"input": "1", "output": "-1"},
        {"input": "1", "output": "1", "cache_read": "x"},
        {"input": "1", "output": "1", "cache_write_1h": "0.00000001"},
    ],
)
def test_price_from_per_million_rejects_bad_prices(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Price.from_per_million(data)


@pytest.mark.parametrize("missing", ["input", "output"])
def test_price_needs_input_and_output(missing: str) -> None:
    data = {"input": "1", "output": "2"}
    del data[missing]
    with pytest.raises(KeyError):
        Price.from_per_million(data)


# --- cost_nano --------------------------------------------------------------------------

SONNET = Price.from_per_million(
    {
        "input": "3",
        "output": "15",
        "cache_write": "3.75",
        "cache_write_1h": "6",
        "cache_read": "0.3",
    }
)


@pytest.mark.parametrize(
    ("usage", "nano"),
    [
        (Usage(), 0),
        (Usage(input_tokens=1_000_000), 3 * 10**9),
        (Usage(output_tokens=1_000_000), 15 * 10**9),
        (Usage(input_tokens=1), 3_000),  # $3 per million = 3,000 nano per token
        (Usage(cache_read_tokens=1), 300),
        (Usage(cache_write_tokens=1), 3_750),
        (Usage(cache_write_1h_tokens=1), 6_000),
        (
            Usage(
                input_tokens=1000,
                output_tokens=500,
                cache_read_tokens=20_000,
                cache_write_tokens=3000,
                cache_write_1h_tokens=100,
            ),
            3_000_000 + 7_500_000 + 6_000_000 + 11_250_000 + 600_000,
        ),
    ],
)
def test_cost_nano_examples(usage: Usage, nano: int) -> None:
    assert SONNET.cost_nano(usage) == nano


def test_cost_rounds_up_once_per_request() -> None:
    cheap = Price.from_per_million({"input": "0.000001", "output": "0.000001"})  # 1 pico/token
    assert cheap.cost_nano(Usage(input_tokens=1)) == 1
    assert cheap.cost_nano(Usage(input_tokens=999)) == 1
    assert cheap.cost_nano(Usage(input_tokens=1000)) == 1
    assert cheap.cost_nano(Usage(input_tokens=1001)) == 2
    # summed in pico-dollars first, then rounded: 500 + 500 pico is 1 nano, not 2
    assert cheap.cost_nano(Usage(input_tokens=500, output_tokens=500)) == 1
    free = Price.from_per_million({"input": 0, "output": 0})
    assert free.cost_nano(Usage(input_tokens=10**9, output_tokens=10**9)) == 0


def test_usage_total_input() -> None:
    usage = Usage(
        input_tokens=1,
        output_tokens=1000,
        cache_read_tokens=20,
        cache_write_tokens=300,
        cache_write_1h_tokens=4000,
    )
    assert usage.total_input == 4321
    assert Usage().total_input == 0


# Prices with up to six decimals, as strings, like the pricing file holds them.
PRICE_TEXT = st.builds(
    lambda whole, frac, digits: f"{whole}.{frac:06d}"[: len(str(whole)) + 1 + digits].rstrip("."),
    st.integers(0, 200),
    st.integers(0, 999_999),
    st.integers(0, 6),
)
PRICE_DATA = st.fixed_dictionaries(
    {"input": PRICE_TEXT, "output": PRICE_TEXT},
    optional={"cache_write": PRICE_TEXT, "cache_write_1h": PRICE_TEXT, "cache_read": PRICE_TEXT},
)
TOKENS = st.integers(0, 10**7)
USAGES = st.builds(Usage, TOKENS, TOKENS, TOKENS, TOKENS, TOKENS)


def _exact_cost(data: dict[str, str], usage: Usage) -> Fraction:
    """Exact dollars, from the decimal strings, with the documented defaults."""
    per_m = {
        "input": Fraction(data["input"]),
        "output": Fraction(data["output"]),
    }
    per_m["cache_write"] = Fraction(data.get("cache_write", data["input"]))
    per_m["cache_write_1h"] = Fraction(data.get("cache_write_1h", str(per_m["cache_write"])))
    per_m["cache_read"] = Fraction(data.get("cache_read", data["input"]))
    total = (
        usage.input_tokens * per_m["input"]
        + usage.output_tokens * per_m["output"]
        + usage.cache_read_tokens * per_m["cache_read"]
        + usage.cache_write_tokens * per_m["cache_write"]
        + usage.cache_write_1h_tokens * per_m["cache_write_1h"]
    )
    return total / 10**6


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)


@settings(max_examples=300, deadline=None)
@given(PRICE_DATA, USAGES)
def test_cost_nano_is_ceiling_of_exact_decimal_cost(data: dict[str, str], usage: Usage) -> None:
    price = Price.from_per_million(data)
    exact_nano = _exact_cost(data, usage) * 10**9
    cost = price.cost_nano(usage)
    assert cost == _ceil(exact_nano)
    # never undercharges, and overcharges by less than one nano-dollar
    assert cost >= exact_nano
    assert cost - exact_nano < 1
    # and the same with Decimal arithmetic at ample precision
    dec = Decimal(exact_nano.numerator) / Decimal(exact_nano.denominator)
    assert Decimal(cost) >= dec


@settings(max_examples=300, deadline=None)
@given(
    PRICE_DATA,
    st.lists(st.integers(0, 10**7), min_size=4, max_size=4),
    st.integers(0, 10**7),
)
def test_worst_cost_bounds_any_split_of_the_input(
    data: dict[str, str], parts: list[int], output: int
) -> None:
    price = Price.from_per_million(data)
    usage = Usage(
        input_tokens=parts[0],
        output_tokens=output,
        cache_read_tokens=parts[1],
        cache_write_tokens=parts[2],
        cache_write_1h_tokens=parts[3],
    )
    total = sum(parts)
    assert usage.total_input == total
    worst = price.worst_cost_nano(total, output)
    assert worst >= price.cost_nano(usage)
    # a smaller actual output can only cost less
    assert worst >= price.cost_nano(Usage(input_tokens=parts[0], output_tokens=output // 2))
    # the bound is tight: all input at the dearest input-side rate costs exactly worst
    rates = {
        "input_tokens": price.input,
        "cache_read_tokens": price.cache_read,
        "cache_write_tokens": price.cache_write,
        "cache_write_1h_tokens": price.cache_write_1h,
    }
    dearest = max(rates, key=lambda name: rates[name])
    assert price.cost_nano(Usage(output_tokens=output, **{dearest: total})) == worst


@settings(max_examples=200, deadline=None)
@given(PRICE_DATA, TOKENS, TOKENS, TOKENS, TOKENS)
def test_worst_cost_is_monotonic(
    data: dict[str, str], inp: int, out: int, more_in: int, more_out: int
) -> None:
    price = Price.from_per_million(data)
    assert price.worst_cost_nano(inp + more_in, out + more_out) >= price.worst_cost_nano(inp, out)
    assert price.worst_cost_nano(0, 0) == 0


def test_worst_cost_uses_the_dearest_input_rate() -> None:
    # 1h cache writes are the dearest input-side rate for Anthropic models
    assert SONNET.worst_cost_nano(1_000_000, 0) == 6 * 10**9
    assert SONNET.worst_cost_nano(1, 1) == 6_000 + 15_000
    odd = Price(input=1, output=1, cache_write=1, cache_write_1h=1, cache_read=7)
    assert odd.worst_cost_nano(1000, 0) == 7
    assert odd.worst_cost_nano(1, 0) == 1  # 7 pico rounds up to 1 nano
    assert PICO_PER_NANO == 1000
