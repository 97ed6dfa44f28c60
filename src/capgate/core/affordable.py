"""Whether a scope's limits can pay for even one request of the clients it is made for.

A limit smaller than one request's worst case refuses every request, however idle the
key: a $0.05/day key looks generous but cannot pay one Claude Code request, whose body
alone is ~60-85 KB (25 tools, the system prompt). The gateway reserves the input bound of
the body plus at least `min_clamped_tokens` output tokens (it lowers max_tokens no
further), so that is the smallest reservation such a request can make. This module
computes it with the gateway's own functions and says which limits fall short.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from capgate.core.estimate import input_bound
from capgate.core.limits import Limit, Metric, Scope
from capgate.core.money import Price

# The smallest body Claude Code sends (its first request of a session: tools and system
# prompt, one short user message); later requests only grow.
CLAUDE_CODE_BODY_BYTES = 60_000
_ONE_MESSAGE = {"messages": [{"role": "user", "content": "hi"}]}


def claude_code_input_bound() -> int:
    """The input tokens the gateway reserves for the smallest Claude Code request."""
    return input_bound(_ONE_MESSAGE, CLAUDE_CODE_BODY_BYTES)


def smallest_reservation(metric: Metric, price: Price | None, min_output: int) -> int | None:
    """What one Claude Code request reserves at least, in `metric`'s unit (None: unknown,
    e.g. cost on an unpriced model)."""
    bound = claude_code_input_bound()
    if metric is Metric.COST_USD:
        return None if price is None else price.worst_cost_nano(bound, min_output)
    return {
        Metric.TOKENS: bound + min_output,
        Metric.INPUT_TOKENS: bound,
        Metric.OUTPUT_TOKENS: min_output,
    }.get(metric)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A limit that cannot pay one request: it needs `need`, on `model` at its cheapest."""

    limit: Limit
    need: int
    model: str | None

    def message(self, min_output: int) -> str:
        what = f"{self.limit.metric.value}/{self.limit.window.value}" + (
            f" limit for models {self.limit.model}" if self.limit.model else " limit"
        )
        fmt = self.limit.format_amount
        where = f" on {self.model}, the cheapest allowed model," if self.model else ""
        return (
            f"the {what} of {fmt(self.limit.max)} cannot pay one Claude Code request: "
            f"its smallest one ({CLAUDE_CODE_BODY_BYTES // 1000} KB of input and "
            f"{min_output:,} output tokens) reserves {fmt(self.need)}{where} so every such "
            f"request is refused; raise the limit to at least {fmt(self.need)}"
        )


def shortfalls(scope: Scope, prices: Mapping[str, Price], min_output: int) -> list[Shortfall]:
    """The limits of `scope` that cannot pay one Claude Code request on any model it may
    use. `prices` maps model names to their prices (the pricing table)."""
    out = []
    for limit in scope.limits:
        if limit.metric is Metric.COST_USD:
            costs = [
                (smallest_reservation(limit.metric, price, min_output) or 0, model)
                for model, price in prices.items()
                if scope.allows_model(model) and limit.applies_to(model)
            ]
            if not costs:
                continue  # no priced model under this limit: nothing to compare with
            need, model = min(costs)
            if need > limit.max:
                out.append(Shortfall(limit, need, model))
            continue
        need_count = smallest_reservation(limit.metric, None, min_output)
        if need_count is not None and need_count > limit.max:
            out.append(Shortfall(limit, need_count, None))
    return out
