"""`capgate keys ...`: manage virtual keys through the admin API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from capgate.cli.client import AdminClient, fail
from capgate.core.limits import parse_limit_spec

app = typer.Typer(help="Create and manage virtual keys.", no_args_is_help=True)
console = Console()

LimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--limit", "-l", help="[MODEL_GLOB:]METRIC=MAX/WINDOW, e.g. cost=5/day (repeatable)"
    ),
]
ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="allowed model glob (repeatable)")
]
ShortBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--on-short-budget",
        help="clamp: lower max_tokens to what the budget pays for (default); reject: refuse",
    ),
]
HoldOpt = Annotated[
    str | None,
    typer.Option(
        "--unbounded-hold",
        help="USD to hold for a request whose worst case cannot be bounded (a server tool "
        "like code execution, ...) instead of refusing it; 'none' to refuse again",
    ),
]
ScheduleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--schedule",
        help="'MODEL_GLOB DAYS HH:MM-HH:MM [TZ]', e.g. 'claude-opus* mon-fri 09:00-18:00 "
        "Europe/Berlin': those models only then (repeatable; replaces the list)",
    ),
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="capgate server (env CAPGATE_URL)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def limits_body(specs: list[str] | None) -> list[dict[str, Any]] | None:
    if specs is None:
        return None
    out = []
    for spec in specs:
        try:
            out.append(parse_limit_spec(spec).to_json())
        except ValueError as exc:
            fail(str(exc))
    return out


def schedules_body(specs: list[str] | None) -> list[dict[str, str]] | None:
    if specs is None:
        return None
    out = []
    for spec in specs:
        parts = spec.split()
        if len(parts) not in (3, 4) or "-" not in parts[2]:
            fail(f"bad schedule {spec!r}: expected 'MODEL_GLOB DAYS HH:MM-HH:MM [TZ]'")
        start, _, end = parts[2].partition("-")
        entry = {"model": parts[0], "days": parts[1], "start": start, "end": end}
        if len(parts) == 4:
            entry["tz"] = parts[3]
        out.append(entry)
    return out


def scope_body(
    limit: list[str] | None,
    model: list[str] | None,
    expires: str | None,
    timezone: str | None,
    on_short_budget: str | None,
    schedule: list[str] | None,
    unbounded_hold: str | None = None,
    **membership: str | None,
) -> dict[str, Any]:
    """The admin API body of the options given (left-out options stay as they are)."""
    body: dict[str, Any] = {}
    given = {
        **membership,
        "expires_at": expires,
        "timezone": timezone,
        "on_short_budget": on_short_budget,
        "limits": limits_body(limit),
        "models": model,
        "schedules": schedules_body(schedule),
    }
    for name, value in given.items():
        if value is not None:
            body[name] = value
    if unbounded_hold is not None:
        body["unbounded_hold_usd"] = None if unbounded_hold == "none" else unbounded_hold
    return body


def show_limits(usage: list[dict[str, Any]]) -> Table:
    table = Table("limit", "used", "reserved", "max", "left", "resets", box=None)
    for row in usage:
        label = f"{row['metric']}/{row['window']}" + (
            f" ({row['model']})" if row.get("model") else ""
        )
        table.add_row(
            label,
            str(row["used"]),
            str(row["reserved"]),
            str(row["max"]),
            str(row["remaining"]),
            _reset(row["resets_at"]),
        )
    return table


def _reset(ts: int) -> str:
    from datetime import UTC, datetime

    if ts >= 2**61:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command()
def create(
    name: str,
    team: Annotated[str | None, typer.Option(help="team name")] = None,
    user: Annotated[str | None, typer.Option(help="user name")] = None,
    limit: LimitOpt = None,
    model: ModelOpt = None,
    expires: Annotated[str | None, typer.Option(help="expiry, ISO 8601 (e.g. 2026-12-31)")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone for calendar windows")] = None,
    on_short_budget: ShortBudgetOpt = None,
    schedule: ScheduleOpt = None,
    unbounded_hold: HoldOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print the raw key (shown only this once)."""
    fields = scope_body(
        limit, model, expires, timezone, on_short_budget, schedule, unbounded_hold,
        team=team, user=user,
    )  # fmt: skip
    body = {"name": name, **fields}
    created = AdminClient(url).call("POST", "/admin/keys", json=body)
    if as_json:
        print(json.dumps(created, indent=2))
        return
    console.print(f"Created key [bold]{name}[/bold]. Copy it now; it is not shown again:")
    print(created["key"])


@app.command("list")
def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List keys with their status and limits."""
    items = AdminClient(url).call("GET", "/admin/keys")["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table("name", "status", "team", "user", "limits", "prefix")
    for key in items:
        limits = ", ".join(
            f"{u['metric']}={u['used']}/{u['max']} per {u['window']}" for u in key["usage"]
        )
        table.add_row(
            key["name"],
            key["status"],
            key["team"] or "",
            key["user"] or "",
            limits,
            key["prefix"] or "",
        )
    console.print(table)


@app.command()
def show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show one key and its usage against each limit."""
    key = AdminClient(url).call("GET", f"/admin/keys/{name}")
    if as_json:
        print(json.dumps(key, indent=2))
        return
    console.print(
        f"[bold]{key['name']}[/bold]  {key['status']}  team={key['team']} user={key['user']}"
    )
    console.print(
        f"models: {', '.join(key['models']) or 'all'}   expires: {key['expires_at'] or 'never'}"
    )
    console.print(show_limits(key["usage"]))


@app.command()
def update(
    name: str,
    team: Annotated[str | None, typer.Option(help="team name")] = None,
    user: Annotated[str | None, typer.Option(help="user name")] = None,
    limit: LimitOpt = None,
    model: ModelOpt = None,
    expires: Annotated[str | None, typer.Option(help="expiry, ISO 8601")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone")] = None,
    on_short_budget: ShortBudgetOpt = None,
    schedule: ScheduleOpt = None,
    unbounded_hold: HoldOpt = None,
    url: UrlOpt = None,
) -> None:
    """Change a key. --limit, --model and --schedule replace the whole list."""
    body = scope_body(
        limit, model, expires, timezone, on_short_budget, schedule, unbounded_hold,
        team=team, user=user,
    )  # fmt: skip
    if not body:
        fail("nothing to change: give at least one option")
    AdminClient(url).call("PATCH", f"/admin/keys/{name}", json=body)
    console.print(f"Updated key {name}.")


def _action(action: str, done: str) -> None:
    def command(name: str, url: UrlOpt = None) -> None:
        AdminClient(url).call("POST", f"/admin/keys/{name}/{action}")
        console.print(f"Key {name} {done}.")

    command.__doc__ = f"{action.capitalize().replace('-', ' ')} a key."
    app.command(action)(command)


_action("pause", "paused: its next request is refused")
_action("resume", "resumed")
_action("revoke", "revoked for good")
_action("reset-usage", "usage reset")


@app.command()
def delete(name: str, url: UrlOpt = None) -> None:
    """Delete a key (its ledger entries stay)."""
    AdminClient(url).call("DELETE", f"/admin/keys/{name}")
    console.print(f"Deleted key {name}.")
