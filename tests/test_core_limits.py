"""Limits, scopes and dollar amounts (capgate.core.limits)."""

from __future__ import annotations

import decimal
import json
from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.limits import (
    METRIC_ALIASES,
    NANO_PER_USD,
    Limit,
    Metric,
    Scope,
    ScopeKind,
    Status,
    format_usd,
    nano_to_decimal_str,
    parse_limit_spec,
    parse_metric,
    parse_usd,
    usd_to_nano,
)
from capgate.core.windows import WindowKind

USD = NANO_PER_USD

# --- parse_limit_spec -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cost=5/day", Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD)),
        ("requests=100/day", Limit(Metric.REQUESTS, WindowKind.DAY, 100)),
        ("tokens=2000000/month", Limit(Metric.TOKENS, WindowKind.MONTH, 2_000_000)),
        ("opus*:requests=5/day", Limit(Metric.REQUESTS, WindowKind.DAY, 5, "opus*")),
        ("cost_usd=0.5/week", Limit(Metric.COST_USD, WindowKind.WEEK, 500_000_000)),
        ("usd=1.25/hour", Limit(Metric.COST_USD, WindowKind.HOUR, 1_250_000_000)),
        ("input_tokens=10/minute", Limit(Metric.INPUT_TOKENS, WindowKind.MINUTE, 10)),
        ("output_tokens=7/total", Limit(Metric.OUTPUT_TOKENS, WindowKind.TOTAL, 7)),
        ("cost=0.000000001/total", Limit(Metric.COST_USD, WindowKind.TOTAL, 1)),
        ("cost=0/day", Limit(Metric.COST_USD, WindowKind.DAY, 0)),
        ("requests=0/minute", Limit(Metric.REQUESTS, WindowKind.MINUTE, 0)),
        ("requests=5.0/day", Limit(Metric.REQUESTS, WindowKind.DAY, 5)),  # whole number
        ("cost=.5/day", Limit(Metric.COST_USD, WindowKind.DAY, 500_000_000)),
        ("  cost=5/day \n", Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD)),
        (
            "claude-*-4-?:cost=12.345/month",
            Limit(Metric.COST_USD, WindowKind.MONTH, 12_345_000_000, "claude-*-4-?"),
        ),
        ("gpt-4o:tokens=1/hour", Limit(Metric.TOKENS, WindowKind.HOUR, 1, "gpt-4o")),
    ],
)
def test_parse_limit_spec(spec: str, expected: Limit) -> None:
    assert parse_limit_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        # bad metric: named, with the allowed ones
        ("bananas=5/day", r"unknown metric 'bananas'.*requests.*cost_usd"),
        ("request=5/day", r"unknown metric 'request'"),
        ("opus*:dollars=5/day", r"unknown metric 'dollars'"),
        # bad window: named, with the allowed ones
        ("cost=5/fortnight", r"unknown window 'fortnight'.*minute.*month.*total"),
        ("requests=5/daily", r"unknown window 'daily'"),
        # negative: not a number the syntax accepts
        ("cost=-5/day", r"bad limit 'cost=-5/day': expected \[MODEL_GLOB:\]METRIC=MAX/WINDOW"),
        ("requests=-1/day", r"bad limit 'requests=-1/day'"),
        # fractional counts
        ("requests=1.5/day", r"max of requests must be a whole number, not 1\.5"),
        ("tokens=0.1/month", r"max of tokens must be a whole number"),
        ("output_tokens=2.0001/hour", r"max of output_tokens must be a whole number"),
        # finer than a nano-dollar
        ("cost=0.0000000001/day", r"finer than a nano-dollar"),
        ("cost=.../day", r"'\.\.\.'"),
        # garbage
        ("", r"bad limit ''"),
        ("cost", r"bad limit 'cost'"),
        ("cost=5", r"bad limit 'cost=5'"),
        ("5/day", r"bad limit '5/day'"),
        ("cost=/day", r"bad limit"),
        ("=5/day", r"bad limit"),
        ("cost=5/day/extra", r"bad limit"),
        ("cost=5/", r"bad limit"),
        ("COST=5/day", r"bad limit"),
        ("cost=5/DAY", r"bad limit"),
        ("cost=5e3/day", r"bad limit"),
        ("cost=$5/day", r"bad limit"),
        ("a:b:cost=5/day", r"bad limit"),
        (":cost=5/day", r"bad limit"),
        ("cost = 5/day", r"bad limit"),
        ("cost=5/day; drop table", r"bad limit"),
    ],
)
def test_parse_limit_spec_errors_name_the_problem(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_limit_spec(spec)


def test_bad_limit_message_shows_the_syntax() -> None:
    with pytest.raises(ValueError) as info:
        parse_limit_spec("nonsense")
    assert str(info.value) == (
        "bad limit 'nonsense': expected [MODEL_GLOB:]METRIC=MAX/WINDOW, e.g. cost=5/day"
    )


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("requests=1.2.3/day", "1.2.3"),
        ("tokens=./day", "."),
        ("requests=../day", ".."),
        ("cost=1.2.3/day", "1.2.3"),
    ],
)
def test_parse_limit_spec_malformed_number_raises_value_error(spec: str, bad: str) -> None:
    # a ValueError (not decimal.InvalidOperation) that names the bad number
    with pytest.raises(ValueError) as info:
        parse_limit_spec(spec)
    assert not isinstance(info.value, decimal.InvalidOperation)
    assert repr(bad) in str(info.value)


