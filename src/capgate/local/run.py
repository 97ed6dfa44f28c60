"""`capgate local`'s commands without their command line: the typer app (`capgate.cli.local`)
and the quick start (`capgate.local.argv`, which skips importing typer and pydantic) both
call these. rich is imported only to print a table. A bad option value raises `LocalError`,
whose message each caller prints its way."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from capgate.local import render
from capgate.local.blocks import Block, blocks, burn
from capgate.local.cache import default_path
from capgate.local.costing import Costing
from capgate.local.files import LocationError, summed, system_zone
from capgate.local.records import Entry, Skipped
from capgate.local.report import (
    SUNDAY,
    WEEKDAYS,
    Query,
    Row,
    by_period,
    by_project,
    by_session,
    parse_day,
)
from capgate.pricing import PricingTable

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


class LocalError(Exception):
    """A bad option value or setting: the message for the user."""


def _fail(message: str) -> NoReturn:
    raise LocalError(message)


def _console() -> Console:
    from rich.console import Console

    return Console()


def daily(json_out: bool = False, since: str | None = None, until: str | None = None,
          timezone: str | None = None, project: str | None = None, agent: str = "all",
          breakdown: bool = False, no_cache: bool = False, order: str = "asc",
          instances: bool = False) -> None:  # fmt: skip
    query = _query(since, until, timezone, project, agent)
    _report("daily", json_out, query, breakdown, not no_cache, _order(order), instances)


def weekly(json_out: bool = False, since: str | None = None, until: str | None = None,
           timezone: str | None = None, project: str | None = None, agent: str = "all",
           breakdown: bool = False, no_cache: bool = False, order: str = "asc",
           start_of_week: str = "sunday") -> None:  # fmt: skip
    day = start_of_week.strip().lower()
    if day not in WEEKDAYS:
        _fail("--start-of-week: a day of the week, like sunday or monday")
    query = _query(since, until, timezone, project, agent, WEEKDAYS.index(day))
    _report("weekly", json_out, query, breakdown, not no_cache, _order(order))


def monthly(json_out: bool = False, since: str | None = None, until: str | None = None,
            timezone: str | None = None, project: str | None = None, agent: str = "all",
            breakdown: bool = False, no_cache: bool = False, order: str = "asc") -> None:  # fmt: skip
    query = _query(since, until, timezone, project, agent)
    _report("monthly", json_out, query, breakdown, not no_cache, _order(order))


def session(json_out: bool = False, since: str | None = None, until: str | None = None,
            timezone: str | None = None, project: str | None = None, agent: str = "all",
            breakdown: bool = False, no_cache: bool = False, order: str = "desc") -> None:  # fmt: skip
    query = _query(since, until, timezone, project, agent)
    _report("session", json_out, query, breakdown, not no_cache, _order(order, "session"))


def blocks_report(json_out: bool = False, timezone: str | None = None, order: str = "asc",
                  live: bool = False, refresh: float = 5.0, stop_after: int = 0) -> None:  # fmt: skip
    zone, order = _zone(timezone), _order(order)
    if live:
        _live(zone, refresh, stop_after)
        return
    items, now, skipped = _blocks()
    if order == "desc":
        items.reverse()
    if json_out:
        data = [render.block_json(b, burn(b, now)) for b in items]
        print(json.dumps({"blocks": data, "skipped": render.skipped_json(skipped)}, indent=2))
        return
    console = _console()
    console.print(render.blocks_table(console, items, zone))
    active = next((b for b in items if b.active), None)
    if active is not None:
        console.print(render.live_panel(active, burn(active, now), now, zone))


def _zone(name: str | None) -> tzinfo:
    if not name:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        _fail(f"--timezone: unknown time zone {name!r} (an IANA name like Europe/Berlin)")


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError:
        _fail(f"{option}: a date like 2026-12-04 or 20261204")


def _load(agent: str, use_cache: bool = True) -> tuple[list[Entry], Skipped]:
    return _summed(agent, use_cache, list)


def _summed(
    agent: str, use_cache: bool, sum_up: Callable[[Iterable[Entry]], T]
) -> tuple[T, Skipped]:
    """`files.summed` with this machine's files and cache."""
    if agent not in ("claude", "codex", "all"):
        _fail("--agent: one of claude, codex, all")
    path = default_path(os.environ, Path.home()) if use_cache else None
    try:
        return summed(os.environ, Path.home(), agent, path, sum_up, os.cpu_count() or 1)
    except LocationError as exc:
        _fail(str(exc))


