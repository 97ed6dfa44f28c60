"""An entry's cost from capgate's price table: the same `Price.cost_nano` the gateway
charges (nano-dollars, rounded up per answer). 1-hour cache writes at their own price.
A model the table does not know has no cost (None), and reports name it as unpriced."""

from __future__ import annotations

from typing import cast

from capgate.core.money import Usage
from capgate.local.records import SYNTHETIC, Entry
from capgate.pricing import PricingTable


class Costing:
    def __init__(self, table: PricingTable):
        self._table = table

    def cost_nano(self, entry: Entry) -> int | None:
        """Nano-dollars, 0 for Claude Code's synthetic lines, None when not priced."""
        if entry.model == SYNTHETIC:
            return 0
        price = self._table.lookup(entry.model)
        if price is None:
            return None
        # `cost_nano` reads the five token counts of a `Usage`, which an `Entry` has under
        # the same names: no Usage made per answer (a third of a report's arithmetic).
        return price.cost_nano(cast(Usage, entry))
