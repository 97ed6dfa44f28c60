"""The limit engine: decides reservations and settlements. Pure, no I/O.

The protocol (SPEC 2.1), in two atomic steps the store carries out:

1. `plan_reserve`: given the counters of every limit that applies, admit the request only
   if its worst case fits under *all* of them (`settled + reserved + worst <= max`), and say
   which amounts to add to `reserved`; otherwise name the limit that refuses it.
2. `plan_settle`: when the answer is known, move each reservation from `reserved` to the
   actual amount in `settled`.

The store reads the counters `counters_for` names, calls these functions and writes the
result inside one transaction, so no other request can slip between check and record.
What does not depend on the counters it may work out before it takes its lock:
`counters_for`, `check_access`, `plan_charges` (what admitting the worst case checks and
charges: `plan_reserve` then only compares) and `plan_settle`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from capgate.core.frozen import quick_init
from capgate.core.limits import Limit, Metric, Scope, Status
from capgate.core.money import Usage
from capgate.core.schedules import closed_schedules
from capgate.core.windows import (
    WindowInstance,
    adjective,
    format_reset,
    is_rate_window,
    window_at,
)

# The members read on every request, as module names: on Python 3.11 `Metric.X` goes
# through `EnumType.__getattr__` (~70 ns a look-up; 3.12 dropped it), and `Amounts.of`
# alone compares a metric up to six times, for every limit of every request.
_REQUESTS = Metric.REQUESTS
_TOKENS = Metric.TOKENS
_INPUT_TOKENS = Metric.INPUT_TOKENS
_OUTPUT_TOKENS = Metric.OUTPUT_TOKENS
_COST_USD = Metric.COST_USD
_CONCURRENT = Metric.CONCURRENT
_CREDITS = Metric.CREDITS
_ACTIVE = Status.ACTIVE


@quick_init
@dataclass(frozen=True, slots=True)
class Amounts:
    """What one request counts (or may count, for a reservation) against each metric."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0
    credits: int = 0  # known before the request: the model's weight

    def of(self, metric: Metric) -> int:
        if metric is _REQUESTS or metric is _CONCURRENT:
            return self.requests
        if metric is _INPUT_TOKENS:
            return self.input_tokens
        if metric is _OUTPUT_TOKENS:
            return self.output_tokens
        if metric is _TOKENS:
            return self.input_tokens + self.output_tokens
        if metric is _CREDITS:
            return self.credits
        return self.cost_nano

    @classmethod
    def of_usage(cls, usage: Usage, cost_nano: int, credits: int = 0, requests: int = 1) -> Amounts:
        return cls(requests, usage.total_input, usage.output_tokens, cost_nano, credits)


@quick_init
@dataclass(frozen=True, slots=True)
class CounterState:
    settled: int = 0
    reserved: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class Applicable:
    """One limit of one scope, in the window instance that contains `now`."""

    scope: Scope
    limit: Limit
    counter: str
    window: WindowInstance


@quick_init
@dataclass(frozen=True, slots=True)
class Charge:
    """An amount reserved on one counter instance; settlement releases exactly this."""

    counter: str
    window_start: int
    metric: Metric
    amount: int


