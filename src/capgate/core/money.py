"""Prices and cost arithmetic, exact in integers.

Prices are held in pico-dollars per token (USD per million tokens x 10**6), so any price
with up to six decimals per million tokens is exact. A request's cost is summed in
pico-dollars and rounded *up* once to whole nano-dollars: the ledger never undercharges
and is off by less than one nano-dollar per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from capgate.core.frozen import quick_init

PICO_PER_NANO = 1000


def per_million_to_pico(value: Any) -> int:
    try:
        dec = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a price: {value!r}") from None
    pico = dec * 10**6
    if not dec.is_finite() or dec < 0 or pico != pico.to_integral_value():
        raise ValueError(f"price {value!r} must be >= 0 with at most 6 decimals")
    return int(pico)


@quick_init
@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, as the provider reported them (Anthropic's split)."""

    input_tokens: int = 0  # not served from or written to a cache
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute cache writes (OpenAI: none)
    cache_write_1h_tokens: int = 0

    @property
    def total_input(self) -> int:
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
        )


@dataclass(frozen=True, slots=True)
class Price:
    """Pico-dollars per token, and the model's context window (in tokens; None when not
    known): the most input any request can make it read, its own body or not."""

    input: int
    output: int
    cache_write: int
    cache_write_1h: int
    cache_read: int
    context_window: int | None = None

    @classmethod
    def from_per_million(cls, data: dict[str, Any]) -> Price:
        cache_write = data.get("cache_write", data["input"])  # OpenAI: writes cost input
        return cls(
            input=per_million_to_pico(data["input"]),
            output=per_million_to_pico(data["output"]),
            cache_write=per_million_to_pico(cache_write),
            cache_write_1h=per_million_to_pico(data.get("cache_write_1h", cache_write)),
            cache_read=per_million_to_pico(data.get("cache_read", data["input"])),
            context_window=_context_window(data.get("context_window")),
        )

    def cost_nano(self, usage: Usage) -> int:
        pico = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
            + usage.cache_write_1h_tokens * self.cache_write_1h
        )
        return -(-pico // PICO_PER_NANO)

    @property
    def dearest_input(self) -> int:
        return max(self.input, self.cache_write, self.cache_write_1h, self.cache_read)

    def worst_cost_nano(self, input_tokens: int, output_tokens: int, fee_nano: int = 0) -> int:
        """An upper bound: every input token at the dearest input-side rate, plus fees."""
        pico = input_tokens * self.dearest_input + output_tokens * self.output
        return -(-pico // PICO_PER_NANO) + fee_nano


# The store keeps amounts in 64-bit signed integers (SQLite INTEGER): no single amount
# may come near that, so sums of many stay far from it too.
MAX_AMOUNT = 2**62


def _context_window(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 2**31:
        raise ValueError(f"context_window {value!r} must be a positive whole number of tokens")
    return value