# --- usd_to_nano / nano_to_decimal_str / format_usd ------------------------------------


@pytest.mark.parametrize(
    ("value", "nano"),
    [
        ("0.1", 100_000_000),
        (0.1, 100_000_000),  # a float goes through its shortest repr, so no binary noise
        (5, 5_000_000_000),
        ("5", 5_000_000_000),
        (5.0, 5_000_000_000),
        ("0", 0),
        (0, 0),
        ("0.000000001", 1),
        ("1e-9", 1),
        ("1E3", 1000 * USD),
        ("1234.567890123", 1_234_567_890_123),
        ("0.30", 300_000_000),
        (Decimal("3.3"), 3_300_000_000),
        ("-2.5", -2_500_000_000),
        ("1000000", 10**15),
        (10**9, 10**18),
    ],
)
def test_usd_to_nano_exact(value: Any, nano: int) -> None:
    result = usd_to_nano(value)
    assert result == nano
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0.0000000001", "finer than a nano-dollar"),
        ("1.0000000001", "finer than a nano-dollar"),
        ("0.0000000005", "finer than a nano-dollar"),
        (1e-10, "finer than a nano-dollar"),
        ("NaN", "number"),
        ("Infinity", "number"),
        ("-inf", "number"),
        ("abc", "number"),
        ("", "number"),
        ("$5", "number"),
        ("5 USD", "number"),
        (None, "number"),
        ("1,000", "number"),
    ],
)
def test_usd_to_nano_rejects(value: Any, problem: str) -> None:
    # a ValueError that names the value and what is wrong with it
    with pytest.raises(ValueError) as info:
        usd_to_nano(value)
    message = str(info.value)
    assert not isinstance(info.value, decimal.InvalidOperation)
    assert repr(value) in message
    assert problem in message


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (1_234_500, "0.0012345"),
        (5_000_000_000, "5"),
        (0, "0"),
        (1, "0.000000001"),
        (1_500_000_000, "1.5"),
        (100 * USD, "100"),
        (10 * USD + 10, "10.00000001"),
        (-2_500_000_000, "-2.5"),
        (123_456_789_012_345, "123456.789012345"),
    ],
)
def test_nano_to_decimal_str(nano: int, text: str) -> None:
    assert nano_to_decimal_str(nano) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_nano_to_decimal_str_is_the_exact_decimal(nano: int) -> None:
    """Integer arithmetic gives the text exact Decimal arithmetic would: every digit, no
    trailing zero."""
    text = f"{Decimal(nano).scaleb(-9, Context(prec=80)):f}"
    expected = text.rstrip("0").rstrip(".") if "." in text else text
    assert nano_to_decimal_str(nano) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**18), 10**18))