class CounterDelta(NamedTuple):
    """What settling moves on one counter instance. A tuple: the store adds it as is
    (`(counter, window_start, reserved, settled)`), with no copy per request."""

    counter: str
    window_start: int
    reserved: int
    settled: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, with everything a person needs to act on it."""

    code: str  # limit_exceeded | paused | revoked | expired | model_not_allowed
    message: str
    scope_kind: str
    scope_name: str
    limit: Limit | None = None
    used: int = 0
    resets_at: int | None = None

    @property
    def is_rate_limit(self) -> bool:
        """A short window or a concurrency cap: retrying soon can succeed."""
        if self.limit is None:
            return False
        return is_rate_window(self.limit.window) or self.limit.metric is _CONCURRENT

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "scope": self.scope_kind,
            "name": self.scope_name,
            "message": self.message,
        }
        if self.limit is not None:
            out["limit"] = self.limit.to_json()
            out["used"] = self.used
            out["resets_at"] = self.resets_at
        return out


@quick_init
@dataclass(frozen=True, slots=True)
class Admission:
    charges: tuple[Charge, ...]
    max_output: int | None = None  # set when the output bound was clamped to fit


def counters_for(scopes: Iterable[Scope], models: Sequence[str], now: float) -> list[Applicable]:
    """Every limit of `scopes` that applies now to any of `models` (the model asked for and
    the model it is routed to: a cap on "opus*" holds whatever alias reaches Opus), with
    the counter instance it uses."""
    out = []
    for scope in scopes:
        for limit in scope.limits:
            if any(limit.applies_to(model) for model in models):
                window = window_at(limit.window, now, scope.timezone)
                out.append(Applicable(scope, limit, scope.counter_id(limit), window))
    return out


class CountersFor:
    """`counters_for`, remembered per (scopes, models) for as long as its answer holds.

    For the same scope objects (a store's key cache hands out the same ones until its
    configuration is reloaded) and models, `counters_for` changes only when one of its
    window instances ends: the answer is kept for instants inside all of them, so a
    request skips the glob matching, window look-ups and counter names (exactly the
    same answer, as a tuple). The memo holds the scopes it was computed for, so their
    ids cannot be reused by other objects while an entry is kept."""

    __slots__ = ("_memo",)

    _LIMIT = 4096  # entries; (key, provider, model) combinations in use are far fewer

    def __init__(self) -> None:
        self._memo: dict[
            tuple[object, ...], tuple[tuple[Scope, ...], float, float, tuple[Applicable, ...]]
        ] = {}

    def __call__(
        self, scopes: Sequence[Scope], models: Sequence[str], now: float
    ) -> tuple[Applicable, ...]:
        return self.spanning(scopes, models, now)[0]

    def spanning(
        self, scopes: Sequence[Scope], models: Sequence[str], now: float
    ) -> tuple[tuple[Applicable, ...], float, float]:
        """The answer with the instants it holds for: [start, end), inside all of its
        window instances."""
        memo_key = (*map(id, scopes), *models)
        kept = self._memo.get(memo_key)
        if kept is not None:
            _held, start, end, applicable = kept
            if start <= now < end:
                return applicable, start, end
        applicable = tuple(counters_for(scopes, models, now))
        start = max((a.window.start for a in applicable), default=-math.inf)
        end = min((a.window.end for a in applicable), default=math.inf)
        if len(self._memo) >= self._LIMIT:
            self._memo.clear()
        self._memo[memo_key] = (tuple(scopes), start, end, applicable)
        return applicable, start, end


def check_standing(scope: Scope, now: float) -> Refusal | None:
    """Whether `scope` may be used at all: not revoked, paused or expired."""
    if scope.status is _ACTIVE and (scope.expires_at is None or now < scope.expires_at):
        return None  # every request: no text built
    label = f'{scope.kind.value} "{scope.name}"'
    if scope.status is Status.REVOKED:
        return Refusal("revoked", f"The {label} has been revoked.", scope.kind.value, scope.name)
    if scope.status is Status.PAUSED:
        msg = f"The {label} is paused by an administrator; ask them to resume it."
        return Refusal("paused", msg, scope.kind.value, scope.name)
    if scope.expires_at is not None and now >= scope.expires_at:
        return Refusal("expired", f"The {label} has expired.", scope.kind.value, scope.name)
    return None


def check_access(scopes: Sequence[Scope], models: Sequence[str], now: float) -> Refusal | None:
    """Status, expiry and allowed models, checked before any budget. A model is allowed
    when the name asked for or the model it is routed to matches an allowed glob."""
    model = models[0]
    for scope in scopes:
        standing = check_standing(scope, now)
        if standing is not None:
            return standing
        # Most scopes allow every model and have no schedule: no call or generator then.
        if scope.models and not any(scope.allows_model(m) for m in models):
            label = f'{scope.kind.value} "{scope.name}"'
            allowed = ", ".join(scope.models)
            msg = f'Model "{model}" is not allowed for {label} (allowed: {allowed}).'
            return Refusal("model_not_allowed", msg, scope.kind.value, scope.name)
        closed = closed_schedules(scope.schedules, models, now) if scope.schedules else None
        if closed:
            label = f'{scope.kind.value} "{scope.name}"'
            when = "; ".join(s.describe() for s in closed)
            msg = (
                f'Model "{model}" may be used by {label} only {when}; '
                "try again then, or use another model."
            )
            return Refusal("outside_schedule", msg, scope.kind.value, scope.name)
    return None


@quick_init
@dataclass(frozen=True, slots=True)
class OutputFlex:
    """How the worst case shrinks when the output bound (`max_tokens`) is lowered: lets
    `plan_reserve` clamp a request to what the remaining budget pays for instead of
    refusing it. Costs in pico-dollars, as `Price` holds them."""

    requested: int  # max_tokens as asked (per choice)
    minimum: int  # below this the answer would be useless: refuse instead
    choices: int  # OpenAI `n`: each choice may produce max_tokens
    input_tokens: int  # the input bound
    input_pico: int  # the input bound's worst cost
    output_pico: int  # per output token
    credits: int = 0  # the request's credits, whatever its max_tokens

    def amounts(self, max_output: int) -> Amounts:
        output = max_output * self.choices
        pico = self.input_pico + output * self.output_pico
        return Amounts(1, self.input_tokens, output, -(-pico // 1000), self.credits)

    def most_output(self, metric: Metric, room: int) -> int:
        """The largest max_tokens that fits in `room` of `metric`, or -1 if none does."""
        if metric is _OUTPUT_TOKENS:
            return room // self.choices
        if metric is _TOKENS:
            return (room - self.input_tokens) // self.choices if room >= self.input_tokens else -1
        if metric is _COST_USD:
            spare = room * 1000 - self.input_pico
            if spare < 0:
                return -1
            return (
                spare // (self.choices * self.output_pico) if self.output_pico else self.requested
            )
        if metric is _CREDITS:
            return self.requested if self.credits <= room else -1
        needed = 1 if metric in (_REQUESTS, _CONCURRENT) else self.input_tokens
        return self.requested if needed <= room else -1


# What admitting a worst case checks and charges, known before the counters are
# (`plan_charges`), so a store can work it out before it takes its lock: per limit
# ((counter, window_start), amount, max), and the charges made when every check passes.
# A plain tuple: made on every request, a NamedTuple costs several times more.
Check = tuple[tuple[str, int], int, int]
Planned = tuple[tuple[Check, ...], tuple[Charge, ...]]


def plan_charges(applicable: Sequence[Applicable], worst: Amounts) -> Planned:
    checks = []
    charges: dict[tuple[str, int], Charge] = {}
    for app in applicable:
        limit, start = app.limit, app.window.start
        instance = (app.counter, start)
        amount = worst.of(limit.metric)
        checks.append((instance, amount, limit.max))
        if instance not in charges:  # two limits on one counter: check both, charge once
            charges[instance] = Charge(app.counter, start, limit.metric, amount)
    return tuple(checks), tuple(charges.values())


def plan_reserve(
    applicable: Sequence[Applicable],
    states: Mapping[tuple[str, int], CounterState],
    worst: Amounts,
    flex: OutputFlex | None = None,
    planned: Planned | None = None,  # `plan_charges(applicable, worst)`, if worked out before
) -> Admission | Refusal:
    """Admit if the worst case fits under every applicable limit; all or nothing.

    With `flex`, a request whose full worst case does not fit is admitted with a lower
    output bound (`Admission.max_output`) when that bound still reaches `flex.minimum`;
    the refusal then names the limit that binds hardest. Admitted without a lower bound,
    the charges are `planned`'s."""
    if planned is None:
        planned = plan_charges(applicable, worst)
    first = _reserve(applicable, states, planned)
    if isinstance(first, Admission) or flex is None:
        return first
    most, binding = flex.requested, first
    for app in applicable:
        state = states.get((app.counter, app.window.start), _EMPTY)
        room = app.limit.max - state.settled - state.reserved
        fits = flex.most_output(app.limit.metric, room)
        if fits < most:
            most = fits
            if fits < flex.minimum:
                binding = _limit_refusal(
                    app, state, flex.amounts(flex.minimum).of(app.limit.metric)
                )
    if most < flex.minimum:
        return binding
    clamped = _reserve(applicable, states, plan_charges(applicable, flex.amounts(most)))
    if isinstance(clamped, Admission):
        return Admission(clamped.charges, most)
    return clamped


