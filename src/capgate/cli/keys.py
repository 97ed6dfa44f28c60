"""`capgate keys ...`: manage virtual keys through the admin API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from capgate.cli.client import AdminClient, fail
from capgate.cli.render import (
    limit_label,
    listing,
    print_settings,
    print_warnings,
    schedule_text,
    text,
    usage_cell,
    usage_table,
)
from capgate.core.limits import parse_limit_spec, parse_metric
from capgate.core.windows import parse_window
from capgate.rotation import format_duration, parse_duration

app = typer.Typer(help="Create and manage virtual keys.", no_args_is_help=True)
console = Console()

LimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        "-l",
        help="[MODEL_GLOB:]METRIC=MAX/WINDOW, e.g. cost=5/day (repeatable). On update it "
        "replaces ALL the limits; see --add-limit and --remove-limit",
    ),
]
AddLimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--add-limit",
        help="add a limit, keeping the others (one on the same metric, window and models "
        "is replaced); same syntax as --limit (repeatable)",
    ),
]
RemoveLimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--remove-limit",
        help="remove the limit [MODEL_GLOB:]METRIC/WINDOW (or its full --limit spec), "
        "keeping the others (repeatable)",
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
FailOpenOpt = Annotated[
    bool | None,
    typer.Option(
        "--fail-open/--no-fail-open",
        help="while the store cannot be reached: forward the key's requests un-reserved and "
        "record their usage when it is back, even past a limit (--fail-open), or refuse "
        "them (--no-fail-open, the default)",
    ),
]
LogBodiesOpt = Annotated[
    bool | None,
    typer.Option(
        "--log-bodies/--no-log-bodies",
        help="log the key's request bodies and answers, redacted (--log-bodies), or not "
        "(--no-log-bodies, the default); docs/security.md",
    ),
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache",
        help="keep the key's answers this long and give them again to its identical "
        "requests (e.g. 10m, 1h; docs/cache.md), or 'off'; add ',semantic' to give them "
        "to close paraphrases too (1h,semantic; docs/semantic-cache.md)",
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
RotateEveryOpt = Annotated[
    str | None,
    typer.Option(
        "--rotate-every",
        help="how often the key is due for rotation (e.g. 90d): an alert announces it a "
        "week ahead; 'never' to stop",
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="capgate server (env CAPGATE_URL); also before the command"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def limits_body(specs: list[str] | None) -> list[dict[str, Any]] | None:
    return None if specs is None else [_limit_json(spec) for spec in specs]


def _ident(row: dict[str, Any]) -> tuple[str, str, str | None]:
    return (row["metric"], row["window"], row.get("model") or None)


def _removal(spec: str) -> tuple[str, str, str | None]:
    """`[MODEL_GLOB:]METRIC/WINDOW` or a whole `--limit` spec: which limit to remove."""
    if "=" in spec:
        return _ident(_limit_json(spec))
    model, _, rest = spec.strip().rpartition(":")
    metric, slash, window = rest.partition("/")
    try:
        if not slash:
            raise ValueError("")
        return (parse_metric(metric).value, parse_window(window).value, model or None)
    except ValueError as exc:
        fail(
            f"bad --remove-limit {spec!r}: expected [MODEL_GLOB:]METRIC/WINDOW, e.g. cost/day {exc}"
        )


def _limit_json(spec: str) -> dict[str, Any]:
    try:
        return parse_limit_spec(spec).to_json()
    except ValueError as exc:
        fail(str(exc))


def edited_limits(
    current: list[dict[str, Any]], add: list[str], remove: list[str]
) -> list[dict[str, Any]]:
    """`current` without the limits `remove` names and with those of `add` (replacing
    one on the same metric, window and models)."""
    out = list(current)
    for spec in remove:
        ident = _removal(spec)
        kept = [row for row in out if _ident(row) != ident]
        if len(kept) == len(out):
            have = ", ".join(limit_label(row) for row in out) or "none"
            fail(f"--remove-limit {spec}: no such limit (the limits are: {have})")
        out = kept
    for spec in add:
        row = _limit_json(spec)
        out = [r for r in out if _ident(r) != _ident(row)] + [row]
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


def update_body(
    client: AdminClient,
    path: str,
    body: dict[str, Any],
    add: list[str] | None,
    remove: list[str] | None,
) -> dict[str, Any]:
    """The PATCH body: with --add-limit / --remove-limit, the scope's limits as they are
    now, edited."""
    if add or remove:
        if "limits" in body:
            fail(
                "--limit replaces all the limits: give it alone, or use --add-limit / --remove-limit"
            )
        current = client.call("GET", path)["limits"]
        body = {**body, "limits": edited_limits(current, add or [], remove or [])}
    if not body:
        fail("nothing to change: give at least one option")
    return body


def ensure(client: AdminClient, plural: str, what: str, name: str | None, create: bool) -> None:
    """With --create-team and the like: create the scope a key or team names, unless it
    exists already."""
    if name and create and client.create_if_missing(f"/admin/{plural}", name):
        console.print(f"Created {what} {name}.", markup=False, highlight=False)


def show_limits(usage: list[dict[str, Any]]) -> Table | str:
    return usage_table(usage)


def print_scope(scope: dict[str, Any]) -> None:
    """After create or update: what the scope now lets through, and any warnings."""
    print_settings(console, scope)
    print_warnings(scope)


CreateTeamOpt = Annotated[
    bool, typer.Option("--create-team", help="create the --team if it does not exist")
]
CreateUserOpt = Annotated[
    bool, typer.Option("--create-user", help="create the --user if it does not exist")
]
TeamOpt = Annotated[str | None, typer.Option(help="team name (the team must exist)")]
UserOpt = Annotated[str | None, typer.Option(help="user name (the user must exist)")]


@app.command()
def create(
    name: str,
    team: TeamOpt = None,
    user: UserOpt = None,
    create_team: CreateTeamOpt = False,
    create_user: CreateUserOpt = False,
    limit: LimitOpt = None,
    model: ModelOpt = None,
    expires: Annotated[
        str | None, typer.Option(help="expiry in the future, ISO 8601 (e.g. 2026-12-31)")
    ] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone for calendar windows")] = None,
    on_short_budget: ShortBudgetOpt = None,
    schedule: ScheduleOpt = None,
    unbounded_hold: HoldOpt = None,
    fail_open: FailOpenOpt = None,
    log_bodies: LogBodiesOpt = None,
    cache: CacheOpt = None,
    rotate_every: RotateEveryOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print the raw key (shown only this once)."""
    fields = scope_body(
        limit, model, expires, timezone, on_short_budget, schedule, unbounded_hold,
        team=team, user=user,
    )  # fmt: skip
    if fail_open is not None:
        fields["fail_open"] = fail_open
    if log_bodies is not None:
        fields["log_bodies"] = log_bodies
    if cache is not None:
        fields["cache"] = cache_field(cache)
    if rotate_every is not None:
        fields["rotate_every"] = None if rotate_every == "never" else rotate_every
    client = AdminClient(url)
    ensure(client, "teams", "team", team, create_team)
    ensure(client, "users", "user", user, create_user)
    created = client.call("POST", "/admin/keys", json={"name": name, **fields})
    if as_json:
        print(json.dumps(created, indent=2))
        return
    console.print(f"Created key [bold]{name}[/bold]. Copy it now; it is not shown again:")
    print(created["key"])
    print_scope(created)


