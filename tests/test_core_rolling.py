"""Rolling windows: the last N, counted in buckets of N/60, never less than the exact
sliding sum and at most two buckets more; no boundary to game."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.engine import (
    Admission,
    Amounts,
    CounterState,
    counters_for,
    plan_reserve,
    plan_settle,
)
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, parse_limit_spec
from capgate.core.windows import Rolling, WindowKind, parse_window, window_at

T0 = 1_795_300_000  # 2026-11-22, a Sunday


@pytest.mark.parametrize(
    ("text", "span", "bucket"),
    [
        ("rolling-24h", 86_400, 1_440),
        ("rolling-5m", 300, 5),
        ("rolling-7d", 604_800, 10_080),
        ("rolling-30s", 30, 1),
    ],
)
def test_parse(text: str, span: int, bucket: int) -> None:
    window = parse_window(text)
    assert isinstance(window, Rolling) and (window.span, window.bucket, window.value) == (
        span,
        bucket,
        text,
    )
    assert parse_limit_spec(f"cost=5/{text}").to_json()["window"] == text


@pytest.mark.parametrize(
    "text", ["rolling-0h", "rolling-24", "rolling-h", "rolling-500d", "rolling--1m"]
)
def test_bad_rolling_windows(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


@settings(max_examples=300, deadline=None)
@given(
    span=st.sampled_from(
        ["rolling-30s", "rolling-5m", "rolling-1h", "rolling-24h", "rolling-7d", "rolling-1000s"]
    ),
    now=st.floats(T0, T0 + 30 * 86_400, allow_nan=False),
)
def test_buckets_cover_the_last_span_and_little_more(span: str, now: float) -> None:
    window = parse_window(span)
    assert isinstance(window, Rolling)
    w = window_at(window, now)
    assert w.start <= now < w.end and w.end - w.start == window.bucket
    assert w.read_from is not None and w.read_from <= now - window.span  # covers the span
    assert (now - window.span) - w.read_from < 2 * window.bucket  # at most two buckets more
    assert (w.start - w.read_from) % window.bucket == 0


def _run(ops: list[tuple[float, int, int]], limit_max: int) -> None:
    """Drive reserve/settle through time; check the exact sliding sum against max."""
    limit = Limit(Metric.TOKENS, parse_window("rolling-1h"), limit_max)
    scope = Scope(ScopeKind.KEY, "k", "k", (limit,))
    buckets: dict[int, list[int]] = {}
    admitted: list[tuple[float, int]] = []  # (time, tokens actually used)
    now = float(T0)
    for advance, worst, actual in ops:
        now += advance
        (app,) = counters_for([scope], ["m"], now)
        assert app.window.read_from is not None
        settled = sum(
            v[0] for b, v in buckets.items() if app.window.read_from <= b <= app.window.start
        )
        reserved = sum(
            v[1] for b, v in buckets.items() if app.window.read_from <= b <= app.window.start
        )
        decision = plan_reserve(
            [app],
            {(app.counter, app.window.start): CounterState(settled, reserved)},
            Amounts(1, 0, worst, 0),
        )
        if not isinstance(decision, Admission):
            continue
        slot = buckets.setdefault(app.window.start, [0, 0])
        slot[1] += worst
        used = min(actual, worst)
        (delta,) = plan_settle(decision.charges, Amounts(1, 0, used, 0))
        slot[0] += delta.settled
        slot[1] += delta.reserved
        admitted.append((now, used))
        # The exact sliding sum over the last hour never passes the limit.
        assert sum(u for t, u in admitted if t > now - 3600) <= limit_max


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.floats(0, 900, allow_nan=False), st.integers(0, 400), st.integers(0, 400)),
        max_size=80,
    ),
    limit_max=st.integers(0, 2_000),
)
def test_sliding_sum_never_exceeds_max(ops: list[tuple[float, int, int]], limit_max: int) -> None:
    _run(ops, limit_max)


def test_no_midnight_gaming() -> None:
    """Ten requests at 23:59 of a 10-per-rolling-day limit: still refused at 00:01, unlike a
    calendar day; admitted again once a day has passed."""
    limit = Limit(Metric.REQUESTS, parse_window("rolling-24h"), 10)
    day = Limit(Metric.REQUESTS, WindowKind.DAY, 10)
    scope = Scope(ScopeKind.KEY, "k", "alice", (limit,))
    daily = Scope(ScopeKind.KEY, "k2", "bob", (day,))
    late = T0 - (T0 % 86_400) + 86_400 - 60  # 23:59 UTC

    def state_for(s: Scope, at: float, count: int) -> dict[tuple[str, int], CounterState]:
        (app,) = counters_for([s], ["m"], at)
        (then,) = counters_for([s], ["m"], late)
        counted = app.window.read_from is None or app.window.read_from <= then.window.start
        same = app.window.start == then.window.start
        return {
            (app.counter, app.window.start): CounterState(
                count if (counted if app.window.read_from is not None else same) else 0, 0
            )
        }

    for s, expect_at_0001 in ((scope, False), (daily, True)):
        at = late + 120  # 00:01
        apps = counters_for([s], ["m"], at)
        decision = plan_reserve(apps, state_for(s, at, 10), Amounts(1, 0, 0, 0))
        assert isinstance(decision, Admission) is expect_at_0001
    apps = counters_for([scope], ["m"], late + 86_400 + 1_440)
    assert isinstance(
        plan_reserve(apps, state_for(scope, late + 86_400 + 1_440, 10), Amounts(1, 0, 0, 0)),
        Admission,
    )


def test_refusal_says_when_usage_ages_out() -> None:
    limit = Limit(Metric.REQUESTS, parse_window("rolling-5m"), 1)
    (app,) = counters_for([Scope(ScopeKind.KEY, "k", "alice", (limit,))], ["m"], T0)
    refusal = plan_reserve(
        [app], {(app.counter, app.window.start): CounterState(1, 0)}, Amounts(1, 0, 0, 0)
    )
    assert not isinstance(refusal, Admission)
    assert refusal.message.startswith('Rolling 5-minute request limit of key "alice" reached')
    assert "leaves the window at" in refusal.message
    assert refusal.is_rate_limit  # 5 minutes: worth retrying soon