def test_nano_decimal_round_trip(nano: int) -> None:
    text = nano_to_decimal_str(nano)
    assert usd_to_nano(text) == nano
    assert Decimal(text) == Decimal(nano) / NANO_PER_USD
    assert "e" not in text.lower()
    if "." in text:
        assert not text.endswith("0")
        assert not text.endswith(".")
        assert len(text.split(".")[1]) <= 9


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.integers(0, 10**9 - 1))
def test_usd_to_nano_of_decimal_strings(dollars: int, nanos: int) -> None:
    text = f"{dollars}.{nanos:09d}"
    assert usd_to_nano(text) == dollars * USD + nanos
    assert usd_to_nano(text + "0") == dollars * USD + nanos  # trailing zeros are fine
    with pytest.raises(ValueError, match="finer than a nano-dollar"):
        usd_to_nano(text + "1")


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (5 * USD, "$5.00"),
        (4_900_000_000, "$4.90"),
        (0, "$0.00"),
        (10_000_000, "$0.01"),
        (1_234_567 * USD, "$1,234,567.00"),
        (1_234_500, "$0.0012345"),
        (9_999_999, "$0.009999999"),
        (1, "$0.000000001"),
        (12_345_000_000, "$12.345"),  # every digit it has: not rounded to $12.34
        (12_355_000_000, "$12.355"),
        (15_000_000, "$0.015"),
        (1_000_000_001, "$1.000000001"),
        (-2_500_000_000, "-$2.50"),
    ],
)
def test_format_usd(nano: int, text: str) -> None:
    assert format_usd(nano) == text
    assert parse_usd(text) == nano


def test_format_usd_under_a_cent_does_not_read_as_if_it_fits() -> None:
    # The refusal that read "$0.00 of $0.01 used, this request may need up to $0.01".
    used, top, need = 0, 10_000_000, 12_500_000
    assert [format_usd(x) for x in (used, top, need)] == ["$0.00", "$0.01", "$0.0125"]


@settings(max_examples=500, deadline=None)
@given(st.integers(-(10**18), 10**18), st.integers(-(10**18), 10**18))
def test_format_usd_is_exact_and_distinct(a: int, b: int) -> None:
    assert parse_usd(format_usd(a)) == a
    if a != b:
        assert format_usd(a) != format_usd(b)
    text = format_usd(a).lstrip("-$").replace(",", "")
    assert 2 <= len(text.split(".")[1]) <= 9  # two decimals at least, nano-dollars at most


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.integers(0, 99))
def test_format_usd_whole_cents_have_two_decimals(dollars: int, cents: int) -> None:
    assert format_usd(dollars * USD + cents * 10_000_000) == f"${dollars:,}.{cents:02d}"


@pytest.mark.parametrize("text", ["", "$", "5$", "$1,23.00", "$1.2.3", "abc", "$-5", "1e3"])
def test_parse_usd_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="dollar amount"):
        parse_usd(text)


# --- Limit ------------------------------------------------------------------------------


def test_limit_format_amount() -> None:
    assert Limit(Metric.COST_USD, WindowKind.DAY, 0).format_amount(5 * USD) == "$5.00"
    for metric in (Metric.REQUESTS, Metric.TOKENS, Metric.INPUT_TOKENS, Metric.OUTPUT_TOKENS):
        assert Limit(metric, WindowKind.DAY, 0).format_amount(1_234_567) == "1,234,567"


