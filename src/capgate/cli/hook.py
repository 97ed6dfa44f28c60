"""`capgate hook ...`: hook mode on a developer's machine (install, status, uninstall,
watchdog). The work is done by `capgate.hook.client.install` and `.watchdog`, the same
stdlib-only files the server serves to machines without capgate: one implementation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from capgate.cli.client import fail
from capgate.cli.render import reset
from capgate.hook.client import install as installer
from capgate.hook.client import watchdog

app = typer.Typer(
    help="Hook mode: gate Claude Code / Codex on this machine with managed hooks.",
    no_args_is_help=True,
)
CLIENT = Path(installer.__file__).parent  # hook.py and watchdog.py, as the server serves them


def _need_root() -> None:
    if os.geteuid() != 0:
        fail("run as root (sudo capgate hook ...): the hook's files must be root's")


@app.command()
def install(
    server: Annotated[str, typer.Option("--server", help="the capgate server's URL")],
    code: Annotated[str, typer.Option("--code", help="the one-time install code (cgi-...)")],
    claude: Annotated[bool, typer.Option("--claude", help="gate Claude Code")] = False,
    codex: Annotated[bool, typer.Option("--codex", help="gate Codex")] = False,
    os_user: Annotated[
        str | None, typer.Option("--os-user", help="the developer's OS user [SUDO_USER]")
    ] = None,
) -> None:
    """Enrol this machine with an install code and write the managed hooks (root)."""
    _need_root()
    agents = [name for name, wanted in (("claude", claude), ("codex", codex)) if wanted]
    user = os_user or os.environ.get("SUDO_USER") or "root"
    try:
        installer.install(server, code, agents or ["claude"], user, local=str(CLIENT))
    except installer.InstallError as exc:
        fail(str(exc))


@app.command()
def uninstall() -> None:
    """Remove every file `capgate hook install` wrote, and nothing else (root)."""
    _need_root()
    try:
        installer.uninstall()
    except installer.InstallError as exc:
        fail(str(exc))


@app.command("watchdog")
def run_watchdog() -> None:
    """Run the watchdog once: restore changed hook files, report them (root)."""
    _need_root()
    manifest = installer.under("/", installer.HOOK_DIR + "/pristine")
    if not os.path.exists(manifest + "/manifest.json"):
        fail("capgate's hook is not installed here")
    restored = watchdog.run(manifest)
    typer.echo("\n".join(f"restored {path}" for path in restored) or "all files intact")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Files present and intact, the server, this machine and its person's limits."""
    result = installer.status()
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2))
        return
    if not result["installed"]:
        fail("capgate's hook is not installed here (capgate hook install --server URL --code CODE)")
    console = Console()
    files = Table("file", "state", box=None)
    for entry in result["files"]:
        files.add_row(entry["path"], entry["state"])
    console.print(files)
    config = result.get("config") or {}
    console.print(
        f"server {config.get('server')} · machine {config.get('machine')} · "
        f"user {config.get('user')} · OS user {config.get('os_user')}"
    )
    if result.get("error"):
        fail(result["error"])
    console.print(_limits(result["server"]))


def _limits(answer: dict[str, Any]) -> Table | str:
    rows = answer.get("limits") or []
    if not rows:
        return f"{answer.get('user')}: no limits ({answer.get('status', 'active')})"
    table = Table("scope", "limit", "model", "used", "max", "left", "resets")
    for row in rows:
        table.add_row(
            str(row.get("scope")),
            f"{row.get('metric')} / {row.get('window')}",
            str(row.get("model") or "*"),
            str(row.get("used_text") or row.get("used")),
            str(row.get("max_text") or row.get("max")),
            str(row.get("left_text") or row.get("left")),
            reset(int(row["resets_at"]) if row.get("resets_at") else None),
        )
    return table


# hooksrv's admin commands (code, codes, machines, kill, resume) join this group here:
from capgate.cli.hook_admin import register  # noqa: E402 - the admin commands (hooksrv)

register(app)
