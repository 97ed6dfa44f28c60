"""`capgate admins ...`: named admins with roles, and their API tokens, through the admin
API (docs/security.md#admins-and-roles). Passwords are read from a hidden prompt or, with
`--password-stdin`, from standard input: never from the command line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from capgate.cli.client import AdminClient, fail
from capgate.cli.keys import JsonOpt, UrlOpt

app = typer.Typer(help="Named admins: roles, passwords, API tokens.", no_args_is_help=True)
tokens = typer.Typer(help="An admin's API tokens (Authorization: Bearer cga-...).")
app.add_typer(tokens, name="token")

RoleOpt = Annotated[str | None, typer.Option("--role", help="owner, admin, viewer or team-admin")]
TeamOpt = Annotated[
    list[str] | None, typer.Option("--team", help="a team-admin's team (repeatable)")
]
StdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    text: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return text


def _show(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(item, indent=2))
        return
    teams = ",".join(item.get("teams", [])) or "-"
    print(f"{item['name']}  role={item['role']}  teams={teams}  status={item['status']}")


@app.command("create")
def create(
    name: str,
    role: Annotated[str, typer.Option("--role", help="owner, admin, viewer or team-admin")],
    team: TeamOpt = None,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="no dashboard login (API tokens only)")
    ] = False,
    password_stdin: StdinOpt = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an admin (owners only). Asks for a password (12 characters or more)."""
    body: dict[str, Any] = {"name": name, "role": role, "teams": team or []}
    if not no_password:
        body["password"] = _password(password_stdin)
    _show(AdminClient(url).call("POST", "/admin/admins", json=body), as_json)


@app.command("list")
def list_admins(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every admin (owners only)."""
    items = AdminClient(url).call("GET", "/admin/admins")["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    for item in items:
        _show(item, False)


@app.command("set")
def set_admin(
    name: str, role: RoleOpt = None, team: TeamOpt = None, url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Change an admin's role or teams (--team replaces the list)."""
    body: dict[str, Any] = {}
    if role is not None:
        body["role"] = role
    if team is not None:
        body["teams"] = team
    if not body:
        fail("nothing to change: give --role or --team")
    _show(AdminClient(url).call("PATCH", f"/admin/admins/{name}", json=body), as_json)


@app.command("passwd")
def passwd(name: str, password_stdin: StdinOpt = False, url: UrlOpt = None) -> None:
    """Set an admin's password (owners; any admin for themselves). Ends their sessions."""
    body = {"password": _password(password_stdin)}
    AdminClient(url).call("POST", f"/admin/admins/{name}/password", json=body)
    print(f"password of {name} changed")


@app.command("disable")
def disable(
    name: str,
    enable: Annotated[bool, typer.Option("--enable", help="enable it again")] = False,
    url: UrlOpt = None,
) -> None:
    """Disable an admin: their sessions end and their tokens stop working."""
    status = "active" if enable else "disabled"
    AdminClient(url).call("PATCH", f"/admin/admins/{name}", json={"status": status})
    print(f"{name} {status}")


@app.command("remove")
def remove(name: str, url: UrlOpt = None) -> None:
    """Delete an admin with their tokens and sessions."""
    AdminClient(url).call("DELETE", f"/admin/admins/{name}")
    print(f"{name} removed")


# -- tokens ------------------------------------------------------------------------------


def _show_token(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(item, indent=2))
        return
    state = "revoked" if item["revoked_at"] else "active"
    print(
        f"{item['id']}  {item['prefix']}  label={item['label'] or '-'}  {state}  "
        f"expires={item['expires_at'] or 'never'}"
    )
    if item.get("token"):
        print(item["token"])
        print("(shown once: store it now)", file=sys.stderr)


@tokens.command("create")
def token_create(
    name: str,
    label: Annotated[str, typer.Option("--label", help="what it is for")] = "",
    days: Annotated[
        float | None, typer.Option("--days", help="expires after this many days")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an API token for admin NAME; its secret is printed once."""
    body: dict[str, Any] = {"label": label}
    if days is not None:
        body["expires_at"] = int(datetime.now(UTC).timestamp() + days * 86400)
    _show_token(AdminClient(url).call("POST", f"/admin/admins/{name}/tokens", json=body), as_json)


@tokens.command("list")
def token_list(name: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Admin NAME's tokens (never their secrets)."""
    items = AdminClient(url).call("GET", f"/admin/admins/{name}/tokens")["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    for item in items:
        _show_token(item, False)


@tokens.command("revoke")
def token_revoke(name: str, token_id: str, url: UrlOpt = None) -> None:
    """Revoke admin NAME's token TOKEN_ID at once."""
    AdminClient(url).call("POST", f"/admin/admins/{name}/tokens/{token_id}/revoke")
    print(f"token {token_id} revoked")


@tokens.command("rotate")
def token_rotate(
    name: str,
    token_id: str,
    grace: Annotated[
        int, typer.Option("--grace", help="seconds the old secret keeps working [0]")
    ] = 0,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A new secret for the token; the old one works GRACE seconds more, then is refused
    as rotated."""
    path = f"/admin/admins/{name}/tokens/{token_id}/rotate"
    _show_token(AdminClient(url).call("POST", path, json={"grace_s": grace}), as_json)