@pytest.mark.parametrize(
    ("glob", "model", "applies"),
    [
        (None, "anything-at-all", True),
        ("opus*", "opus-4", True),
        ("opus*", "claude-opus-4", False),  # globs match the whole name
        ("*opus*", "claude-opus-4", True),
        ("claude-?-4", "claude-x-4", True),
        ("claude-?-4", "claude-xy-4", False),
        ("gpt-4o", "gpt-4o", True),
        ("gpt-4o", "gpt-4o-mini", False),
        ("GPT-*", "gpt-4o", False),  # case-sensitive
        ("gpt-4[ab]", "gpt-4a", True),
        ("gpt-4[ab]", "gpt-4c", False),
    ],
)
def test_limit_applies_to(glob: str | None, model: str, applies: bool) -> None:
    assert Limit(Metric.REQUESTS, WindowKind.DAY, 1, glob).applies_to(model) is applies


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"metric": "cost_usd", "window": "day", "max": "5"},
            Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD),
        ),
        (
            {"metric": "cost", "window": "day", "max": 0.25},
            Limit(Metric.COST_USD, WindowKind.DAY, 250_000_000),
        ),
        (
            {"metric": "usd", "window": "month", "max": 100},
            Limit(Metric.COST_USD, WindowKind.MONTH, 100 * USD),
        ),
        (
            {"metric": "requests", "window": "minute", "max": 60},
            Limit(Metric.REQUESTS, WindowKind.MINUTE, 60),
        ),
        (
            {"metric": "tokens", "window": "total", "max": "1000", "model": "opus*"},
            Limit(Metric.TOKENS, WindowKind.TOTAL, 1000, "opus*"),
        ),
        (
            {"metric": "tokens", "window": "day", "max": 1000.0, "model": None},
            Limit(Metric.TOKENS, WindowKind.DAY, 1000),
        ),
        (
            {"metric": "output_tokens", "window": "hour", "max": 1e6},
            Limit(Metric.OUTPUT_TOKENS, WindowKind.HOUR, 1_000_000),
        ),
    ],
)
def test_limit_from_json(data: dict[str, Any], expected: Limit) -> None:
    assert Limit.from_json(data) == expected


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"metric": "requests", "window": "day", "max": True}, "must be a number, not True"),
        ({"metric": "cost_usd", "window": "day", "max": False}, "must be a number, not False"),
        ({"metric": "tokens", "window": "day", "max": "abc"}, "must be a number, not 'abc'"),
        ({"metric": "tokens", "window": "day", "max": "Infinity"}, "finite number, not 'Infinity'"),
        ({"metric": "requests", "window": "day", "max": float("inf")}, "finite number, not inf"),
        ({"metric": "cost_usd", "window": "day", "max": "NaN"}, "finite number, not 'NaN'"),
        ({"metric": "requests", "window": "day", "max": -1}, "max must not be negative"),
        ({"metric": "cost_usd", "window": "day", "max": "-0.01"}, "max must not be negative"),
        ({"metric": "tokens", "window": "day", "max": 2.5}, "must be a whole number"),
        ({"metric": "cost_usd", "window": "day", "max": "1e-12"}, "finer than a nano-dollar"),
        ({"metric": "bytes", "window": "day", "max": 1}, "unknown metric 'bytes'"),
        ({"metric": "requests", "window": "year", "max": 1}, "unknown window 'year'"),
        ({"metric": "requests", "window": "day", "max": 1, "model": ""}, "non-empty glob"),
        ({"metric": "requests", "window": "day", "max": 1, "model": 5}, "non-empty glob"),
        ({"metric": "requests", "window": "day", "max": 1, "model": ["a"]}, "non-empty glob"),
    ],
)
def test_limit_from_json_rejects(data: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Limit.from_json(data)


def test_limit_to_json_shapes() -> None:
    assert Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD).to_json() == {
        "metric": "cost_usd",
        "window": "day",
        "max": "5",
    }
    assert Limit(Metric.COST_USD, WindowKind.WEEK, 1_234_500, "opus*").to_json() == {
        "metric": "cost_usd",
        "window": "week",
        "max": "0.0012345",
        "model": "opus*",
    }
    assert Limit(Metric.REQUESTS, WindowKind.MINUTE, 60).to_json() == {
        "metric": "requests",
        "window": "minute",
        "max": 60,
    }


GLOBS = st.none() | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._*?[]", min_size=1, max_size=20
)
LIMITS = st.builds(
    Limit,
    metric=st.sampled_from([m for m in Metric if m is not Metric.CONCURRENT]),
    window=st.sampled_from(list(WindowKind)),
    max=st.integers(0, 10**15),
    model=GLOBS,
)


@settings(max_examples=300, deadline=None)
@given(LIMITS)
def test_limit_json_round_trip(limit: Limit) -> None:
    data = limit.to_json()
    assert Limit.from_json(data) == limit
    # survives a real JSON encoding too (cost max is a string, never a float)
    assert Limit.from_json(json.loads(json.dumps(data))) == limit
    if limit.metric is Metric.COST_USD:
        assert isinstance(data["max"], str)
    else:
        assert data["max"] == limit.max
    assert ("model" in data) is (limit.model is not None)


@settings(max_examples=200, deadline=None)
@given(LIMITS)
def test_limit_spec_round_trip(limit: Limit) -> None:
    # the CLI syntax carries every limit whose glob has no ':' or '=' (GLOBS has neither)
    data = limit.to_json()
    spec = f"{data['metric']}={data['max']}/{data['window']}"
    if limit.model is not None:
        spec = f"{limit.model}:{spec}"
    assert parse_limit_spec(spec) == limit


def test_usd_to_nano_does_not_round_huge_amounts() -> None:
    with pytest.raises(ValueError):
        usd_to_nano("99999999999999999999.9999999999")


# --- parse_metric -----------------------------------------------------------------------


