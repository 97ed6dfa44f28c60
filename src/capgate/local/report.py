"""Entries summed into report rows: by local day, week (from Sunday, or a chosen day),
month, or session; a period report per project (`by_project`).
Pure: the caller gives entries, prices (a `Costing`) and the zone; nothing is read here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from capgate.local.costing import Costing
from capgate.local.records import EPOCH, MICROSECOND, SYNTHETIC, Entry

PERIODS = ("daily", "weekly", "monthly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
QUARTER = timedelta(minutes=15)
SUNDAY = 6  # `date.weekday()`'s number: weeks start on Sunday unless asked (as ccusage's)


@dataclass(slots=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0  # of the priced entries
    entries: int = 0
    unpriced: set[str] = field(default_factory=set)  # models without a price

    @property
    def cache_creation_tokens(self) -> int:
        return self.cache_write_tokens + self.cache_write_1h_tokens

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_tokens
            + self.cache_read_tokens
        )

    def merge(self, other: Totals) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cache_write_1h_tokens += other.cache_write_1h_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_nano += other.cost_nano
        self.entries += other.entries
        self.unpriced |= other.unpriced

    def add(self, entry: Entry, cost: int | None) -> None:
        self.input_tokens += entry.input_tokens
        self.output_tokens += entry.output_tokens
        self.cache_write_tokens += entry.cache_write_tokens
        self.cache_write_1h_tokens += entry.cache_write_1h_tokens
        self.cache_read_tokens += entry.cache_read_tokens
        self.reasoning_tokens += entry.reasoning_tokens
        self.entries += 1
        if cost is None:
            self.unpriced.add(entry.model)
        else:
            self.cost_nano += cost


@dataclass(slots=True)
class Row:
    key: str  # the period ('2026-12-04', '2026-11-29', '2026-12') or the session id
    totals: Totals = field(default_factory=Totals)
    models: dict[str, Totals] = field(default_factory=dict)  # per model, synthetic left out
    agents: set[str] = field(default_factory=set)
    project: str = ""
    first: datetime | None = None
    last: datetime | None = None

    def add(self, entry: Entry, cost: int | None) -> None:
        self.totals.add(entry, cost)
        self.agents.add(entry.agent)
        if entry.model != SYNTHETIC:
            self.models.setdefault(entry.model, Totals()).add(entry, cost)
        self.project = self.project or entry.project
        if self.first is None or entry.timestamp < self.first:
            self.first = entry.timestamp
        if self.last is None or entry.timestamp > self.last:
            self.last = entry.timestamp


@dataclass(frozen=True, slots=True)
class Query:
    zone: tzinfo
    since: date | None = None
    until: date | None = None
    agent: str = "all"  # claude | codex | all
    project: str | None = None
    week_start: int = SUNDAY  # the first day of a week, as `date.weekday()` numbers it

    def local_date(self, when: datetime) -> date:
        return when.astimezone(self.zone).date()

    def keeps_day(self, day: date) -> bool:
        return (self.since is None or day >= self.since) and (
            self.until is None or day <= self.until
        )

    def keeps(self, entry: Entry) -> bool:
        if self.agent != "all" and entry.agent != self.agent:
            return False
        return self.project is None or entry.project == self.project


def period_key(kind: str, day: date, week_start: int = SUNDAY) -> str:
    if kind == "daily":
        return day.isoformat()
    if kind == "weekly":  # the week's first day
        return (day - timedelta(days=(day.weekday() - week_start) % 7)).isoformat()
    if kind == "monthly":
        return day.isoformat()[:7]
    raise ValueError(f"not a period: {kind}")


def by_period(
    kind: str, entries: Iterable[Entry], costing: Costing, query: Query
) -> tuple[list[Row], Row]:
    """Rows in date order, and the totals row."""
    start = query.week_start
    return _group(entries, costing, query, lambda day: period_key(kind, day, start))


def by_project(
    kind: str, entries: Iterable[Entry], costing: Costing, query: Query
) -> tuple[dict[str, list[Row]], Row]:
    """`by_period` for each project apart (projects in name order), and the totals row
    of them all."""
    parts: dict[str, list[Entry]] = {}
    for entry in entries:
        parts.setdefault(entry.project, []).append(entry)
    projects: dict[str, list[Row]] = {}
    total = Row(key="total")
    for name in sorted(parts):
        rows, part = by_period(kind, parts[name], costing, query)
        if rows:
            projects[name] = rows
            _merge(total, part)
    return projects, total


def by_session(
    entries: Iterable[Entry], costing: Costing, query: Query, order: str = "desc"
) -> tuple[list[Row], Row]:
    """Rows by session, dearest first (`order` "asc": cheapest first, as ccusage's
    `--order`; ties by session id); `--since/--until` test the session's last day."""
    rows, _ = _group(entries, costing, query, None)
    rows = [r for r in rows if r.last is not None and query.keeps_day(query.local_date(r.last))]
    sign = 1 if order == "asc" else -1
    rows.sort(key=lambda r: (sign * r.totals.cost_nano, r.key))
    total = Row(key="total")
    for row in rows:
        _merge(total, row)
    return rows, total


