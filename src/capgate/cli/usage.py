"""`capgate usage`: spend and tokens summed by key, user, team, model or day."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from capgate.cli.client import AdminClient, fail

COLUMNS = (
    "requests",
    "refused",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
)


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
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow((by, *COLUMNS))
        for item in items:
            writer.writerow([item[by], *(item[c] for c in COLUMNS)])
    else:
        table = Table(by, *COLUMNS)
        for item in items:
            table.add_row(str(item[by]), *(str(item[c]) for c in COLUMNS))
        Console().print(table)
