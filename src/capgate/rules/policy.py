"""The routing-rule step of a request: its signals, the budgets a rule reads, the first
rule that holds. The gateway calls it between parsing a request and planning its
targets, and only when some rule is configured (an empty rule set costs one truth test).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capgate.core.limits import Scope, ScopeKind
from capgate.errors import CapgateError
from capgate.rules.budget import NOTHING, BudgetView, Known
from capgate.rules.language import Rule, RuleSet
from capgate.rules.signals import RequestSignals

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


class RulePolicy:
    def __init__(
        self,
        rules: RuleSet,
        budgets: BudgetView | None,
        default_max_tokens: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self._budgets = budgets
        self._default_max_tokens = default_max_tokens
        self._clock = clock

    def __bool__(self) -> bool:
        return bool(self.rules)

    async def decide(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        model: str,
        max_tokens: int | None,
        stream: bool,
        key: Scope,
        above: Sequence[Scope],
        input_bytes: int,
        input_tokens: int,
    ) -> Rule | None:
        """The first rule that holds for this request, or None. `above`: the user, team
        and org scopes the key counts against (the store's cache)."""
        team = key.extra.get("team")
        org = next((s.name for s in above if s.kind is ScopeKind.ORG), None)
        signals = RequestSignals(
            body, headers, model=model, key=key.name, user=key.extra.get("user"), team=team,
            org=org, input_bytes=input_bytes, input_tokens=input_tokens,
            max_tokens=self._default_max_tokens if max_tokens is None else max_tokens,
            stream=stream, now=self._clock(),
        )  # fmt: skip
        known: Known = NOTHING
        kinds = self.rules.budget_scopes
        if kinds and self._budgets is not None:
            known = await self._budgets.of((key, *above), kinds)
        return self.rules.first(signals, known)