def _group(
    entries: Iterable[Entry],
    costing: Costing,
    query: Query,
    day_key: Callable[[date], str] | None,
) -> tuple[list[Row], Row]:
    """Rows keyed by `day_key(local date)` (only the days `query` keeps), or by session
    (`day_key` None: every day)."""
    # Summed per (row, model, agent) first, in plain lists (this runs once per answer),
    # then made rows: the same sums as adding each entry to its row, its model and the total.
    sums: dict[tuple[str, str, str], list[int]] = {}
    unpriced: set[tuple[str, str, str]] = set()
    spans: dict[str, list[Any]] = {}  # row key -> [project, first, last] (micros)
    # Per UTC quarter hour (today every zone's offset is whole quarters): (row key or None
    # when the day is filtered out; "" by session; `MIXED` when the quarter's offset is
    # not whole quarters, as an old local mean time's: then per entry).
    quarters: dict[int, str | None] = {}
    agent, project = query.agent, query.project
    for entry in entries:
        if (agent != "all" and entry.agent != agent) or (
            project is not None and entry.project != project
        ):
            continue
        when = entry.micros
        quarter = when // 900_000_000
        key = quarters.get(quarter, "?")
        if key == "?":
            key = quarters[quarter] = _quarter_key(query, quarter, entry.timestamp, day_key)
        if key is MIXED:
            key = _day_key(query, entry.timestamp, day_key)
        if key is None:
            continue
        key = key or entry.session
        cost = costing.cost_nano(entry)
        group = (key, entry.model, entry.agent)
        acc = sums.get(group)
        if acc is None:
            acc = sums[group] = [0, 0, 0, 0, 0, 0, 0, 0]
        acc[0] += entry.input_tokens
        acc[1] += entry.output_tokens
        acc[2] += entry.cache_write_tokens
        acc[3] += entry.cache_write_1h_tokens
        acc[4] += entry.cache_read_tokens
        acc[5] += entry.reasoning_tokens
        acc[7] += 1
        if cost is None:
            unpriced.add(group)
        else:
            acc[6] += cost
        span = spans.get(key)
        if span is None:
            spans[key] = [entry.project, when, when]
        else:
            span[0] = span[0] or entry.project
            if when < span[1]:
                span[1] = when
            if when > span[2]:
                span[2] = when
    rows: dict[str, Row] = {}
    total = Row(key="total")
    for group in sorted(sums):
        key, model, agent = group
        inp, out, write, write_1h, read, reasoning, cost, count = sums[group]
        part = Totals(inp, out, write, write_1h, read, reasoning, cost, count)
        if group in unpriced:
            part.unpriced.add(model)
        row = rows.get(key)
        if row is None:
            project, first, last = spans[key]
            row = rows[key] = Row(key=key, project=project, first=EPOCH + first * MICROSECOND,
                                  last=EPOCH + last * MICROSECOND)  # fmt: skip
        for into in (row, total):
            into.totals.merge(part)
            into.agents.add(agent)
            if model != SYNTHETIC:
                into.models.setdefault(model, Totals()).merge(part)
    if rows:
        total.first = min(r.first for r in rows.values() if r.first is not None)
        total.last = max(r.last for r in rows.values() if r.last is not None)
    return [rows[k] for k in sorted(rows)], total


MIXED = "\0mixed"  # a quarter hour whose entries' local days may differ


def _quarter_key(
    query: Query, quarter: int, when: datetime, day_key: Callable[[date], str] | None
) -> str | None:
    """The row key of every entry in UTC quarter hour `quarter` (`when` is one of them),
    or `MIXED`: the zone's offset over the quarter is not one whole number of quarters
    (a midnight may fall inside it)."""
    if day_key is None:
        return ""
    start = EPOCH + quarter * QUARTER
    offsets = {start.astimezone(query.zone).utcoffset(),
               (start + QUARTER - MICROSECOND).astimezone(query.zone).utcoffset()}  # fmt: skip
    offset = offsets.pop()
    if offsets or offset is None or offset % QUARTER:
        return MIXED
    return _day_key(query, when, day_key)


def _day_key(query: Query, when: datetime, day_key: Callable[[date], str] | None) -> str | None:
    if day_key is None:
        return ""
    day = query.local_date(when)
    return day_key(day) if query.keeps_day(day) else None


def _merge(into: Row, row: Row) -> None:
    into.totals.merge(row.totals)
    into.agents |= row.agents
    for model, sub in row.models.items():
        into.models.setdefault(model, Totals()).merge(sub)


def parse_day(text: str) -> date:
    """A `--since` / `--until` day: YYYY-MM-DD or YYYYMMDD. ValueError otherwise."""
    digits = text.replace("-", "")
    if len(digits) != 8:
        raise ValueError(text)
    return datetime.strptime(digits, "%Y%m%d").date()
