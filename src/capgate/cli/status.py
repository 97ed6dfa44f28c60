"""`capgate status`: a developer's own limits, from the server's truth: GET /v1/me with
their virtual key, or, on a hook machine with no key given, GET /hook/v1/status with the
machine's token (cli/machine_status.py)."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from capgate.cli import machine_status
from capgate.cli.client import DEFAULT_URL, fail
from capgate.cli.render import limit_label, text
from capgate.core.limits import format_usd, usd_to_nano

NEEDS_VIRTUAL_KEY = (
    "capgate status shows one virtual key's own limits, so it needs that key (sk-cg-..., "
    "from `capgate keys create`) in CAPGATE_KEY (or ANTHROPIC_API_KEY), not the admin key. "
    "As an admin, see any key with `capgate keys show NAME` or all with `capgate keys list`."
)


def _key() -> str | None:
    """The developer's virtual key from the environment, None when none is given."""
    admin = os.environ.get("CAPGATE_ADMIN_KEY")
    for var in ("CAPGATE_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY"):
        value = os.environ.get(var, "")
        if value.startswith("sk-cg-admin-") or (admin and value == admin):
            fail(f"{var} holds the admin key. {NEEDS_VIRTUAL_KEY}")
        if value.startswith("sk-cg-"):
            return value
    return None


def _no_key() -> NoReturn:
    if os.environ.get("CAPGATE_ADMIN_KEY"):
        fail(NEEDS_VIRTUAL_KEY)
    fail(
        "set CAPGATE_KEY (or ANTHROPIC_API_KEY) to your capgate key (on a machine enrolled in "
        f"hook mode, capgate status reads {machine_status.hook_dir()}/ instead)"
    )


def _url() -> str:
    url = os.environ.get("CAPGATE_URL") or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_URL
    return url.rstrip("/").removesuffix("/v1")


def _share(row: dict[str, Any]) -> tuple[Decimal, Decimal]:
    used = Decimal(str(row["used"])) + Decimal(str(row["reserved"]))
    return used, Decimal(str(row["max"]))


def _dollars(value: Any) -> str:
    return format_usd(usd_to_nano(value))


def _count(value: Any) -> str:
    return f"{int(value):,}"


def status(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="capgate server (env CAPGATE_URL or ANTHROPIC_BASE_URL; on a hook machine "
            "the server it was enrolled with)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show your own limits (your key's, or on a hook machine your person's): used, left
    and when each resets."""
    key = _key()
    if key is None:
        machine = machine_status.installed()
        if machine is None:
            _no_key()
        answer = machine_status.fetch(machine, url)
        if as_json:
            typer.echo(answer.text)
        else:
            machine_status.show(answer.json())
        return
    base = (url or _url()).rstrip("/")
    try:
        response = httpx.get(
            base + "/v1/me", headers={"authorization": f"Bearer {key}"}, timeout=15
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach capgate at {base}: {exc}")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        fail(f"{response.status_code}: {message}")
    me = response.json()
    if as_json:
        typer.echo(response.text)
        return
    console = Console()
    console.print(
        f"{me['key']}  {me['status']}  team={text(me['team'])} user={text(me['user'])}",
        markup=False,
        highlight=False,
    )
    table = Table(box=None)
    for header in ("scope", "limit", "used", "", "max", "left", "resets"):
        table.add_column(header, overflow="fold")  # an amount cut with '…' would read wrong
    groups = [("key", me["key"], me["limits"])]
    groups += [(s["kind"], s["name"], s["limits"]) for s in me.get("scopes", [])]
    for kind, name, rows in groups:
        for row in rows:
            used, top = _share(row)
            label = limit_label(row)
            fmt = _dollars if row["metric"] == "cost_usd" else _count
            bar = ProgressBar(total=float(top) or 1.0, completed=float(min(used, top)), width=24)
            table.add_row(
                f"{kind} {name}", label, fmt(row["used"]), bar, fmt(row["max"]),
                fmt(row["remaining"]), text(row.get("resets")),
            )  # fmt: skip
    if not table.row_count:
        console.print("no limits on this key or above it")
    else:
        console.print(table)
