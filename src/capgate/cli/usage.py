"""`capgate usage`: spend and tokens summed by key, user, team, model or day, and what the
response cache saved (its hits, and what they would have cost upstream)."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from capgate.cli.client import AdminClient, fail
from capgate.cli.render import text
from capgate.core.limits import format_usd, usd_to_nano

COLUMNS = (
    "requests",
    "refused",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "cache_hits",
    "saved_usd",
)
OLDER_SERVER = {"cache_hits": 0, "saved_usd": "0"}  # what a server without the cache lacks


def usage(
    by: Annotated[
        str, typer.Option("--by", help="key | user | team | model | provider | day")
    ] = "key",
    since: Annotated[str | None, typer.Option(help="from this date/time (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="up to this date/time (ISO 8601)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    url: Annotated[
        str | None, typer.Option("--url", help="capgate server (env CAPGATE_URL)")
    ] = None,
) -> None:
    """Show usage and exact cost, grouped."""
    if fmt not in ("table", "csv", "json"):
        fail("--format: one of table, csv, json")
    params = {"group_by": by}
    if since:
        params["from"] = since
    if until:
        params["to"] = until
    items = AdminClient(url).call("GET", "/admin/usage", params=params)["items"]
    if fmt == "json":
        print(json.dumps(items, indent=2))
        return
    # A server older than the cache's columns (a rolling upgrade) has none: nothing saved.
    items = [{**OLDER_SERVER, **item} for item in items]
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow((by, *COLUMNS))
        for item in items:
            writer.writerow([item[by], *(item[c] for c in COLUMNS)])
    else:
        console = Console()
        console.print(_table(by, items, console), markup=False, highlight=False)


# Short headers, so that the table fits 80 columns (csv and json keep the full names).
HEADERS = {
    "requests": "reqs",
    "refused": "refused",
    "errors": "errors",
    "input_tokens": "in",
    "output_tokens": "out",
    "cache_read_tokens": "c.read",
    "cache_write_tokens": "c.write",
    "cost_usd": "cost",
    "cache_hits": "hits",
    "saved_usd": "saved",
}


def _table(by: str, items: list[dict[str, Any]], console: Console) -> Table:
    """Exact counts when they fit the terminal; else counts as 12.3k / 4.6M (the cost
    always exact; csv and json have every count exact)."""
    table = _build(by, items, compact=False)
    if Measurement.get(console, console.options.update_width(10**6), table).maximum > console.width:
        table = _build(by, items, compact=True)
    return table


def _build(by: str, items: list[dict[str, Any]], *, compact: bool) -> Table:
    table = Table(box=None, pad_edge=False, collapse_padding=True)
    longest = max((len(text(item[by])) for item in items), default=len(by))
    table.add_column(by, overflow="fold", min_width=min(longest, 12))
    for column in COLUMNS:
        table.add_column(HEADERS[column], justify="right", no_wrap=True)
    for item in items:
        cost = format_usd(usd_to_nano(item["cost_usd"]))
        counts = (_count(int(item[c]), compact) for c in COLUMNS[:-3])
        saved = format_usd(usd_to_nano(item["saved_usd"]))
        table.add_row(
            text(item[by]), *counts, cost, _count(int(item["cache_hits"]), compact), saved
        )
    return table


def _count(value: int, compact: bool) -> str:
    if not compact or value < 10_000:
        return f"{value:,}"
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:,}"  # pragma: no cover
