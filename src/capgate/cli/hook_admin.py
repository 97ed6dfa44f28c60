"""`capgate hook code|codes|machines|kill|resume`: the admin side of hook mode, through
the admin API (registered into the `hook` group of `cli/hook.py`)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from capgate.cli.client import AdminClient, fail
from capgate.cli.keys import JsonOpt, UrlOpt
from capgate.cli.render import listing, text

console = Console()
_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: str) -> float:
    """`24h`, `30m`, `7d`, `3600` (seconds)."""
    match = _TTL.match(value.strip())
    if match is None:
        fail(f"--ttl {value}: expected a duration such as 30m, 24h or 7d")
    return float(int(match.group(1)) * _UNIT_S[match.group(2)])


def when(ts: float | None) -> str:
    if ts is None:
        return text(None)
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def code(
    user: Annotated[str, typer.Option("--user", "-u", help="the person (a user scope)")],
    ttl: Annotated[str, typer.Option("--ttl", help="valid for (30m, 24h, 7d; at most 7d)")] = "24h",
    claude: Annotated[bool, typer.Option("--claude", help="install for Claude Code")] = False,
    codex: Annotated[bool, typer.Option("--codex", help="install for Codex")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a one-time install code for a person's machine (shown only this once)."""
    agents = [a for a, on in (("claude", claude), ("codex", codex)) if on] or ["claude", "codex"]
    body = {"user": user, "ttl_s": parse_ttl(ttl), "agents": agents}
    made = AdminClient(url).call("POST", "/admin/hook/codes", json=body)
    if as_json:
        print(json.dumps(made, indent=2))
        return
    out = console.print
    out(
        f"Install code for {made['user']} (shown only now; single use; expires {when(made['expires_at'])}):",
        markup=False,
        highlight=False,
    )
    out(f"  {made['code']}", markup=False, highlight=False)
    out("On the developer's machine, as root:", markup=False, highlight=False)
    out(f"  {made['install']['capgate']}", markup=False, highlight=False, soft_wrap=True)
    out("or, without capgate installed:", markup=False, highlight=False)
    out(f"  {made['install']['curl']}", markup=False, highlight=False, soft_wrap=True)


def codes(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List install codes (never the codes themselves): open, used or expired."""
    items: list[dict[str, Any]] = AdminClient(url).call("GET", "/admin/hook/codes")
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = listing("id", "user", "state", "expires", "machine")
    for c in items:
        table.add_row(c["id"], c["user"], c["state"], when(c["expires_at"]), text(c["machine"]))
    console.print(table, markup=False, highlight=False)


def machines(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List enrolled machines: person, host, hook version, last seen, tampering."""
    items: list[dict[str, Any]] = AdminClient(url).call("GET", "/admin/hook/machines")
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = listing("name", "user", "status", "os", "agents", "version", "last seen", "tampered")
    now = time.time()
    for m in items:
        seen = m["last_seen"]
        table.add_row(
            m["name"], text(m["user"]), m["status"], text(m["os"]), ", ".join(m["agents"]),
            text(m["hook_version"]),
            text(None) if seen is None else f"{int((now - seen) // 60)} min ago",
            when(m["tampered_at"]) if m["tampered_at"] else "no",
        )  # fmt: skip
    console.print(table, markup=False, highlight=False)


def kill(
    name: str,
    logout: Annotated[
        bool, typer.Option("--logout", help="also log the agent out on their machines")
    ] = False,
    url: UrlOpt = None,
) -> None:
    """Stop a person now: the next prompt and tool call on their machines are refused."""
    AdminClient(url).call("POST", f"/admin/users/{name}/kill", json={"logout": logout})
    extra = " and logged out" if logout else ""
    console.print(
        f"User {name} killed{extra}: resume with capgate hook resume {name}.",
        markup=False,
        highlight=False,
    )


def resume(name: str, url: UrlOpt = None) -> None:
    """Let a killed (paused) person work again."""
    AdminClient(url).call("POST", f"/admin/users/{name}/resume")
    console.print(f"User {name} resumed.", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the admin commands to the `capgate hook` group."""
    app.command("code")(code)
    app.command("codes")(codes)
    app.command("machines")(machines)
    app.command("kill")(kill)
    app.command("resume")(resume)