def test_parse_metric() -> None:
    for metric in Metric:
        assert parse_metric(metric.value) is metric
    assert parse_metric("cost") is Metric.COST_USD
    assert parse_metric("usd") is Metric.COST_USD
    assert set(METRIC_ALIASES) == {"cost", "usd"}
    with pytest.raises(ValueError, match=r"unknown metric 'Requests' \(one of: requests,"):
        parse_metric("Requests")


def test_metric_nouns() -> None:
    assert {m: m.noun for m in Metric} == {
        Metric.REQUESTS: "request",
        Metric.TOKENS: "token",
        Metric.INPUT_TOKENS: "input token",
        Metric.OUTPUT_TOKENS: "output token",
        Metric.COST_USD: "cost",
        Metric.CONCURRENT: "concurrent request",
        Metric.CREDITS: "credit",
    }


# --- Scope ------------------------------------------------------------------------------


def test_counter_id_format() -> None:
    scope = Scope(ScopeKind.KEY, "k1", "alice")
    assert scope.counter_id(Limit(Metric.COST_USD, WindowKind.DAY, 5)) == "key:k1:cost_usd:day:*"
    assert (
        Scope(ScopeKind.TEAM, "t9", "eng").counter_id(
            Limit(Metric.REQUESTS, WindowKind.MINUTE, 5, "opus*")
        )
        == "team:t9:requests:minute:opus*"
    )


@settings(max_examples=200, deadline=None)
@given(LIMITS, st.integers(0, 10**15), st.sampled_from(list(ScopeKind)))
def test_counter_id_is_independent_of_max(limit: Limit, new_max: int, kind: ScopeKind) -> None:
    scope = Scope(kind, "id-1", "name")
    raised = Limit(limit.metric, limit.window, new_max, limit.model)
    assert scope.counter_id(raised) == scope.counter_id(limit)
    # ... and of the scope's name, status, timezone and other settings
    renamed = Scope(
        kind,
        "id-1",
        "other name",
        limits=(limit,),
        status=Status.PAUSED,
        timezone="Asia/Kolkata",
        models=("x*",),
        expires_at=5.0,
    )
    assert renamed.counter_id(limit) == scope.counter_id(limit)


def test_counter_id_distinguishes_what_it_counts() -> None:
    base = Limit(Metric.COST_USD, WindowKind.DAY, 5)
    variants = [
        base,
        Limit(Metric.TOKENS, WindowKind.DAY, 5),
        Limit(Metric.COST_USD, WindowKind.WEEK, 5),
        Limit(Metric.COST_USD, WindowKind.DAY, 5, "opus*"),
        Limit(Metric.COST_USD, WindowKind.DAY, 5, "sonnet*"),
    ]
    scope = Scope(ScopeKind.KEY, "k1", "alice")
    ids = {scope.counter_id(lim) for lim in variants}
    ids |= {Scope(ScopeKind.KEY, "k2", "alice").counter_id(base)}
    ids |= {Scope(ScopeKind.USER, "k1", "alice").counter_id(base)}
    assert len(ids) == len(variants) + 2


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [
        ((), "anything", True),
        (("claude-*",), "claude-opus-4", True),
        (("claude-*",), "gpt-4o", False),
        (("claude-*",), "Claude-opus-4", False),
        (("claude-*", "gpt-4o"), "gpt-4o", True),
        (("claude-*", "gpt-4o"), "gpt-4o-mini", False),
        (("gpt-4o*",), "gpt-4o-mini", True),
        (("*-mini",), "gpt-4o-mini", True),
        (("*-mini",), "gpt-4o-mini-2024", False),
        (("o[13]",), "o1", True),
        (("o[13]",), "o2", False),
        (("?pt-4o",), "gpt-4o", True),
        (("*",), "", True),
    ],
)
def test_scope_allows_model(models: tuple[str, ...], model: str, allowed: bool) -> None:
    assert Scope(ScopeKind.KEY, "k", "k", models=models).allows_model(model) is allowed


def test_scope_defaults_and_equality() -> None:
    scope = Scope(ScopeKind.KEY, "k", "alice")
    assert scope.status is Status.ACTIVE
    assert scope.timezone == "UTC"
    assert scope.limits == ()
    assert scope.models == ()
    assert scope.expires_at is None
    # extra is not part of equality
    assert Scope(ScopeKind.KEY, "k", "alice", extra={"a": 1}) == scope
