"""`capgate users|teams|orgs|providers ...`: the scopes above keys, managed like keys."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from capgate.cli.client import AdminClient, fail
from capgate.cli.keys import (
    JsonOpt,
    LimitOpt,
    ModelOpt,
    ScheduleOpt,
    ShortBudgetOpt,
    UrlOpt,
    console,
    scope_body,
    show_limits,
)

OrgOpt = Annotated[str | None, typer.Option("--org", help="the org this team belongs to")]
ExpiresOpt = Annotated[str | None, typer.Option(help="expiry, ISO 8601 (e.g. 2026-12-31)")]
TimezoneOpt = Annotated[str | None, typer.Option(help="IANA timezone for calendar windows")]


def scope_app(plural: str, what: str, help_text: str) -> typer.Typer:
    """The commands for one kind of scope: create, list, show, update, pause, resume,
    revoke, reset-usage, delete."""
    app = typer.Typer(help=help_text, no_args_is_help=True)
    path = f"/admin/{plural}"

    def created(name: str, body: dict[str, Any], url: str | None, as_json: bool) -> None:
        scope = AdminClient(url).call("POST", path, json={"name": name, **body})
        if as_json:
            print(json.dumps(scope, indent=2))
        else:
            console.print(f"Created {what} [bold]{name}[/bold].")

    if plural == "teams":

        @app.command()
        def create(
            name: str,
            org: OrgOpt = None,
            limit: LimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            """Create a team with limits; keys join it with --team."""
            created(
                name,
                scope_body(limit, model, expires, timezone, on_short_budget, schedule, org=org),
                url,
                as_json,
            )

        @app.command()
        def update(
            name: str,
            org: OrgOpt = None,
            limit: LimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
        ) -> None:
            """Change a team. --limit and --model replace the whole list."""
            changed(
                name,
                scope_body(limit, model, expires, timezone, on_short_budget, schedule, org=org),
                url,
            )

    else:

        @app.command("create")
        def create_plain(
            name: str,
            limit: LimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
            as_json: JsonOpt = False,
        ) -> None:
            created(
                name,
                scope_body(limit, model, expires, timezone, on_short_budget, schedule),
                url,
                as_json,
            )

        create_plain.__doc__ = f"Create a {what} with limits."

        @app.command("update")
        def update_plain(
            name: str,
            limit: LimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
        ) -> None:
            changed(
                name, scope_body(limit, model, expires, timezone, on_short_budget, schedule), url
            )

        update_plain.__doc__ = f"Change a {what}. --limit and --model replace the whole list."

    def changed(name: str, body: dict[str, Any], url: str | None) -> None:
        if not body:
            fail("nothing to change: give at least one option")
        AdminClient(url).call("PATCH", f"{path}/{name}", json=body)
        console.print(f"Updated {what} {name}.")

    @app.command("list")
    def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        items = AdminClient(url).call("GET", path)["items"]
        if as_json:
            print(json.dumps(items, indent=2))
            return
        table = Table("name", "status", "limits")
        for item in items:
            limits = ", ".join(
                f"{u['metric']}={u['used']}/{u['max']} per {u['window']}" for u in item["usage"]
            )
            table.add_row(item["name"], item["status"], limits)
        console.print(table)

    list_.__doc__ = f"List {plural} with their status and usage."

    @app.command()
    def show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        item = AdminClient(url).call("GET", f"{path}/{name}")
        if as_json:
            print(json.dumps(item, indent=2))
            return
        console.print(f"[bold]{item['name']}[/bold]  {item['status']}")
        console.print(show_limits(item["usage"]))

    show.__doc__ = f"Show one {what} and its usage against each limit."

    def action_command(action: str, done: str) -> None:
        def command(name: str, url: UrlOpt = None) -> None:
            AdminClient(url).call("POST", f"{path}/{name}/{action}")
            console.print(f"{what.capitalize()} {name} {done}.")

        command.__doc__ = (
            f"Reset a {what}'s usage."
            if action == "reset-usage"
            else f"{action.capitalize()} a {what}."
        )
        app.command(action)(command)

    action_command("pause", "paused: every request below it is refused")
    action_command("resume", "resumed")
    action_command("revoke", "revoked for good")
    action_command("reset-usage", "usage reset")

    @app.command()
    def delete(name: str, url: UrlOpt = None) -> None:
        AdminClient(url).call("DELETE", f"{path}/{name}")
        console.print(f"Deleted {what} {name}.")

    delete.__doc__ = f"Delete a {what} (keys that name it keep working, without its limits)."
    return app