def _reserve(
    applicable: Sequence[Applicable],
    states: Mapping[tuple[str, int], CounterState],
    planned: Planned,
) -> Admission | Refusal:
    checks, charges = planned
    for i, (instance, amount, most) in enumerate(checks):
        state = states.get(instance, _EMPTY)
        if state.settled + state.reserved + amount > most:
            return _limit_refusal(applicable[i], state, amount)
    return Admission(charges)


@quick_init
@dataclass(frozen=True, slots=True)
class Headroom:
    """What was left of the tightest limit when a request was admitted (before its own
    reservation): shown to clients in response headers."""

    scope: Scope
    limit: Limit
    remaining: int
    resets_at: int


def tightest(
    applicable: Sequence[Applicable], states: Mapping[tuple[str, int], CounterState]
) -> Headroom | None:
    """The limit with the smallest share left (ties: the first)."""
    best: Headroom | None = None
    best_share = 2.0
    for app in applicable:
        state = states.get((app.counter, app.window.start), _EMPTY)
        remaining = max(0, app.limit.max - state.settled - state.reserved)
        share = remaining / app.limit.max if app.limit.max else 0.0
        if share < best_share:
            best_share = share
            best = Headroom(app.scope, app.limit, remaining, app.window.resets_at)
    return best


def plan_settle(charges: Iterable[Charge], actual: Amounts) -> list[CounterDelta]:
    """Release each reservation and record what was really used, in the same window
    instance the reservation was made in (a request that spans midnight counts in the day
    it was admitted)."""
    return [
        CounterDelta(
            c.counter,
            c.window_start,
            -c.amount,
            0 if c.metric is _CONCURRENT else actual.of(c.metric),  # held, never kept
        )
        for c in charges
    ]