@app.command("list")
def list_(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List keys with their status, limits, allowed models and schedules."""
    items = AdminClient(url).call("GET", "/admin/keys")["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = listing("name", "status", "team", "user", "limits", "models", "schedules", "prefix")
    for key in items:
        table.add_row(
            key["name"],
            key["status"],
            text(key["team"]),
            text(key["user"]),
            ", ".join(usage_cell(u) for u in key["usage"]) or "none",
            ", ".join(key["models"]) or "all",
            "; ".join(schedule_text(s) for s in key.get("schedules") or []) or text(None),
            text(key["prefix"]),
        )
    console.print(table, markup=False, highlight=False)


@app.command()
def show(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show one key and its usage against each limit."""
    key = AdminClient(url).call("GET", f"/admin/keys/{name}")
    if as_json:
        print(json.dumps(key, indent=2))
        return
    head = f"{key['name']}  {key['status']}  team={text(key['team'])} user={text(key['user'])}"
    console.print(head, markup=False, highlight=False)
    console.print(
        f"expires: {key['expires_at'] or 'never'}   timezone: {text(key.get('timezone'))}   "
        f"on short budget: {text(key.get('on_short_budget'))}   "
        f"fail open: {'yes' if key.get('fail_open') else 'no'}   "
        f"logs bodies: {'yes' if key.get('log_bodies') else 'no'}   "
        f"cache: {cache_text(key.get('cache'))}",
        markup=False,
        highlight=False,
    )
    if key.get("rotated_at") or key.get("rotate_every"):
        console.print(
            f"rotated: {key.get('rotated_at') or 'never'}   old secret works until: "
            f"{text(key.get('old_valid_until'))}   rotate every: {text(key.get('rotate_every'))}"
            f" (due {text(key.get('rotation_due_at'))})",
            markup=False,
            highlight=False,
        )
    print_settings(console, key)
    console.print(show_limits(key["usage"]))


@app.command()
def update(
    name: str,
    team: TeamOpt = None,
    user: UserOpt = None,
    create_team: CreateTeamOpt = False,
    create_user: CreateUserOpt = False,
    limit: LimitOpt = None,
    add_limit: AddLimitOpt = None,
    remove_limit: RemoveLimitOpt = None,
    model: ModelOpt = None,
    expires: Annotated[str | None, typer.Option(help="expiry in the future, ISO 8601")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone")] = None,
    on_short_budget: ShortBudgetOpt = None,
    schedule: ScheduleOpt = None,
    unbounded_hold: HoldOpt = None,
    fail_open: FailOpenOpt = None,
    log_bodies: LogBodiesOpt = None,
    cache: CacheOpt = None,
    rotate_every: RotateEveryOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key. --limit, --model and --schedule replace the whole list;
    --add-limit and --remove-limit change one limit and keep the others."""
    body = scope_body(
        limit, model, expires, timezone, on_short_budget, schedule, unbounded_hold,
        team=team, user=user,
    )  # fmt: skip
    if fail_open is not None:
        body["fail_open"] = fail_open
    if log_bodies is not None:
        body["log_bodies"] = log_bodies
    if cache is not None:
        body["cache"] = cache_field(cache)
    if rotate_every is not None:
        body["rotate_every"] = None if rotate_every == "never" else rotate_every
    client = AdminClient(url)
    path = f"/admin/keys/{name}"
    body = update_body(client, path, body, add_limit, remove_limit)
    ensure(client, "teams", "team", team, create_team)
    ensure(client, "users", "user", user, create_user)
    updated = client.call("PATCH", path, json=body)
    if as_json:
        print(json.dumps(updated, indent=2))
        return
    console.print(f"Updated key {name}.", markup=False, highlight=False)
    print_scope(updated)


def _action(action: str, done: str) -> None:
    def command(name: str, url: UrlOpt = None) -> None:
        AdminClient(url).call("POST", f"/admin/keys/{name}/{action}")
        console.print(f"Key {name} {done}.", markup=False, highlight=False)

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
    console.print(f"Deleted key {name}.", markup=False, highlight=False)


@app.command()
def rotate(
    name: str,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="how long the old secret keeps working (0, 30m, 1h, 7d; at most 90d); "
            "0: refused at once",
        ),
    ] = "0",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a key a new secret (same name, limits, usage and ledger) and print it (shown
    only this once); the old one works for --grace more, then is refused as rotated."""
    try:
        grace_s = parse_duration(grace)
    except ValueError as exc:
        fail(f"--grace: {exc}")
    rotated = AdminClient(url).call("POST", f"/admin/keys/{name}/rotate", json={"grace_s": grace_s})
    if as_json:
        print(json.dumps(rotated, indent=2))
        return
    console.print(
        f"Rotated key [bold]{name}[/bold]. Copy the new secret now; it is not shown again:"
    )
    print(rotated["key"])
    until = rotated["old_valid_until"]
    console.print(
        f"The old secret works until {until}." if grace_s else "The old secret is refused now.",
        markup=False,
        highlight=False,
    )


def cache_field(value: str) -> dict[str, object] | None:
    """--cache's value as the admin API's `cache` field: off, or a TTL (owner: the key),
    with `,semantic` to answer close paraphrases too (e.g. 1h,semantic)."""
    if value.strip().lower() == "off":
        return None
    ttl, comma, extra = value.partition(",")
    if comma and extra.strip().lower() == "semantic":
        return {"ttl": ttl.strip(), "semantic": True}
    return {"ttl": value}


def cache_text(setting: dict[str, object] | None) -> str:
    if not setting:
        return "off"
    shown = f"{format_duration(float(str(setting['ttl_s'])))} per {setting['owner']}"
    if setting.get("shared"):
        shown += f", shared {setting['shared']}"
    shown += ", charged in full" if setting.get("charge") == "full" else ""
    return shown + (", semantic" if setting.get("semantic") else "")
