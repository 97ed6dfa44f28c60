"""`capgate local`: what this machine's Claude Code and Codex sessions cost at API prices
(capgate's own price table), read from their session files. No server needed."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console
from rich.live import Live

from capgate.cli.errors import fail
from capgate.local import render
from capgate.local.blocks import Block, blocks, burn
from capgate.local.cache import FileCache, default_path
from capgate.local.costing import Costing
from capgate.local.dedup import dedupe
from capgate.local.files import LocationError, read_entries, system_zone
from capgate.local.records import Entry, Skipped
from capgate.local.report import Query, by_period, by_session, parse_day
from capgate.pricing import PricingTable

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


def _zone(name: str | None) -> tzinfo:
    if not name:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--timezone: unknown time zone {name!r} (an IANA name like Europe/Berlin)")


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError:
        fail(f"{option}: a date like 2026-12-04 or 20261204")


def _load(agent: str, use_cache: bool = True) -> tuple[list[Entry], Skipped]:
    if agent not in ("claude", "codex", "all"):
        fail("--agent: one of claude, codex, all")
    skipped = Skipped()
    cache = FileCache(default_path(os.environ, Path.home()) if use_cache else None)
    try:
        entries = dedupe(
            read_entries(os.environ, Path.home(), agent, skipped, cache, os.cpu_count() or 1)
        )
    except LocationError as exc:
        fail(str(exc))
    cache.save()
    return entries, skipped


def _costing() -> Costing:
    return Costing(PricingTable.load())


def _report(kind: str, json_out: bool, query: Query, breakdown: bool, cache: bool) -> None:
    entries, skipped = _load(query.agent, cache)
    costing = _costing()
    if kind == "session":
        rows, total = by_session(entries, costing, query)
        if json_out:
            print(json.dumps(render.session_json(rows, total, skipped), indent=2))
            return
        rows, title = render.session_titles(rows), "session"
    else:
        rows, total = by_period(kind, entries, costing, query)
        if json_out:
            print(json.dumps(render.period_json(kind, rows, total, skipped), indent=2))
            return
        title = render.PERIOD_FIELD[kind]
    console = Console()
    table = render.report_table(console, title, rows, total, breakdown)
    console.print(table)
    note = render.footer(total, skipped)
    if note.plain:
        console.print(note)


def _command(kind: str, doc: str) -> None:
    def command(
        json_out: JsonOpt = False,
        since: SinceOpt = None,
        until: UntilOpt = None,
        timezone: ZoneOpt = None,
        project: ProjectOpt = None,
        agent: AgentOpt = "all",
        breakdown: BreakdownOpt = False,
        no_cache: NoCacheOpt = False,
    ) -> None:
        query = Query(
            zone=_zone(timezone),
            since=_day(since, "--since"),
            until=_day(until, "--until"),
            agent=agent,
            project=project,
        )
        _report(kind, json_out, query, breakdown, not no_cache)

    command.__doc__ = doc
    app.command(kind)(command)


_command("daily", "Cost and tokens per local day.")
_command("weekly", "Cost and tokens per week (weeks start on Sunday).")
_command("monthly", "Cost and tokens per month.")
_command("session", "Cost and tokens per session, dearest first.")


@app.command("blocks")
def blocks_command(
    json_out: JsonOpt = False,
    timezone: ZoneOpt = None,
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
    zone = _zone(timezone)
    if live:
        _live(zone, refresh, stop_after)
        return
    items, now, skipped = _blocks()
    if json_out:
        data = [render.block_json(b, burn(b, now)) for b in items]
        print(json.dumps({"blocks": data, "skipped": render.skipped_json(skipped)}, indent=2))
        return
    console = Console()
    console.print(render.blocks_table(console, items, zone))
    active = next((b for b in items if b.active), None)
    if active is not None:
        console.print(render.live_panel(active, burn(active, now), now, zone))


def _blocks() -> tuple[list[Block], datetime, Skipped]:
    entries, skipped = _load("claude")
    now = datetime.now(UTC)
    return blocks(entries, _costing(), now), now, skipped


def _live(zone: tzinfo, refresh: float, stop_after: int) -> None:
    updates = 0
    with Live(render.live_panel(None, None, datetime.now(UTC), zone), auto_refresh=False) as view:
        try:
            while True:
                items, now, _ = _blocks()
                active = next((b for b in items if b.active), None)
                view.update(render.live_panel(active, burn(active, now) if active else None,
                                              now, zone), refresh=True)  # fmt: skip
                updates += 1
                if stop_after and updates >= stop_after:
                    return
                time.sleep(refresh)
        except KeyboardInterrupt:
            return