_EMPTY = CounterState()


def _limit_refusal(app: Applicable, state: CounterState, amount: int) -> Refusal:
    limit, scope = app.limit, app.scope
    if limit.metric is _CONCURRENT:
        what = "Concurrent request limit" + (f" for models {limit.model}" if limit.model else "")
        message = (
            f'{what} of {scope.kind.value} "{scope.name}" reached: {state.reserved:,} of '
            f"{limit.max:,} requests in flight; retry when one finishes."
        )
        return Refusal(
            "limit_exceeded", message, scope.kind.value, scope.name, limit, state.reserved, None
        )
    fmt = limit.format_amount
    what = f"{adjective(limit.window)} {limit.metric.noun} limit"
    if limit.model is not None:
        what += f" for models {limit.model}"
    label = f'{scope.kind.value} "{scope.name}"'
    used = state.settled
    resets = format_reset(app.window.resets_at, scope.timezone)
    if used >= limit.max:
        detail = f"{what} of {label} reached: {fmt(used)} of {fmt(limit.max)} used"
    else:
        detail = f"{what} of {label} would be exceeded: {fmt(used)} of {fmt(limit.max)} used"
        if state.reserved:
            detail += f", {fmt(state.reserved)} held by requests in flight"
        detail += f", this request may need up to {fmt(amount)}"
    if app.window.frees_at is not None:  # rolling: no reset, usage ages out bucket by bucket
        message = f"{detail}; the oldest of it leaves the window at {resets}."
    else:
        message = f"{detail}; resets {resets}."
    if limit.model is not None:
        message += f" Models that do not match {limit.model} are not limited by it."
    if limit.metric in (_COST_USD, _TOKENS, _OUTPUT_TOKENS) and used < limit.max:
        message += " Lower max_tokens or send a shorter request to fit."
    return Refusal(
        "limit_exceeded", message, scope.kind.value, scope.name, limit, used, app.window.resets_at
    )
