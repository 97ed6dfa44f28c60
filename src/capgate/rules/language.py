"""The routing rule language: rules, their conditions and actions, first match. Pure.

A rule is a `name`, a `when` (conditions that must all hold; none: always) and a `then`
(one action). The rules are tried in order and the first whose conditions all hold
decides; the others are not looked at. There is no code in a rule: conditions are
globs (fnmatch), integer comparisons, booleans, a time window and a budget share, so a
rule cannot run anything or take long whatever it says.

    - name: background-to-haiku
      when: {model: "claude-opus-*", max_tokens: "<= 1024", tools: false}
      then: {model: claude-haiku-4-5}

The rules are read and checked by `capgate.rules.parse` (every mistake found at load,
named with its rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any, Protocol

from capgate.core.limits import Metric, ScopeKind
from capgate.core.schedules import Schedule


class Signals(Protocol):
    """What a rule can look at of one request (`capgate.rules.signals.RequestSignals`)."""

    model: str
    key: str
    user: str | None
    team: str | None
    org: str | None
    input_bytes: int
    input_tokens: int
    max_tokens: int
    stream: bool
    now: float

    @property
    def tools(self) -> bool: ...
    @property
    def images(self) -> bool: ...
    @property
    def thinking(self) -> bool: ...
    def header(self, name: str) -> str | None: ...


class Budgets(Protocol):
    """What is left of the request's scopes' limits (`capgate.rules.budget`)."""

    def left(self, kind: ScopeKind) -> Sequence[Left] | None:
        """The limits of the request's scope of `kind` (None: it has no such scope, or
        nothing was read of it yet)."""


class Left(Protocol):
    """A limit and what is left of it (`store.records.LimitUsage` is one)."""

    @property
    def remaining(self) -> int: ...
    @property
    def limit(self) -> Any: ...  # core.limits.Limit


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    value: int

    def holds(self, amount: int) -> bool:
        v = self.value
        return {
            "<": amount < v, "<=": amount <= v, ">": amount > v, ">=": amount >= v,
            "==": amount == v, "!=": amount != v,
        }[self.op]  # fmt: skip

    def __str__(self) -> str:
        return f"{self.op} {self.value}"


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    """Holds when a limit of the request's scope of `scope` on `metric` (of `window`, when
    given) that applies to the asked model has less than `share` of it (or less than
    `amount`, in the metric's unit) left. A scope without such a limit never runs low."""

    scope: ScopeKind
    metric: Metric
    share: Fraction | None
    amount: int | None
    window: str | None = None  # only limits of this window (day, month, ...)

    def holds(self, limits: Sequence[Left], model: str) -> bool:
        for left in limits:
            limit = left.limit
            if limit.metric is not self.metric or limit.max <= 0 or not limit.applies_to(model):
                continue
            if self.window is not None and limit.window.value != self.window:
                continue
            if self.share is not None and left.remaining < self.share * limit.max:
                return True
            if self.amount is not None and left.remaining < self.amount:
                return True
        return False


@dataclass(frozen=True, slots=True)
class When:
    models: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    orgs: tuple[str, ...] = ()
    input_tokens: Comparison | None = None
    input_bytes: Comparison | None = None
    max_tokens: Comparison | None = None
    tools: bool | None = None
    images: bool | None = None
    thinking: bool | None = None
    stream: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (name, glob of the value)
    time: Schedule | None = None
    budget_left: BudgetLeft | None = None

    def holds(self, s: Signals, budgets: Budgets) -> bool:
        """Cheapest first; the budget last."""
        if self.models and not _any(s.model, self.models):
            return False
        if self.keys and not _any(s.key, self.keys):
            return False
        for names, value in ((self.users, s.user), (self.teams, s.team), (self.orgs, s.org)):
            if names and (value is None or not _any(value, names)):
                return False
        for comparison, amount in (
            (self.max_tokens, s.max_tokens),
            (self.input_bytes, s.input_bytes),
            (self.input_tokens, s.input_tokens),
        ):
            if comparison is not None and not comparison.holds(amount):
                return False
        if self.stream is not None and s.stream is not self.stream:
            return False
        if self.tools is not None and s.tools is not self.tools:
            return False
        if self.thinking is not None and s.thinking is not self.thinking:
            return False
        if self.images is not None and s.images is not self.images:
            return False
        for name, glob in self.headers:
            value = s.header(name)
            if value is None or not fnmatchcase(value, glob):
                return False
        if self.time is not None and not self.time.is_open(s.now):
            return False
        if self.budget_left is not None:
            limits = budgets.left(self.budget_left.scope)
            if limits is None or not self.budget_left.holds(limits, s.model):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Then:
    """Exactly one of: send to `model` (a route name), refuse with `refuse` (`status`),
    or add `fallback` routes after the plan's own targets."""

    model: str | None = None
    refuse: str | None = None
    status: int = 403
    fallback: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "model" if self.model else "refuse" if self.refuse else "fallback"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    when: When
    then: Then


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    # Which scopes' budgets some rule reads (nothing is read for the others).
    budget_scopes: frozenset[ScopeKind] = field(default=frozenset())

    def __bool__(self) -> bool:
        return bool(self.rules)

    def first(self, signals: Signals, budgets: Budgets) -> Rule | None:
        """The first rule whose conditions all hold, or None."""
        for rule in self.rules:
            if rule.when.holds(signals, budgets):
                return rule
        return None


def _any(value: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, glob) for glob in globs)
