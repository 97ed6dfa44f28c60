"""`capgate users|teams|orgs|providers ...`: the scopes above keys, managed like keys."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from capgate.cli.client import AdminClient
from capgate.cli.keys import (
    AddLimitOpt,
    JsonOpt,
    LimitOpt,
    ModelOpt,
    RemoveLimitOpt,
    ScheduleOpt,
    ShortBudgetOpt,
    UrlOpt,
    console,
    ensure,
    print_scope,
    scope_body,
    show_limits,
    update_body,
)
from capgate.cli.render import listing, print_settings, text, usage_cell

OrgOpt = Annotated[
    str | None, typer.Option("--org", help="the org this team belongs to (it must exist)")
]
CreateOrgOpt = Annotated[
    bool, typer.Option("--create-org", help="create the --org if it does not exist")
]
ExpiresOpt = Annotated[
    str | None, typer.Option(help="expiry in the future, ISO 8601 (e.g. 2026-12-31)")
]
TimezoneOpt = Annotated[str | None, typer.Option(help="IANA timezone for calendar windows")]


def scope_app(plural: str, what: str, help_text: str) -> typer.Typer:
    """The commands for one kind of scope: create, list, show, update, pause, resume,
    revoke, reset-usage, delete."""
    app = typer.Typer(help=help_text, no_args_is_help=True)
    path = f"/admin/{plural}"

    def created(
        name: str, body: dict[str, Any], url: str | None, as_json: bool, create_org: bool = False
    ) -> None:
        client = AdminClient(url)
        ensure(client, "orgs", "org", body.get("org"), create_org)
        scope = client.call("POST", path, json={"name": name, **body})
        if as_json:
            print(json.dumps(scope, indent=2))
        else:
            console.print(f"Created {what} [bold]{name}[/bold].")
            print_scope(scope)

    if plural == "teams":

        @app.command()
        def create(
            name: str,
            org: OrgOpt = None,
            create_org: CreateOrgOpt = False,
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
                create_org,
            )

        @app.command()
        def update(
            name: str,
            org: OrgOpt = None,
            create_org: CreateOrgOpt = False,
            limit: LimitOpt = None,
            add_limit: AddLimitOpt = None,
            remove_limit: RemoveLimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
        ) -> None:
            """Change a team. --limit, --model and --schedule replace the whole list;
            --add-limit and --remove-limit change one limit and keep the others."""
            changed(
                name,
                scope_body(limit, model, expires, timezone, on_short_budget, schedule, org=org),
                url,
                add_limit,
                remove_limit,
                create_org,
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
            add_limit: AddLimitOpt = None,
            remove_limit: RemoveLimitOpt = None,
            model: ModelOpt = None,
            expires: ExpiresOpt = None,
            timezone: TimezoneOpt = None,
            on_short_budget: ShortBudgetOpt = None,
            schedule: ScheduleOpt = None,
            url: UrlOpt = None,
        ) -> None:
            changed(
                name,
                scope_body(limit, model, expires, timezone, on_short_budget, schedule),
                url,
                add_limit,
                remove_limit,
            )

        update_plain.__doc__ = (
            f"Change a {what}. --limit, --model and --schedule replace the whole list; "
            "--add-limit and --remove-limit change one limit and keep the others."
        )

    def changed(
        name: str,
        body: dict[str, Any],
        url: str | None,
        add: list[str] | None,
        remove: list[str] | None,
        create_org: bool = False,
    ) -> None:
        client = AdminClient(url)
        body = update_body(client, f"{path}/{name}", body, add, remove)
        ensure(client, "orgs", "org", body.get("org"), create_org)
        scope = client.call("PATCH", f"{path}/{name}", json=body)
        console.print(f"Updated {what} {name}.", markup=False, highlight=False)
        print_scope(scope)

    @app.command("list")
    def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        items = AdminClient(url).call("GET", path)["items"]
        if as_json:
            print(json.dumps(items, indent=2))
            return
        table = listing("name", "status", *(("org",) if plural == "teams" else ()), "limits")
        for item in items:
            limits = ", ".join(usage_cell(u) for u in item["usage"]) or "none"
            org = (text(item.get("org")),) if plural == "teams" else ()
            table.add_row(item["name"], item["status"], *org, limits)
        console.print(table, markup=False, highlight=False)

    list_.__doc__ = f"List {plural} with their status and usage."

    @app.command()
    def show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        item = AdminClient(url).call("GET", f"{path}/{name}")
        if as_json:
            print(json.dumps(item, indent=2))
            return
        head = f"{item['name']}  {item['status']}"
        if plural == "teams":
            head += f"  org={text(item.get('org'))}"
        console.print(head, markup=False, highlight=False)
        print_settings(console, item)
        for group, names in (item.get("members") or {}).items():
            console.print(f"{group}: {', '.join(names) or 'none'}", markup=False, highlight=False)
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
