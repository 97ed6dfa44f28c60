"""How the CLI shows scopes, limits and amounts: exact dollars (`format_usd`), a dash for
what is not set (never Python's `None`), a limit's models and a scope's schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from capgate.core.limits import format_usd, usd_to_nano
from capgate.core.windows import format_reset

DASH = "-"


def text(value: Any) -> str:
    """A value for people: a dash for nothing."""
    return DASH if value is None or value == "" else str(value)


def amount(metric: str, value: Any) -> str:
    """A limit's amount: exact dollars for cost ('$0.0125'), a count otherwise."""
    if value is None:
        return DASH
    if metric == "cost_usd":
        return format_usd(usd_to_nano(value))
    return f"{int(value):,}"


def limit_label(row: dict[str, Any]) -> str:
    """'cost_usd/day', 'requests/day for claude-opus*'."""
    return f"{row['metric']}/{row['window']}" + (f" for {row['model']}" if row.get("model") else "")


def limit_spec(row: dict[str, Any]) -> str:
    """A limit in the CLI's own syntax, as --limit takes it: 'claude-opus*:requests=5/day'."""
    top = row["max"]
    prefix = f"{row['model']}:" if row.get("model") else ""
    return f"{prefix}{row['metric']}={top}/{row['window']}"


def usage_cell(row: dict[str, Any]) -> str:
    """One limit in a list: 'requests=1/9 per day', 'cost_usd=$0.0125/$5.00 per day for
    claude-opus*'."""
    used, top = amount(row["metric"], row["used"]), amount(row["metric"], row["max"])
    model = f" for {row['model']}" if row.get("model") else ""
    return f"{row['metric']}={used}/{top} per {row['window']}{model}"


def schedule_text(entry: dict[str, Any]) -> str:
    """A schedule as --schedule takes it: 'claude-opus* mon-fri 09:00-18:00 Europe/Berlin'."""
    return f"{entry['model']} {entry['days']} {entry['start']}-{entry['end']} {entry['tz']}"


def listing(*headers: str) -> Table:
    """A table whose cells wrap (fold) rather than end in '…': a cut amount would read as
    another amount."""
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def usage_table(usage: list[dict[str, Any]]) -> Table | str:
    if not usage:
        return "no limits"
    table = Table(box=None)
    for header in ("limit", "used", "reserved", "max", "left", "resets"):
        table.add_column(header, overflow="fold")
    for row in usage:
        metric = row["metric"]
        table.add_row(
            limit_label(row),
            amount(metric, row["used"]),
            amount(metric, row["reserved"]),
            amount(metric, row["max"]),
            amount(metric, row["remaining"]),
            reset(row.get("resets_at")),
        )
    return table


def reset(ts: int | None) -> str:
    if ts is None:
        return DASH
    if ts >= 2**61:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def reset_in(ts: float | None, timezone: str, zone_name: bool = True) -> str:
    """When a window resets, in the person's timezone: '2026-12-06 00:00 Europe/Berlin'
    (without the zone's name when a header gives it)."""
    if ts is None:
        return "never"
    try:
        shown = format_reset(int(ts), timezone)
    except ValueError:  # a timezone this machine does not know: UTC then
        shown = format_reset(int(ts))
    return shown if zone_name or shown.startswith("never") else shown.rsplit(" ", 1)[0]


def print_settings(console: Console, scope: dict[str, Any]) -> None:
    """What a scope lets through: its limits, models and schedules, one per line, as
    the options that set them spell them."""
    limits = [limit_spec(row) for row in scope.get("limits", [])]
    console.print(f"limits: {', '.join(limits) or 'none'}", markup=False, highlight=False)
    models = ", ".join(scope.get("models") or []) or "all"
    console.print(f"models: {models}", markup=False, highlight=False)
    schedules = [schedule_text(s) for s in scope.get("schedules") or []]
    if schedules:
        console.print(f"schedules: {'; '.join(schedules)}", markup=False, highlight=False)


def print_warnings(scope: dict[str, Any]) -> None:
    """The admin API's warnings about a created or changed scope, on stderr."""
    errors = Console(stderr=True)
    for warning in scope.get("warnings") or []:
        errors.print(Text.assemble(("warning: ", "yellow"), warning))


def print_items(items: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...]) -> None:
    """A list from the admin API: as JSON, or one line of `name=value` pairs each."""
    if as_json:
        print(json.dumps(items, indent=2))
        return
    for item in items:
        print("  ".join(f"{c}={item.get(c)}" for c in columns if item.get(c) is not None))
