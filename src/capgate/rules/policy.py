"""The routing-rule step of a request (a route policy, `http/extensions.py`): its signals,
the budgets a rule reads, the first rule that holds, and the plan it leads to. The
gateway calls it after the router made the plan of the asked model and before anything
is priced or held; only when `rules:` is not empty (otherwise it is not installed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from capgate.core.limits import Scope, ScopeKind
from capgate.errors import CapgateError
from capgate.providers.base import Endpoint
from capgate.routing import Plan, Router
from capgate.rules.budget import NOTHING, BudgetView, Known
from capgate.rules.language import Rule, RuleSet
from capgate.rules.signals import RequestSignals
from capgate.store.records import LimitUsage

RULE_HEADER = "x-capgate-rule"


class RuleRefused(CapgateError):
    """A rule's `refuse`: 403 (permission_error) or 429 (rate_limit_error); clients are
    told not to retry (the rule would refuse again)."""

    retryable = False

    def __init__(self, rule: Rule) -> None:
        super().__init__(
            rule.then.refuse or "",
            headers={
                RULE_HEADER: rule.name,
                "x-capgate-refusal": "rule",
                "x-should-retry": "false",
            },
        )
        self.status = rule.then.status
        self.kind = "rate_limit_error" if self.status == 429 else "permission_error"
        self.rule = rule


class Facts(Protocol):
    """What the gateway knows of a request (`http.extensions.CallFacts`)."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def model(self) -> str: ...
    @property
    def key(self) -> Scope: ...
    @property
    def stream(self) -> bool: ...
    @property
    def input_bound(self) -> int: ...
    @property
    def input_bytes(self) -> int: ...
    @property
    def max_output(self) -> int | None: ...
    @property
    def body(self) -> Mapping[str, Any]: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def now(self) -> float: ...


class RulePolicy:
    def __init__(
        self,
        rules: RuleSet,
        router: Router,
        scopes_above: Callable[[Scope], Sequence[Scope]],
        budgets: BudgetView | None,
        default_max_tokens: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self._router = router
        self._scopes_above = scopes_above  # the store's cache: user, team, org of a key
        self._budgets = budgets
        self._default_max_tokens = default_max_tokens
        self._clock = clock

    async def route(self, facts: Facts, plan: Plan) -> Plan:
        """The plan the first rule that holds leads to (`plan` when none holds); raises
        RuleRefused for a `refuse` rule."""
        rule = await self.decide(facts)
        if rule is None:
            return plan
        then = rule.then
        if then.refuse is not None:
            raise RuleRefused(rule)
        if then.model is not None:
            return replace(self._router.plan(then.model, facts.endpoint), rule=rule.name)
        routes = list(plan.routes)
        for model in then.fallback:
            for route in self._router.plan(model, facts.endpoint).routes:
                if not any(route.same_target(r) for r in routes):
                    routes.append(route)
        return replace(plan, routes=tuple(routes), rule=rule.name)

    async def decide(self, facts: Facts) -> Rule | None:
        """The first rule that holds for this request, or None."""
        key = facts.key
        above = self._scopes_above(key)
        org = next((s.name for s in above if s.kind is ScopeKind.ORG), None)
        max_tokens = facts.max_output
        signals = RequestSignals(
            facts.body, facts.headers, model=facts.model, key=key.name,
            user=key.extra.get("user"), team=key.extra.get("team"), org=org,
            input_bytes=facts.input_bytes, input_tokens=facts.input_bound,
            max_tokens=self._default_max_tokens if max_tokens is None else max_tokens,
            stream=facts.stream, now=facts.now,
        )  # fmt: skip
        known: Known = NOTHING
        kinds = self.rules.budget_scopes
        if kinds and self._budgets is not None:
            known = await self._budgets.of((key, *above), kinds)
        return self.rules.first(signals, known)


class ScopeSource(Protocol):
    """What rules read of the store (`store.base.Store` is one)."""

    def scopes_above(self, key: Scope) -> list[Scope]: ...
    async def counters(self, scope: Scope, now: float) -> list[LimitUsage]: ...


def rule_policies(
    rules: RuleSet, router: Router, store: ScopeSource, default_max_tokens: int
) -> tuple[RulePolicy, ...]:
    """The gateway's route policies for `rules`: none when there are no rules (the
    request path then has no rule step at all). `store`: its `scopes_above` (the key
    cache) and, when a rule reads budgets, its `counters`."""
    if not rules:
        return ()
    budgets = BudgetView(store.counters) if rules.budget_scopes else None
    return (RulePolicy(rules, router, store.scopes_above, budgets, default_max_tokens),)
