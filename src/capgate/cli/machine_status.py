"""`capgate status` on a hook machine: the person's limits from the server's truth
(GET /hook/v1/status), read with the machine token that the hook's installer left in
/etc/capgate-hook/ (`CAPGATE_HOOK_DIR` overrides the directory, for tests).

The table is claude-code-limiter's: per limit (scope, model, window) what is used, a
progress bar, the max, what is left and when it resets, in the person's timezone."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from capgate.cli.client import fail
from capgate.cli.render import amount, reset_in, text
from capgate.core.limits import format_usd
from capgate.mcp import budget

# What a limit counts, in hook mode's words: requests are prompts there.
METRIC_WORDS = {
    "requests": "prompts",
    "credits": "credits",
    "cost_usd": "dollars",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "concurrent": "at once",
}
WINDOW_WORDS = {"minute": "a minute", "hour": "an hour", "day": "a day", "week": "a week",
                "month": "a month", "total": "in total"}  # fmt: skip


Machine = budget.HookMachine  # this machine's enrolment: its server and token (cgh-...)


def hook_dir() -> Path:
    return budget.hook_dir(os.environ)


def installed() -> Machine | None:
    """The enrolment in the hook directory, or None when hook mode is not installed here
    (no config.json or no token). Read as the MCP budget tool and the status line read it."""
    try:
        return budget.hook_machine(os.environ)
    except budget.BudgetError as exc:
        fail(str(exc))


def fetch(machine: Machine, url: str | None) -> httpx.Response:
    base = (url or machine.server).rstrip("/")
    try:
        response = httpx.get(
            base + "/hook/v1/status",
            headers={"authorization": f"Bearer {machine.token}"},
            timeout=15,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach capgate at {base}: {exc}")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        hint = ""
        if response.status_code == 401:
            hint = " (this machine's token was refused: revoked? reinstall with a new code)"
        fail(f"{response.status_code}: {message}{hint}")
    return response


def show(me: dict[str, Any], console: Console | None = None) -> None:
    """The person, this machine, the limits table and the models allowed now."""
    console = console or Console()
    timezone = me.get("timezone") or "UTC"
    console.print(
        f"{text(me.get('user'))}  {text(me.get('status'))}  machine={text(me.get('machine'))} "
        f"timezone={timezone}",
        markup=False,
        highlight=False,
    )
    table = limits_table(me.get("limits") or [], timezone)
    console.print(table if table.row_count else "no limits for this person or machine")
    for line in _models(me.get("models")):
        console.print(line, markup=False, highlight=False)


def limits_table(rows: list[dict[str, Any]], timezone: str) -> Table:
    """One line per limit: scope, model, what and per when, used (and what prompts in
    flight hold, when any do), a bar, max, left, and when it resets in `timezone`."""
    held = any(isinstance(r.get("held"), int) and r["held"] > 0 for r in rows)
    table = Table(box=None)
    headers = ["scope", "model", "limit", "used", *(["in flight"] if held else []), "",
               "max", "left", f"resets ({timezone})"]  # fmt: skip
    for header in headers:
        table.add_column(header, overflow="fold")  # an amount cut with '…' would read wrong
    for row in rows:
        metric = str(row.get("metric"))
        window = str(row.get("window"))
        what = f"{METRIC_WORDS.get(metric, metric)} {WINDOW_WORDS.get(window, window)}"
        table.add_row(
            text(row.get("scope")), row.get("model") or "all", what, _shown(row, "used"),
            *([_held(row)] if held else []), _bar(row), _shown(row, "max"),
            _shown(row, "left"), reset_in(row.get("resets_at"), timezone, zone_name=False),
        )  # fmt: skip
    return table


def _models(models: Any) -> list[str]:
    """`models: ...` when the person may use only some; what a schedule blocks now."""
    if not isinstance(models, dict):
        return []
    lines = []
    if models.get("allowed"):
        lines.append("models: " + ", ".join(map(str, models["allowed"])))
    for model, reason in (models.get("blocked") or {}).items():
        lines.append(f"blocked now: {model} ({reason})")
    return lines


def _held(row: dict[str, Any]) -> str:
    """What the prompts in flight hold (their estimate until their calls are reported)."""
    held = row.get("held")
    if not isinstance(held, int) or held <= 0:
        return "-"
    return format_usd(held) if row.get("metric") == "cost_usd" else f"{held:,}"


def _shown(row: dict[str, Any], name: str) -> str:
    """The server's text for an amount (`$1.23`, `14`), else the amount formatted here
    (amounts in the metric's unit: nano-dollars for cost)."""
    shown = row.get(f"{name}_text")
    if shown is not None:
        return str(shown)
    value = row.get(name)
    if row.get("metric") == "cost_usd" and isinstance(value, int):
        return format_usd(value)
    return amount(str(row.get("metric")), value)


def _bar(row: dict[str, Any]) -> ProgressBar:
    """Used and held (prompts in flight) against the max."""
    try:
        used = Decimal(str(row.get("used") or 0)) + Decimal(str(row.get("held") or 0))
        top = Decimal(str(row.get("max") or 0))
    except InvalidOperation:
        used, top = Decimal(0), Decimal(0)
    return ProgressBar(total=float(top) or 1.0, completed=float(min(used, top)), width=16)
