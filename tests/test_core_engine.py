"""The limit engine (capgate.core.engine) and the LimitExceeded error it feeds."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from capgate.core.engine import (
    Admission,
    Amounts,
    Applicable,
    Charge,
    CounterDelta,
    CounterState,
    Refusal,
    check_access,
    counters_for,
    plan_reserve,
    plan_settle,
)
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, Status
from capgate.core.money import Usage
from capgate.core.windows import NEVER, WindowInstance, WindowKind, window_at
from capgate.errors import CapgateError, LimitExceeded

USD = 10**9


def at(tz: str, y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """The instant of local wall-clock time y-m-d h:mi:s in `tz` (fold=0)."""
    return int(datetime(y, m, d, h, mi, s, tzinfo=ZoneInfo(tz)).timestamp())


def key(name: str = "alice", *limits: Limit, **kw: object) -> Scope:
    return Scope(ScopeKind.KEY, f"id-{name}", name, limits=limits, **kw)  # type: ignore[arg-type]


def team(name: str = "eng", *limits: Limit, **kw: object) -> Scope:
    return Scope(ScopeKind.TEAM, f"id-{name}", name, limits=limits, **kw)  # type: ignore[arg-type]


NOW = at("UTC", 2026, 11, 22, 14, 0, 0)  # a Sunday; Berlin: 15:00


# --- Amounts ----------------------------------------------------------------------------


def test_amounts_of_each_metric() -> None:
    a = Amounts(requests=1, input_tokens=20, output_tokens=300, cost_nano=4000)
    assert a.of(Metric.REQUESTS) == 1
    assert a.of(Metric.INPUT_TOKENS) == 20
    assert a.of(Metric.OUTPUT_TOKENS) == 300
    assert a.of(Metric.TOKENS) == 320
    assert a.of(Metric.COST_USD) == 4000
    assert Amounts().of(Metric.TOKENS) == 0


def test_amounts_of_usage_counts_all_input_and_one_request() -> None:
    usage = Usage(
        input_tokens=1,
        output_tokens=7,
        cache_read_tokens=20,
        cache_write_tokens=300,
        cache_write_1h_tokens=4000,
    )
    assert Amounts.of_usage(usage, 99) == Amounts(1, 4321, 7, 99)


# --- check_access -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "models", "code", "message"),
    [
        (key(), ["m", "m"], None, None),
        (
            key(status=Status.PAUSED),
            ["m", "m"],
            "paused",
            'The key "alice" is paused by an administrator; ask them to resume it.',
        ),
        (key(status=Status.REVOKED), ["m", "m"], "revoked", 'The key "alice" has been revoked.'),
        (team(status=Status.PAUSED), ["m", "m"], "paused", None),
        (key(expires_at=NOW - 1), ["m", "m"], "expired", 'The key "alice" has expired.'),
        (key(expires_at=NOW), ["m", "m"], "expired", None),  # at the instant: expired
        (key(expires_at=NOW + 0.5), ["m", "m"], None, None),
        (
            key(models=("claude-*", "o1")),
            ["gpt-4o", "gpt-4o"],
            "model_not_allowed",
            'Model "gpt-4o" is not allowed for key "alice" (allowed: claude-*, o1).',
        ),
        # allowed by the routed model (an alias that reaches an allowed model)
        (key(models=("claude-*",)), ["my-alias", "claude-opus-4"], None, None),
        # allowed by the name asked for
        (key(models=("smart",)), ["smart", "claude-opus-4"], None, None),
        (
            key(models=("claude-*",)),
            ["my-alias", "gpt-4o"],
            "model_not_allowed",
            'Model "my-alias" is not allowed for key "alice" (allowed: claude-*).',
        ),
        (key(models=()), ["anything", "anything"], None, None),
        # status is checked before models and expiry
        (key(status=Status.REVOKED, models=("x",), expires_at=0), ["m", "m"], "revoked", None),
        (key(status=Status.PAUSED, expires_at=0), ["m", "m"], "paused", None),
        (key(expires_at=0, models=("x",)), ["m", "m"], "expired", None),
    ],
)
def test_check_access(
    scope: Scope, models: list[str], code: str | None, message: str | None
) -> None:
    refusal = check_access([scope], models, NOW)
    if code is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.code == code
    assert refusal.scope_kind == scope.kind.value
    assert refusal.scope_name == scope.name
    assert refusal.limit is None
    assert not refusal.is_rate_limit
    assert f'{scope.kind.value} "{scope.name}"' in refusal.message
    if message is not None:
        assert refusal.message == message


def test_check_access_first_refusing_scope_wins() -> None:
    scopes = [key(), team(status=Status.PAUSED), Scope(ScopeKind.ORG, "o", "acme", models=("z",))]
    refusal = check_access(scopes, ["m", "m"], NOW)
    assert refusal is not None
    assert (refusal.code, refusal.scope_kind, refusal.scope_name) == ("paused", "team", "eng")
    refusal = check_access([scopes[0], scopes[2]], ["m", "m"], NOW)
    assert refusal is not None
    assert (refusal.code, refusal.scope_kind) == ("model_not_allowed", "org")
    assert check_access([key(), team()], ["m", "m"], NOW) is None


def test_check_access_is_independent_of_limits() -> None:
    full = key("alice", Limit(Metric.REQUESTS, WindowKind.DAY, 0))
    assert check_access([full], ["m", "m"], NOW) is None


# --- counters_for -----------------------------------------------------------------------


def test_counters_for_only_matching_limits_in_scope_timezone() -> None:
    cost = Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD)
    opus = Limit(Metric.REQUESTS, WindowKind.DAY, 5, "opus*")
    hourly = Limit(Metric.TOKENS, WindowKind.HOUR, 1000)
    k = key("alice", cost, opus, timezone="Europe/Berlin")
    t = team("eng", hourly, timezone="Asia/Kolkata")
    apps = counters_for([k, t], ["sonnet-4", "sonnet-4"], NOW)
    assert apps == [
        Applicable(
            k,
            cost,
            "key:id-alice:cost_usd:day:*",
            WindowInstance(at("UTC", 2026, 11, 21, 23), at("UTC", 2026, 11, 22, 23)),
        ),
        Applicable(
            t,
            hourly,
            "team:id-eng:tokens:hour:*",
            WindowInstance(at("UTC", 2026, 11, 22, 13, 30), at("UTC", 2026, 11, 22, 14, 30)),
        ),
    ]
    # the opus limit holds whichever of the asked or routed name matches
    for models in (["opus-4", "x"], ["alias", "opus-4"]):
        apps = counters_for([k, t], models, NOW)
        assert [a.limit for a in apps] == [cost, opus, hourly]
        assert apps[1].counter == "key:id-alice:requests:day:opus*"
    assert counters_for([], ["m", "m"], NOW) == []
    assert counters_for([key()], ["m", "m"], NOW) == []


# --- plan_reserve: all or nothing -------------------------------------------------------

BERLIN_DAY = window_at(WindowKind.DAY, NOW, "Europe/Berlin")


def _setup() -> tuple[list[Scope], list[Applicable]]:
    k = key(
        "alice",
        Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD),
        Limit(Metric.REQUESTS, WindowKind.MINUTE, 10),
        Limit(Metric.OUTPUT_TOKENS, WindowKind.DAY, 5000, "opus*"),
        timezone="Europe/Berlin",
    )
    t = team(
        "eng",
        Limit(Metric.COST_USD, WindowKind.MONTH, 50 * USD),
        Limit(Metric.TOKENS, WindowKind.WEEK, 100_000),
    )
    scopes = [k, t]
    return scopes, counters_for(scopes, ["opus-4", "opus-4"], NOW)


WORST = Amounts(requests=1, input_tokens=1000, output_tokens=1000, cost_nano=USD // 10)


def test_reserve_admits_with_one_charge_per_limit() -> None:
    _, apps = _setup()
    assert len(apps) == 5
    decision = plan_reserve(apps, {}, WORST)
    assert isinstance(decision, Admission)
    assert decision.charges == tuple(
        Charge(a.counter, a.window.start, a.limit.metric, WORST.of(a.limit.metric)) for a in apps
    )
    assert [c.amount for c in decision.charges] == [USD // 10, 1, 1000, USD // 10, 2000]


@pytest.mark.parametrize("refusing", range(5))
def test_reserve_is_all_or_nothing(refusing: int) -> None:
    _, apps = _setup()
    states = {(a.counter, a.window.start): CounterState(settled=0, reserved=0) for a in apps}
    bad = apps[refusing]
    # fill the refusing limit so exactly one more unit than fits is asked for
    fill = bad.limit.max - WORST.of(bad.limit.metric) + 1
    states[(bad.counter, bad.window.start)] = CounterState(settled=fill, reserved=0)
    decision = plan_reserve(apps, states, WORST)
    assert isinstance(decision, Refusal)
    assert decision.code == "limit_exceeded"
    assert decision.limit == bad.limit
    assert decision.scope_kind == bad.scope.kind.value
    assert decision.scope_name == bad.scope.name
    assert decision.used == fill
    assert decision.resets_at == bad.window.end
    assert bad.limit.format_amount(fill) in decision.message
    assert f"of {bad.limit.format_amount(bad.limit.max)} used" in decision.message
    assert f'{bad.scope.kind.value} "{bad.scope.name}"' in decision.message
    assert "resets " in decision.message
    assert not hasattr(decision, "charges")


def test_refusal_under_a_cent_shows_every_digit() -> None:
    """Not "$0.00 of $0.01 used, this request may need up to $0.01", which reads as if it
    fits: amounts under a cent keep their digits, so the three differ."""
    k = key("tiny", Limit(Metric.COST_USD, WindowKind.DAY, USD // 100))
    apps = counters_for([k], ["haiku"], NOW)
    states = {(apps[0].counter, apps[0].window.start): CounterState(0, 1_250_000)}
    decision = plan_reserve(apps, states, Amounts(1, 100, 100, 12_500_000))
    assert isinstance(decision, Refusal)
    assert (
        "$0.00 of $0.01 used, $0.00125 held by requests in flight, "
        "this request may need up to $0.0125;" in decision.message
    )


def test_refusal_names_the_first_refusing_limit() -> None:
    _, apps = _setup()
    states = {(a.counter, a.window.start): CounterState(settled=a.limit.max) for a in apps}
    decision = plan_reserve(apps, states, WORST)
    assert isinstance(decision, Refusal)
    assert decision.limit == apps[0].limit


def test_reserved_amounts_count_like_settled_ones() -> None:
    _, apps = _setup()
    first = apps[0]
    states = {(first.counter, first.window.start): CounterState(settled=0, reserved=5 * USD)}
    decision = plan_reserve(apps, states, WORST)
    assert isinstance(decision, Refusal)
    assert decision.limit == first.limit
    assert decision.used == 0  # only settled usage counts as used
    assert "$5.00 held by requests in flight" in decision.message


def test_reserve_ignores_other_window_instances() -> None:
    _, apps = _setup()
    # yesterday's full counters do not matter today
    states = {(a.counter, a.window.start - 86400): CounterState(settled=10**18) for a in apps}
    states |= {("other:counter", a.window.start): CounterState(settled=10**18) for a in apps}
    assert isinstance(plan_reserve(apps, states, WORST), Admission)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("reserved", [0, 7])
def test_exact_fit_is_admitted_one_more_unit_refused(metric: Metric, reserved: int) -> None:
    limit = Limit(metric, WindowKind.DAY, 1000)
    apps = counters_for([key("alice", limit)], ["m", "m"], NOW)
    (app,) = apps
    worst = Amounts(requests=1, input_tokens=200, output_tokens=100, cost_nano=300)
    need = worst.of(metric)
    settled = 1000 - reserved - need
    slot = (app.counter, app.window.start)
    fits = plan_reserve(apps, {slot: CounterState(settled, reserved)}, worst)
    assert isinstance(fits, Admission)
    assert fits.charges == (Charge(app.counter, app.window.start, metric, need),)
    over = plan_reserve(apps, {slot: CounterState(settled + 1, reserved)}, worst)
    assert isinstance(over, Refusal)
    assert over.limit == limit


def test_zero_amounts_fit_a_zero_limit() -> None:
    limit = Limit(Metric.COST_USD, WindowKind.DAY, 0)
    apps = counters_for([key("alice", limit)], ["m", "m"], NOW)
    assert isinstance(plan_reserve(apps, {}, Amounts(requests=1)), Admission)
    assert isinstance(plan_reserve(apps, {}, Amounts(requests=1, cost_nano=1)), Refusal)


def test_per_model_limits_only_apply_to_matching_models() -> None:
    opus = Limit(Metric.REQUESTS, WindowKind.DAY, 5, "opus*")
    k = key("bob", opus)
    full = {(k.counter_id(opus), window_at(WindowKind.DAY, NOW).start): CounterState(settled=5)}
    sonnet = plan_reserve(counters_for([k], ["sonnet-4", "sonnet-4"], NOW), full, WORST)
    assert isinstance(sonnet, Admission)
    assert sonnet.charges == ()
    for models in (["opus-4", "opus-4"], ["fast", "opus-4"], ["opus-4", "other"]):
        refused = plan_reserve(counters_for([k], models, NOW), full, WORST)
        assert isinstance(refused, Refusal)
        assert refused.limit == opus


# --- plan_settle ------------------------------------------------------------------------


def test_settle_releases_the_reservation_and_adds_the_actual() -> None:
    _, apps = _setup()
    admission = plan_reserve(apps, {}, WORST)
    assert isinstance(admission, Admission)
    actual = Amounts(requests=1, input_tokens=900, output_tokens=10, cost_nano=12345)
    deltas = plan_settle(admission.charges, actual)
    assert deltas == [
        CounterDelta(c.counter, c.window_start, -c.amount, actual.of(c.metric))
        for c in admission.charges
    ]
    assert [d.settled for d in deltas] == [12345, 1, 10, 12345, 910]
    assert [d.reserved for d in deltas] == [-(USD // 10), -1, -1000, -(USD // 10), -2000]
    assert plan_settle([], actual) == []


def test_settle_stays_in_the_window_of_admission() -> None:
    limit = Limit(Metric.REQUESTS, WindowKind.MINUTE, 10)
    apps = counters_for([key("alice", limit)], ["m", "m"], NOW)
    admission = plan_reserve(apps, {}, Amounts(requests=1))
    assert isinstance(admission, Admission)
    (delta,) = plan_settle(admission.charges, Amounts(requests=1))
    assert delta.window_start == window_at(WindowKind.MINUTE, NOW).start


# --- refusal messages -------------------------------------------------------------------


def _refuse(scope: Scope, limit: Limit, state: CounterState, worst: Amounts) -> Refusal:
    apps = counters_for([scope], ["opus-4", "opus-4"], NOW)
    app = next(a for a in apps if a.limit == limit)
    decision = plan_reserve(apps, {(app.counter, app.window.start): state}, worst)
    assert isinstance(decision, Refusal)
    return decision


def test_refusal_message_when_budget_is_used_up() -> None:
    limit = Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD)
    refusal = _refuse(
        key("alice", limit, timezone="Europe/Berlin"),
        limit,
        CounterState(settled=5 * USD),
        Amounts(requests=1, cost_nano=1),
    )
    assert refusal.message == (
        'Daily cost limit of key "alice" reached: $5.00 of $5.00 used; '
        "resets 2026-11-23 00:00 Europe/Berlin."
    )
    assert refusal.resets_at == at("Europe/Berlin", 2026, 11, 23)
    assert refusal.to_json() == {
        "code": "limit_exceeded",
        "scope": "key",
        "name": "alice",
        "message": refusal.message,
        "limit": {"metric": "cost_usd", "window": "day", "max": "5"},
        "used": 5 * USD,
        "resets_at": at("Europe/Berlin", 2026, 11, 23),
    }


def test_refusal_message_when_request_would_exceed() -> None:
    limit = Limit(Metric.COST_USD, WindowKind.DAY, 5 * USD)
    refusal = _refuse(
        key("alice", limit, timezone="Europe/Berlin"),
        limit,
        CounterState(settled=4_900_000_000, reserved=50_000_000),
        Amounts(requests=1, cost_nano=100_000_000),
    )
    assert refusal.message == (
        'Daily cost limit of key "alice" would be exceeded: $4.90 of $5.00 used, '
        "$0.05 held by requests in flight, this request may need up to $0.10; "
        "resets 2026-11-23 00:00 Europe/Berlin. "
        "Lower max_tokens or send a shorter request to fit."
    )
    assert refusal.used == 4_900_000_000


def test_refusal_message_of_a_team_token_limit() -> None:
    limit = Limit(Metric.TOKENS, WindowKind.MONTH, 1_000_000)
    refusal = _refuse(
        team("eng", limit),
        limit,
        CounterState(settled=999_000),
        Amounts(requests=1, input_tokens=1500, output_tokens=500),
    )
    assert refusal.message == (
        'Monthly token limit of team "eng" would be exceeded: 999,000 of 1,000,000 used, '
        "this request may need up to 2,000; resets 2026-12-01 00:00 UTC. "
        "Lower max_tokens or send a shorter request to fit."
    )


def test_refusal_message_of_a_per_model_request_limit() -> None:
    limit = Limit(Metric.REQUESTS, WindowKind.DAY, 5, "opus*")
    refusal = _refuse(key("bob", limit), limit, CounterState(settled=5), Amounts(requests=1))
    assert refusal.message == (
        'Daily request limit for models opus* of key "bob" reached: 5 of 5 used; '
        "resets 2026-11-23 00:00 UTC. Models that do not match opus* are not limited by it."
    )
    assert refusal.to_json()["limit"] == {
        "metric": "requests",
        "window": "day",
        "max": 5,
        "model": "opus*",
    }


def test_refusal_message_of_a_total_limit() -> None:
    limit = Limit(Metric.OUTPUT_TOKENS, WindowKind.TOTAL, 10)
    refusal = _refuse(
        Scope(ScopeKind.USER, "u1", "carol", limits=(limit,)),
        limit,
        CounterState(settled=10),
        Amounts(output_tokens=1),
    )
    assert refusal.message == (
        'Total output token limit of user "carol" reached: 10 of 10 used; '
        "resets never (total limit)."
    )
    assert refusal.resets_at == NEVER


def test_refusal_message_of_a_per_minute_limit() -> None:
    limit = Limit(Metric.INPUT_TOKENS, WindowKind.MINUTE, 100)
    refusal = _refuse(
        key("dave", limit, timezone="Asia/Kolkata"),
        limit,
        CounterState(settled=50),
        Amounts(input_tokens=60),
    )
    assert refusal.message == (
        'Per-minute input token limit of key "dave" would be exceeded: 50 of 100 used, '
        "this request may need up to 60; resets 2026-11-22 19:31 Asia/Kolkata."
    )
    assert refusal.is_rate_limit


def test_refusal_to_json_without_limit() -> None:
    refusal = Refusal("paused", "msg", "key", "alice")
    assert refusal.to_json() == {
        "code": "paused",
        "scope": "key",
        "name": "alice",
        "message": "msg",
    }


# --- LimitExceeded ----------------------------------------------------------------------


def _refusal_for(window: WindowKind, now: float) -> Refusal:
    limit = Limit(Metric.REQUESTS, window, 0)
    refusal = plan_reserve(counters_for([key("alice", limit)], ["m", "m"], now), {}, Amounts(1))
    assert isinstance(refusal, Refusal)
    return refusal


@pytest.mark.parametrize(
    "window", [WindowKind.DAY, WindowKind.WEEK, WindowKind.MONTH, WindowKind.TOTAL]
)
def test_budget_refusals_are_402_without_retry(window: WindowKind) -> None:
    refusal = _refusal_for(window, NOW)
    assert not refusal.is_rate_limit
    exc = LimitExceeded(refusal, NOW)
    assert isinstance(exc, CapgateError)
    assert exc.status == 402
    assert exc.kind == "budget_exceeded"
    assert exc.headers == {"x-capgate-refusal": "limit_exceeded", "x-should-retry": "false"}
    assert exc.message == refusal.message == str(exc)
    assert exc.refusal is refusal


@pytest.mark.parametrize(
    ("window", "offset", "retry"),
    [
        (WindowKind.MINUTE, 0, "60"),
        (WindowKind.MINUTE, 15.2, "45"),
        (WindowKind.MINUTE, 59, "1"),
        (WindowKind.MINUTE, 59.9, "1"),
        (WindowKind.HOUR, 0, "3600"),
        (WindowKind.HOUR, 1800.5, "1800"),
        (WindowKind.HOUR, 3599.99, "1"),
    ],
)
def test_rate_limit_refusals_are_429_with_retry_after(
    window: WindowKind, offset: float, retry: str
) -> None:
    start = window_at(window, NOW).start
    now = start + offset
    refusal = _refusal_for(window, now)
    assert refusal.is_rate_limit
    exc = LimitExceeded(refusal, now)
    assert exc.status == 429
    assert exc.kind == "rate_limit_error"
    assert exc.headers == {"x-capgate-refusal": "limit_exceeded", "retry-after": retry}
    assert "x-should-retry" not in exc.headers
    # the class attributes are untouched
    assert LimitExceeded.kind == "budget_exceeded"


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([WindowKind.MINUTE, WindowKind.HOUR]),
    now=st.floats(1.7e9, 1.9e9, allow_nan=False),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kathmandu"]),
)
def test_retry_after_is_seconds_to_reset(window: WindowKind, now: float, tz: str) -> None:
    limit = Limit(Metric.REQUESTS, window, 0)
    apps = counters_for([key("alice", limit, timezone=tz)], ["m", "m"], now)
    refusal = plan_reserve(apps, {}, Amounts(1))
    assert isinstance(refusal, Refusal)
    assert refusal.resets_at is not None
    retry = int(LimitExceeded(refusal, now).headers["retry-after"])
    wait = refusal.resets_at - now
    assert 1 <= retry <= max(1, math.ceil(wait))
    assert retry > wait - 0.001  # at most a millisecond early (see the xfail below)


def test_retry_after_never_before_reset() -> None:
    refusal = _refusal_for(WindowKind.MINUTE, NOW)
    now = refusal.resets_at - 10.0005  # type: ignore[operator]
    retry = int(LimitExceeded(refusal, now).headers["retry-after"])
    assert now + retry >= refusal.resets_at  # type: ignore[operator]


def test_non_limit_refusal_is_402() -> None:
    exc = LimitExceeded(Refusal("paused", "paused!", "key", "alice"), NOW)
    assert exc.status == 402
    assert exc.headers["x-capgate-refusal"] == "paused"


@pytest.mark.parametrize(
    "second",
    [
        Limit(Metric.REQUESTS, WindowKind.DAY, 10),
        Limit(Metric.REQUESTS, WindowKind.DAY, 5, "*"),
    ],
)
def test_one_request_counts_once_per_counter(second: Limit) -> None:
    k = key("alice", Limit(Metric.REQUESTS, WindowKind.DAY, 5), second)
    admission = plan_reserve(counters_for([k], ["m", "m"], NOW), {}, Amounts(requests=1))
    assert isinstance(admission, Admission)
    per_counter: dict[tuple[str, int], int] = defaultdict(int)
    for charge in admission.charges:
        per_counter[(charge.counter, charge.window_start)] += charge.amount
    assert all(amount == 1 for amount in per_counter.values())


# --- THE property: the ledger never overspends -------------------------------------------

MODELS = ["opus-4", "sonnet-4", "haiku-3", "alias"]
GLOBS = [None, "opus*", "sonnet*", "*-4"]
WINDOWS = [
    WindowKind.MINUTE,
    WindowKind.HOUR,
    WindowKind.DAY,
    WindowKind.WEEK,
    WindowKind.MONTH,
    WindowKind.TOTAL,
]
# Metrics that accumulate per window (concurrent limits hold, never accumulate: their own
# test is in tests/test_core_concurrent.py).
MAX_FOR = {
    Metric.REQUESTS: st.integers(0, 6),
    Metric.TOKENS: st.integers(0, 600),
    Metric.INPUT_TOKENS: st.integers(0, 400),
    Metric.OUTPUT_TOKENS: st.integers(0, 400),
    Metric.COST_USD: st.integers(0, 6000),
}


@st.composite
def limit_sets(draw: st.DrawFn) -> tuple[Limit, ...]:
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from(list(MAX_FOR)), st.sampled_from(WINDOWS), st.sampled_from(GLOBS)
            ),
            min_size=1,
            max_size=4,
            unique=True,  # distinct counters within a scope
        )
    )
    return tuple(Limit(m, w, draw(MAX_FOR[m]), g) for m, w, g in shapes)


@st.composite
def scope_sets(draw: st.DrawFn) -> tuple[Scope, ...]:
    kinds = draw(st.lists(st.sampled_from(list(ScopeKind)), min_size=1, max_size=3, unique=True))
    return tuple(
        Scope(
            kind,
            f"{kind.value}-1",
            f"{kind.value} one",
            limits=draw(limit_sets()),
            timezone=draw(
                st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu"])
            ),
        )
        for kind in kinds
    )


WORSTS = st.builds(
    Amounts,
    requests=st.integers(0, 1),
    input_tokens=st.integers(0, 200),
    output_tokens=st.integers(0, 200),
    cost_nano=st.integers(0, 2000),
)

# Start a little before Berlin's and New York's DST changes, so days of 23 and 25 hours
# and month ends are crossed.
STARTS = [
    at("UTC", 2026, 3, 28, 20),
    at("UTC", 2026, 10, 24, 21, 59, 30),
    at("UTC", 2026, 2, 28, 22, 58),
    at("UTC", 2026, 12, 31, 23, 59, 1),
    at("UTC", 2026, 11, 1, 3, 30),
]


@dataclass
class Pending:
    charges: tuple[Charge, ...]
    worst: Amounts


def _within(worst: Amounts) -> st.SearchStrategy[Amounts]:
    return st.builds(
        Amounts,
        requests=st.integers(0, worst.requests),
        input_tokens=st.integers(0, worst.input_tokens),
        output_tokens=st.integers(0, worst.output_tokens),
        cost_nano=st.integers(0, worst.cost_nano),
    )


class Ledger(RuleBasedStateMachine):
    """An in-memory store driven only through counters_for, plan_reserve and plan_settle."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes: tuple[Scope, ...] = ()
        self.now: float = 0
        self.counters: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        self.maxes: dict[str, int] = {}
        self.pending: dict[int, Pending] = {}
        self.actual_sum: dict[tuple[str, int], int] = defaultdict(int)
        self.next_id = 0
        self.admitted = 0
        self.refused = 0

    @initialize(scopes=scope_sets(), start=st.sampled_from(STARTS))
    def setup(self, scopes: tuple[Scope, ...], start: int) -> None:
        self.scopes = scopes
        self.now = start
        for scope in scopes:
            for limit in scope.limits:
                counter = scope.counter_id(limit)
                assert counter not in self.maxes
                self.maxes[counter] = limit.max

    def _states(self) -> dict[tuple[str, int], CounterState]:
        return {slot: CounterState(s, r) for slot, (s, r) in self.counters.items()}

    @rule(worst=WORSTS, asked=st.sampled_from(MODELS), routed=st.sampled_from(MODELS))
    def reserve(self, worst: Amounts, asked: str, routed: str) -> None:
        models = [asked, routed]
        apps = counters_for(self.scopes, models, self.now)
        expected = [
            (s, lim)
            for s in self.scopes
            for lim in s.limits
            if any(lim.applies_to(m) for m in models)
        ]
        assert [(a.scope, a.limit) for a in apps] == expected
        for a in apps:
            assert a.counter == a.scope.counter_id(a.limit)
            assert a.window == window_at(a.limit.window, self.now, a.scope.timezone)
            assert a.window.start <= self.now < a.window.end
        decision = plan_reserve(apps, self._states(), worst)
        over = [
            a
            for a in apps
            if sum(self.counters.get((a.counter, a.window.start), [0, 0]))
            + worst.of(a.limit.metric)
            > a.limit.max
        ]
        if over:
            assert isinstance(decision, Refusal)
            first = over[0]
            settled = self.counters.get((first.counter, first.window.start), [0, 0])[0]
            assert decision.code == "limit_exceeded"
            assert decision.limit == first.limit
            assert decision.scope_kind == first.scope.kind.value
            assert decision.scope_name == first.scope.name
            assert decision.used == settled
            assert decision.resets_at == first.window.end
            self.refused += 1
            return  # nothing changes
        assert isinstance(decision, Admission)
        assert len(decision.charges) == len(apps)
        for charge, a in zip(decision.charges, apps, strict=True):
            assert charge == Charge(
                a.counter, a.window.start, a.limit.metric, worst.of(a.limit.metric)
            )
            self.counters[(charge.counter, charge.window_start)][1] += charge.amount
        self.pending[self.next_id] = Pending(decision.charges, worst)
        self.next_id += 1
        self.admitted += 1

    def _settle(self, rid: int, actual: Amounts) -> None:
        pending = self.pending.pop(rid)
        deltas = plan_settle(pending.charges, actual)
        assert len(deltas) == len(pending.charges)
        for delta, charge in zip(deltas, pending.charges, strict=True):
            assert delta.counter == charge.counter
            assert delta.window_start == charge.window_start  # the window of admission
            assert delta.reserved == -charge.amount
            assert delta.settled == actual.of(charge.metric)
            slot = self.counters[(delta.counter, delta.window_start)]
            slot[0] += delta.settled
            slot[1] += delta.reserved
            self.actual_sum[(delta.counter, delta.window_start)] += actual.of(charge.metric)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.pending)), label="reservation")
        actual = data.draw(_within(self.pending[rid].worst), label="actual")
        self._settle(rid, actual)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def lease_expires(self, data: st.DataObject) -> None:
        """A dead process's reservation: settled in full, as the lease sweeper does."""
        rid = data.draw(st.sampled_from(sorted(self.pending)), label="expired")
        self._settle(rid, self.pending[rid].worst)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def settle_all(self, data: st.DataObject) -> None:
        order = data.draw(st.permutations(sorted(self.pending)), label="order")
        for rid in order:
            self._settle(rid, data.draw(_within(self.pending[rid].worst), label="actual"))
        self._check_quiescent()

    @rule(
        seconds=st.sampled_from([0, 0.5, 1, 59, 60, 61, 3599, 3600, 82800, 86400, 90000])
        | st.integers(0, 3 * 86400)
    )
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(data=st.data())
    def to_boundary(self, data: st.DataObject) -> None:
        """Jump to exactly the end of one of the current windows (or just before it)."""
        ends = sorted(
            {
                window_at(lim.window, self.now, s.timezone).end
                for s in self.scopes
                for lim in s.limits
                if lim.window is not WindowKind.TOTAL
            }
        )
        if not ends:
            return
        end = data.draw(st.sampled_from(ends), label="end")
        self.now = end - data.draw(st.sampled_from([0, 0.001, 1]), label="before")

    @invariant()
    def never_over_max(self) -> None:
        outstanding: dict[tuple[str, int], int] = defaultdict(int)
        for pending in self.pending.values():
            for charge in pending.charges:
                outstanding[(charge.counter, charge.window_start)] += charge.amount
        for slot, (settled, reserved) in self.counters.items():
            counter, _ = slot
            assert reserved >= 0
            assert settled >= 0
            assert settled + reserved <= self.maxes[counter], (slot, settled, reserved)
            assert reserved == outstanding[slot]
            assert settled == self.actual_sum[slot]

    def _check_quiescent(self) -> None:
        assert not self.pending
        for slot, (settled, reserved) in self.counters.items():
            assert reserved == 0
            assert settled == self.actual_sum[slot]
            assert settled <= self.maxes[slot[0]]

    def teardown(self) -> None:
        # settle whatever is still in flight (alternately in full and as nothing)
        for rid in sorted(self.pending):
            worst = self.pending[rid].worst
            self._settle(rid, worst if rid % 2 else Amounts())
        self._check_quiescent()


Ledger.TestCase.settings = settings(max_examples=120, stateful_step_count=35, deadline=None)
TestLedger = Ledger.TestCase
