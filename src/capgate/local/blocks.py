"""5-hour blocks as Claude's usage limits count them (ccusage's rules): Claude entries in
time order; a block starts at its first entry floored to the UTC hour and lasts 5 hours;
an entry more than 5 hours after the block's start or after the previous entry opens a
new block, with a gap block between when the pause was longer than 5 hours. Pure: `now`
is an argument."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from capgate.local.costing import Costing
from capgate.local.records import SYNTHETIC, Entry
from capgate.local.report import Totals

LENGTH = timedelta(hours=5)


@dataclass(slots=True)
class Block:
    start: datetime
    end: datetime
    gap: bool = False
    totals: Totals = field(default_factory=Totals)
    models: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None  # the actual end: the last entry
    active: bool = False

    @property
    def id(self) -> str:
        return ("gap-" if self.gap else "") + iso(self.start)

    def add(self, entry: Entry, cost: int | None) -> None:
        self.totals.add(entry, cost)
        if entry.model != SYNTHETIC:
            self.models.add(entry.model)
        self.first = self.first or entry.timestamp
        self.last = entry.timestamp


@dataclass(frozen=True, slots=True)
class Burn:
    """The active block's pace since its first entry, and where it ends at that pace."""

    tokens_per_minute: float
    cost_nano_per_hour: int
    remaining_minutes: int
    projected_tokens: int
    projected_cost_nano: int


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def blocks(
    entries: Iterable[Entry], costing: Costing, now: datetime, length: timedelta = LENGTH
) -> list[Block]:
    ordered = sorted((e for e in entries if e.agent == "claude"), key=lambda e: e.micros)
    out: list[Block] = []
    current: Block | None = None
    for entry in ordered:
        at = entry.timestamp
        if current is not None and current.last is not None:
            if at - current.last > length:
                out.append(Block(start=current.last + length, end=at, gap=True))
                current = None
            elif at - current.start > length:
                current = None
        if current is None:
            start = at.replace(minute=0, second=0, microsecond=0)
            current = Block(start=start, end=start + length)
            out.append(current)
        current.add(entry, costing.cost_nano(entry))
    for block in out:
        last = block.last
        block.active = (
            not block.gap and last is not None and now - last < length and now < block.end
        )
    return out


def burn(block: Block, now: datetime) -> Burn | None:
    """The pace of an active block (None for others, or with no time elapsed yet)."""
    if not block.active or block.first is None or block.last is None:
        return None
    minutes = (block.last - block.first).total_seconds() / 60
    if minutes <= 0:
        return None
    tokens = block.totals.total_tokens
    per_minute = tokens / minutes
    cost_per_minute = block.totals.cost_nano / minutes
    remaining = max(0, int((block.end - now).total_seconds() // 60))
    return Burn(
        tokens_per_minute=per_minute,
        cost_nano_per_hour=round(cost_per_minute * 60),
        remaining_minutes=remaining,
        projected_tokens=tokens + round(per_minute * remaining),
        projected_cost_nano=block.totals.cost_nano + round(cost_per_minute * remaining),
    )
