"""What admitting a request to one target holds: its price, its worst case, the ledger's
facts, and the same request re-admitted to another target (a fallback at another price).

No I/O: the gateway admits a request with these, and a `Call` re-admits it when it moves
to a fallback, without reaching back into the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from capgate.core.engine import Amounts
from capgate.core.estimate import Hidden
from capgate.core.frozen import quick_init
from capgate.core.money import MAX_AMOUNT, Price
from capgate.errors import InvalidRequest
from capgate.pricing import PricingTable
from capgate.routing import Route
from capgate.store.base import RequestInfo

_FREE = Price(0, 0, 0, 0, 0)  # for unpriced models when the admin allows them


@quick_init
@dataclass(frozen=True, slots=True)
class Admission:
    """A request admitted to one target: what the ledger records, its price, the worst
    case held for it, and what re-admitting it elsewhere needs."""

    info: RequestInfo
    price: Price
    worst: Amounts
    max_field: str  # the body field that holds the output bound
    input_bound: int
    output: int  # the output bound, all choices together
    hidden: Hidden  # input and fees beyond the body (server state, tools)
    byte_bound: int  # the input bound from the body alone


class Pricer:
    """Prices and credit weights by model, from the pricing table an admin may change
    while the server runs."""

    def __init__(self, pricing: PricingTable, allow_unpriced: bool) -> None:
        self._pricing = pricing
        self._allow_unpriced = allow_unpriced

    def price(self, model: str) -> Price:
        """The model's price; raises InvalidRequest for an unpriced one (unless allowed)."""
        price = self._pricing.lookup(model)
        if price is not None:
            return price
        if self._allow_unpriced:
            return _FREE
        raise InvalidRequest(
            f'Model "{model}" has no known price, so capgate cannot hold a budget for it. '
            "An admin can price it under `pricing:` in the capgate config.",
            headers={"x-capgate-refusal": "unpriced_model"},
        )

    def credits_for(self, model: str) -> int:
        return self._pricing.credits_for(model)

    def readmit(self, base: Admission, route: Route, hold: int | None) -> Admission:
        """The same request, admitted to another target: its price, worst case, ledger
        info. `hold` is the key's unbounded hold. Raises InvalidRequest for an unpriced
        target."""
        price = self.price(route.upstream_model)
        bound, output, hidden = base.input_bound, base.output, base.hidden
        held = None
        if hidden.context is not None or hidden.unbounded is not None:  # this model's own
            # context window, or the key's hold
            bound, held = hidden_bound(hidden, base.byte_bound, price, route.upstream_model, hold)
        credits = self.credits_for(route.upstream_model)
        cost = price.worst_cost_nano(bound, output, hidden.fee_nano) if held is None else held
        worst = worst_case(bound, output, cost, credits)
        info = replace(base.info, provider=route.provider.name, upstream_model=route.upstream_model)
        return replace(base, info=info, price=price, worst=worst, input_bound=bound)


def hidden_bound(
    hidden: Hidden, byte_bound: int, price: Price, model: str, hold: int | None
) -> tuple[int, int | None]:
    """The input bound once what the provider adds is counted (the model's context window
    bounds it), and the key's stated hold when nothing bounds the request (None: the
    worst case is computed). Raises InvalidRequest when nothing bounds it and the key
    states no hold."""
    window = price.context_window
    if hidden.unbounded is not None or (hidden.context is not None and window is None):
        if hold is not None:
            return max(byte_bound, window or 0), hold
        if hidden.unbounded is not None:
            raise InvalidRequest(
                f"capgate cannot hold a budget for this request: {hidden.unbounded}. "
                "(An admin can give the key an unbounded_hold_usd to hold instead.)"
            )
        raise InvalidRequest(
            f"capgate cannot bound the input of this request: it uses {hidden.context}, and "
            f'the context window of model "{model}" is unknown. An admin can set '
            f"`context_window` for it under `pricing:` in the capgate config."
        )
    if hidden.context is None or window is None:
        return byte_bound, None
    return max(byte_bound, window), None


def worst_case(bound: int, output: int, cost_nano: int, credits: int) -> Amounts:
    """The worst case to hold, refused when an amount is past what the store can count
    (an absurd max_tokens times a dear price)."""
    if max(bound, output, cost_nano) > MAX_AMOUNT:
        raise InvalidRequest(
            "The worst case of this request is too large to hold a budget for "
            f"({output:,} output tokens, {bound:,} input tokens); lower max_tokens."
        )
    return Amounts(1, bound, output, cost_nano, credits)


def thinking_budget(body: dict[str, Any]) -> int | None:
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int):
            return budget
    return None


def clamp_output(body: dict[str, Any], field: str, max_output: int) -> None:
    """Lower the output bound to `max_output`, and an extended-thinking budget with it
    (the API wants budget_tokens < max_tokens)."""
    body[field] = max_output
    budget = thinking_budget(body)
    if budget is not None and budget >= max_output:
        body["thinking"] = {**body["thinking"], "budget_tokens": max_output - 1}
