"""`CountersFor`: the stores' memo of `counters_for` gives exactly its answer, at every
instant, across window boundaries, time zones and configuration changes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.core.engine import CountersFor, counters_for
from capgate.core.limits import Limit, Metric, Scope, ScopeKind
from capgate.core.windows import WindowKind, parse_window

START = int(datetime(2026, 3, 29, 0, 59, 0, tzinfo=ZoneInfo("UTC")).timestamp())  # Berlin's DST


def scopes(tz: str = "Europe/Berlin") -> tuple[Scope, ...]:
    key = Scope(
        ScopeKind.KEY, "id-k", "k", timezone=tz,
        limits=(
            Limit(Metric.REQUESTS, WindowKind.MINUTE, 10),
            Limit(Metric.TOKENS, WindowKind.HOUR, 1000, "gpt-*"),
            Limit(Metric.COST_USD, WindowKind.DAY, 10**9),
            Limit(Metric.REQUESTS, parse_window("rolling-5m"), 100),
        ),
    )  # fmt: skip
    team = Scope(
        ScopeKind.TEAM, "id-t", "t",
        limits=(Limit(Metric.COST_USD, WindowKind.MONTH, 10**10), Limit(Metric.CREDITS, WindowKind.TOTAL, 5)),
    )  # fmt: skip
    return key, team


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=60))
def test_same_answer_as_counters_for_at_every_instant(steps: list[int]) -> None:
    """Time moves on in steps of 0-200 s (and sometimes back): every answer is
    counters_for's, whichever windows ended in between."""
    memo, held = CountersFor(), scopes()
    now = float(START)
    for i, step in enumerate(steps):
        now += -step / 3 if i % 7 == 6 else step + 0.25  # a clock may step back
        for models in (("gpt-5", "gpt-5"), ("claude-x", "claude-x")):
            assert memo(held, models, now) == tuple(counters_for(held, models, now))


def test_a_window_that_ends_is_not_reused() -> None:
    memo, held = CountersFor(), scopes("UTC")
    minute_end = START - START % 60 + 60
    before = memo(held, ("gpt-5", "gpt-5"), minute_end - 0.001)
    after = memo(held, ("gpt-5", "gpt-5"), minute_end)
    assert before[0].window.end == minute_end and after[0].window.start == minute_end
    assert memo(held, ("gpt-5", "gpt-5"), minute_end - 0.001)[0].window == before[0].window


def test_other_scopes_or_models_get_their_own_answer() -> None:
    memo, held = CountersFor(), scopes()
    gpt = memo(held, ("gpt-5", "gpt-5"), START)
    assert len(memo(held, ("claude-x", "claude-x"), START)) == len(gpt) - 1  # no gpt-* limit
    # A reloaded configuration: new scope objects, with a limit less.
    key, team = held
    changed = (Scope(ScopeKind.KEY, key.id, key.name, limits=key.limits[:1]), team)
    assert memo(changed, ("gpt-5", "gpt-5"), START) == tuple(
        counters_for(changed, ("gpt-5", "gpt-5"), START)
    )
    assert len(memo(changed, ("gpt-5", "gpt-5"), START)) == 3
    assert memo(held, ("gpt-5", "gpt-5"), START) == gpt


def test_no_limits_at_all() -> None:
    bare = (Scope(ScopeKind.KEY, "id-b", "b"),)
    assert CountersFor()(bare, ("m", "m"), START) == ()