def _costing() -> Costing:
    return Costing(PricingTable.load())


def _report(kind: str, json_out: bool, query: Query, breakdown: bool, cache: bool,
            order: str = "asc", instances: bool = False) -> None:  # fmt: skip
    costing = _costing()
    if kind == "session":
        (rows, total), skipped = _summed(
            query.agent, cache, lambda entries: by_session(entries, costing, query, order)
        )
        if json_out:
            print(json.dumps(render.session_json(rows, total, skipped), indent=2))
            return
        rows, title = render.session_titles(rows), "session"
    elif instances:
        (projects, total), skipped = _summed(
            query.agent, cache, lambda entries: by_project(kind, entries, costing, query)
        )
        for project_rows in projects.values():
            _sort(project_rows, order)
        if json_out:
            print(json.dumps(render.projects_json(kind, projects, total, skipped), indent=2))
            return
        _print_projects(kind, projects, total, skipped, breakdown)
        return
    else:
        (rows, total), skipped = _summed(
            query.agent, cache, lambda entries: by_period(kind, entries, costing, query)
        )
        _sort(rows, order)
        if json_out:
            print(json.dumps(render.period_json(kind, rows, total, skipped), indent=2))
            return
        title = render.PERIOD_FIELD[kind]
    console = _console()
    table = render.report_table(console, title, rows, total, breakdown)
    console.print(table)
    note = render.footer(total, skipped)
    if note.plain:
        console.print(note)


def _sort(rows: list[Row], order: str) -> None:
    """Rows come oldest first; `--order desc`: newest first."""
    if order == "desc":
        rows.reverse()


def _print_projects(kind: str, projects: dict[str, list[Row]], total: Row, skipped: Skipped,
                    breakdown: bool) -> None:  # fmt: skip
    from rich.text import Text

    console = _console()
    for name, rows in projects.items():
        console.print(Text(f"project {name}", style="bold"))
        subtotal = Row(key="total")
        for row in rows:
            subtotal.totals.merge(row.totals)
        console.print(render.report_table(console, render.PERIOD_FIELD[kind], rows, subtotal,
                                          breakdown))  # fmt: skip
        console.print()
    console.print(Text(f"all projects: {render.cents(total.totals.cost_nano)}", style="bold"))
    note = render.footer(total, skipped)
    if note.plain:
        console.print(note)


def _query(since: str | None, until: str | None, timezone: str | None, project: str | None,
           agent: str, week_start: int = SUNDAY) -> Query:  # fmt: skip
    return Query(
        zone=_zone(timezone),
        since=_day(since, "--since"),
        until=_day(until, "--until"),
        agent=agent,
        project=project,
        week_start=week_start,
    )


def _order(value: str, kind: str = "period") -> str:
    if value not in ("asc", "desc"):
        if kind == "session":
            _fail("--order: desc (dearest first) or asc (cheapest first)")
        _fail("--order: asc (oldest first) or desc (newest first)")
    return value


def _blocks() -> tuple[list[Block], datetime, Skipped]:
    entries, skipped = _load("claude")
    now = datetime.now(UTC)
    return blocks(entries, _costing(), now), now, skipped


def _live(zone: tzinfo, refresh: float, stop_after: int) -> None:
    from rich.live import Live

    updates = 0
    with Live(render.live_panel(None, None, datetime.now(UTC), zone), auto_refresh=False) as view:
        try:
            while True:
                items, now, _ = _blocks()
                active = next((b for b in items if b.active), None)
                view.update(render.live_panel(active, burn(active, now) if active else None,
                                              now, zone), refresh=True)  # fmt: skip
                updates += 1
                if stop_after and updates >= stop_after:
                    return
                time.sleep(refresh)
        except KeyboardInterrupt:
            return
