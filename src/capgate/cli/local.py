"""`capgate local`: what this machine's Claude Code and Codex sessions cost at API prices
(capgate's own price table), read from their session files. No server needed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from capgate.cli.errors import fail
from capgate.local import run
from capgate.local.run import LocalError

app = typer.Typer(
    help="What your Claude Code and Codex sessions cost at API prices, from their files.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (shape: docs/local.md)")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="from this local date (YYYYMMDD or YYYY-MM-DD)")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="up to this local date, inclusive")]
ZoneOpt = Annotated[
    str | None,
    typer.Option("--timezone", help="IANA zone for dates (default: the system's)"),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="only this project (Claude Code: its projects/ directory name; Codex: its cwd)",
    ),
]
AgentOpt = Annotated[str, typer.Option("--agent", help="claude | codex | all")]
BreakdownOpt = Annotated[bool, typer.Option("--breakdown", help="a row per model")]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="read every file again (no ~/.cache/capgate)")
]
OrderOpt = Annotated[
    str, typer.Option("--order", help="asc (oldest first, the default) or desc (newest first)")
]
SessionOrderOpt = Annotated[
    str, typer.Option("--order", help="desc (dearest first, the default) or asc (cheapest first)")
]


def _run(command: Callable[..., None], *args: Any) -> None:
    try:
        command(*args)
    except LocalError as exc:
        fail(str(exc))


@app.command("daily")
def daily_command(
    json_out: JsonOpt = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    timezone: ZoneOpt = None,
    project: ProjectOpt = None,
    agent: AgentOpt = "all",
    breakdown: BreakdownOpt = False,
    no_cache: NoCacheOpt = False,
    order: OrderOpt = "asc",
    instances: Annotated[bool, typer.Option("--instances", help="a report per project")] = False,
) -> None:
    """Cost and tokens per local day."""
    _run(
        run.daily,
        json_out,
        since,
        until,
        timezone,
        project,
        agent,
        breakdown,
        no_cache,
        order,
        instances,
    )


@app.command("weekly")
def weekly_command(
    json_out: JsonOpt = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    timezone: ZoneOpt = None,
    project: ProjectOpt = None,
    agent: AgentOpt = "all",
    breakdown: BreakdownOpt = False,
    no_cache: NoCacheOpt = False,
    order: OrderOpt = "asc",
    start_of_week: Annotated[
        str, typer.Option("--start-of-week", help="the day weeks start on (sunday ... saturday)")
    ] = "sunday",
) -> None:
    """Cost and tokens per week (weeks start on Sunday unless --start-of-week says)."""
    _run(
        run.weekly,
        json_out,
        since,
        until,
        timezone,
        project,
        agent,
        breakdown,
        no_cache,
        order,
        start_of_week,
    )


@app.command("monthly")
def monthly_command(
    json_out: JsonOpt = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    timezone: ZoneOpt = None,
    project: ProjectOpt = None,
    agent: AgentOpt = "all",
    breakdown: BreakdownOpt = False,
    no_cache: NoCacheOpt = False,
    order: OrderOpt = "asc",
) -> None:
    """Cost and tokens per month."""
    _run(run.monthly, json_out, since, until, timezone, project, agent, breakdown, no_cache, order)


@app.command("session")
def session_command(
    json_out: JsonOpt = False,
    since: SinceOpt = None,
    until: UntilOpt = None,
    timezone: ZoneOpt = None,
    project: ProjectOpt = None,
    agent: AgentOpt = "all",
    breakdown: BreakdownOpt = False,
    no_cache: NoCacheOpt = False,
    order: SessionOrderOpt = "desc",
) -> None:
    """Cost and tokens per session, dearest first (--order asc: cheapest first)."""
    _run(run.session, json_out, since, until, timezone, project, agent, breakdown, no_cache, order)


@app.command("blocks")
def blocks_command(
    json_out: JsonOpt = False,
    timezone: ZoneOpt = None,
    order: OrderOpt = "asc",
    live: Annotated[
        bool, typer.Option("--live", help="watch the current block, refreshing in place")
    ] = False,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.05, help="seconds between --live updates")
    ] = 5.0,
    stop_after: Annotated[
        int, typer.Option("--stop-after", min=0, help="--live: stop after N updates (0: never)")
    ] = 0,
) -> None:
    """Claude Code's use in 5-hour blocks, as its usage limits count them."""
    _run(run.blocks_report, json_out, timezone, order, live, refresh, stop_after)
