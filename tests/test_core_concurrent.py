"""The `concurrent` metric: requests in flight are held while they run and released when
they settle; nothing accumulates, so a window does not apply (only `total`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.engine import (
    Admission,
    Amounts,
    CounterState,
    Refusal,
    counters_for,
    plan_reserve,
    plan_settle,
)
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, parse_limit_spec
from capgate.core.windows import WindowKind
from capgate.errors import LimitExceeded

NOW = 1_795_300_000.0
CAP = Limit(Metric.CONCURRENT, WindowKind.TOTAL, 3)
KEY = Scope(ScopeKind.KEY, "k1", "alice", (CAP,))


def test_only_total_window() -> None:
    assert parse_limit_spec("concurrent=4/total").max == 4
    with pytest.raises(ValueError, match="window total"):
        parse_limit_spec("concurrent=4/day")


def test_refusal_names_requests_in_flight_and_is_a_short_retry() -> None:
    apps = counters_for([KEY], ["m"], NOW)
    states = {(a.counter, a.window.start): CounterState(0, 3) for a in apps}
    refusal = plan_reserve(apps, states, Amounts(1, 10, 10, 10))
    assert isinstance(refusal, Refusal)
    assert "3 of 3 requests in flight" in refusal.message
    error = LimitExceeded(refusal, NOW)
    assert error.status == 429 and error.headers["retry-after"] == "1"


def test_settle_releases_and_keeps_nothing() -> None:
    apps = counters_for([KEY], ["m"], NOW)
    decision = plan_reserve(apps, {}, Amounts(1, 10, 10, 10))
    assert isinstance(decision, Admission)
    (delta,) = plan_settle(decision.charges, Amounts(1, 5, 5, 5))
    assert (delta.reserved, delta.settled) == (-1, 0)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.booleans(), max_size=60))
def test_never_more_in_flight_than_the_cap(ops: list[bool]) -> None:
    """Random starts (True) and finishes (False): in flight never passes the cap, and
    every admitted request is released to zero."""
    apps = counters_for([KEY], ["m"], NOW)
    slot = (apps[0].counter, apps[0].window.start)
    settled, reserved, running = 0, 0, []
    for start in ops:
        if start:
            d = plan_reserve(apps, {slot: CounterState(settled, reserved)}, Amounts(1, 1, 1, 1))
            if isinstance(d, Admission):
                reserved += d.charges[0].amount
                running.append(d)
        elif running:
            (delta,) = plan_settle(running.pop().charges, Amounts(1, 1, 1, 1))
            reserved += delta.reserved
            settled += delta.settled
        assert settled == 0 and reserved == len(running) <= CAP.max
