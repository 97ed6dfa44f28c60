"""Reports for people (rich tables that fit 80 columns) and for programs (JSON in
ccusage's field names, so scripts can switch). JSON costs are dollars as numbers with
every nano-dollar digit; tables round to cents."""

from __future__ import annotations

from datetime import datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from capgate.local.blocks import Block, Burn, iso
from capgate.local.records import Skipped
from capgate.local.report import Row, Totals

if TYPE_CHECKING:  # rich is imported where a table is made: JSON needs none of it
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

PERIOD_FIELD = {"daily": "date", "weekly": "week", "monthly": "month"}


def dollars(nano: int) -> float:
    return float(Decimal(nano).scaleb(-9))


def _tokens(t: Totals) -> dict[str, Any]:
    return {
        "inputTokens": t.input_tokens,
        "outputTokens": t.output_tokens,
        "cacheCreationTokens": t.cache_creation_tokens,
        "cacheCreation1hTokens": t.cache_write_1h_tokens,
        "cacheReadTokens": t.cache_read_tokens,
        "reasoningOutputTokens": t.reasoning_tokens,
        "totalTokens": t.total_tokens,
        "totalCost": dollars(t.cost_nano),
        "unpricedModels": sorted(t.unpriced),
    }


def _row_json(row: Row) -> dict[str, Any]:
    out = _tokens(row.totals)
    out["agents"] = sorted(row.agents)
    out["modelsUsed"] = sorted(row.models)
    out["modelBreakdowns"] = [
        {"modelName": name, **_model_json(t)}
        for name, t in sorted(row.models.items(), key=lambda kv: (-kv[1].cost_nano, kv[0]))
    ]
    return out


def _model_json(t: Totals) -> dict[str, Any]:
    fields = _tokens(t)
    fields["cost"] = fields.pop("totalCost")
    fields["priced"] = not fields.pop("unpricedModels")
    return fields


def skipped_json(skipped: Skipped) -> dict[str, Any]:
    return {"badLines": skipped.bad_lines, "unreadableFiles": list(skipped.unreadable_files)}


def period_json(kind: str, rows: list[Row], total: Row, skipped: Skipped) -> dict[str, Any]:
    name = PERIOD_FIELD[kind]
    items = [{name: r.key, **_row_json(r)} for r in rows]
    totals = _tokens(total.totals)
    return {kind: items, "totals": totals, "skipped": skipped_json(skipped)}


def projects_json(
    kind: str, projects: dict[str, list[Row]], total: Row, skipped: Skipped
) -> dict[str, Any]:
    """`--instances`: ccusage's `{"projects": {project: [rows]}, "totals"}`."""
    name = PERIOD_FIELD[kind]
    items = {p: [{name: r.key, **_row_json(r)} for r in rows] for p, rows in projects.items()}
    return {"projects": items, "totals": _tokens(total.totals), "skipped": skipped_json(skipped)}


def session_json(rows: list[Row], total: Row, skipped: Skipped) -> dict[str, Any]:
    items = []
    for r in rows:
        items.append(
            {
                "sessionId": r.key,
                "agent": sorted(r.agents)[0] if r.agents else "",
                "projectPath": r.project,
                "firstActivity": iso(r.first) if r.first else None,
                "lastActivity": iso(r.last) if r.last else None,
                **_row_json(r),
            }
        )
    return {"sessions": items, "totals": _tokens(total.totals), "skipped": skipped_json(skipped)}


def block_json(block: Block, pace: Burn | None) -> dict[str, Any]:
    t = block.totals
    return {
        "id": block.id,
        "startTime": iso(block.start),
        "endTime": iso(block.end),
        "actualEndTime": iso(block.last) if block.last else None,
        "isActive": block.active,
        "isGap": block.gap,
        "entries": t.entries,
        "tokenCounts": {
            "inputTokens": t.input_tokens,
            "outputTokens": t.output_tokens,
            "cacheCreationInputTokens": t.cache_creation_tokens,
            "cacheCreation1hInputTokens": t.cache_write_1h_tokens,
            "cacheReadInputTokens": t.cache_read_tokens,
        },
        "totalTokens": t.total_tokens,
        "costUSD": dollars(t.cost_nano),
        "models": sorted(block.models),
        "unpricedModels": sorted(t.unpriced),
        "burnRate": None
        if pace is None
        else {
            "tokensPerMinute": pace.tokens_per_minute,
            "costPerHour": dollars(pace.cost_nano_per_hour),
        },
        "projection": None
        if pace is None
        else {
            "totalTokens": pace.projected_tokens,
            "totalCost": dollars(pace.projected_cost_nano),
            "remainingMinutes": pace.remaining_minutes,
        },
    }


# ---- tables ---------------------------------------------------------------------------


def cents(nano: int) -> str:
    if 0 < nano < 5_000_000:
        return "<$0.01"
    whole_cents = (nano + 5_000_000) // 10_000_000
    return f"${whole_cents // 100:,}.{whole_cents % 100:02d}"


def count(n: int, compact: bool) -> str:
    if not compact or n < 10_000:
        return f"{n:,}"
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def short_model(model: str) -> str:
    return model.removeprefix("claude-")


def _cost_cell(t: Totals) -> str:
    return cents(t.cost_nano) + ("*" if t.unpriced else "")


def _cells(t: Totals, compact: bool) -> list[str]:
    return [
        count(t.input_tokens, compact),
        count(t.output_tokens, compact),
        count(t.cache_creation_tokens, compact),
        count(t.cache_read_tokens, compact),
        _cost_cell(t),
    ]


def _table(title: str, rows: list[Row], total: Row, breakdown: bool, compact: bool) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=None, pad_edge=False, show_edge=False, box=None, header_style="bold")
    table.add_column(title, no_wrap=True)
    table.add_column("models", overflow="fold")
    for name in ("input", "output", "c.write", "c.read", "cost"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        models = "" if breakdown else "\n".join(short_model(m) for m in sorted(row.models))
        table.add_row(row.key, models, *_cells(row.totals, compact))
        if breakdown:
            for name, t in sorted(row.models.items(), key=lambda kv: (-kv[1].cost_nano, kv[0])):
                table.add_row("", Text("└ " + short_model(name), style="dim"), *_cells(t, compact))
    table.add_section()
    table.add_row(Text("total", style="bold"), "", *_cells(total.totals, compact))
    return table


def report_table(
    console: Console, title: str, rows: list[Row], total: Row, breakdown: bool
) -> Table:
    """Exact counts when they fit the terminal, else 12.3k / 4.6M."""
    from rich.measure import Measurement

    table = _table(title, rows, total, breakdown, compact=False)
    wide = console.options.update_width(10**6)
    if Measurement.get(console, wide, table).maximum > console.width:
        table = _table(title, rows, total, breakdown, compact=True)
    return table


def session_titles(rows: list[Row]) -> list[Row]:
    """Session rows keyed for people: project and a short session id."""
    out = []
    for r in rows:
        copy = Row(key=_session_label(r), totals=r.totals, models=r.models, agents=r.agents)
        out.append(copy)
    return out


def _session_label(row: Row) -> str:
    project = row.project.rstrip("/").rsplit("/", 1)[-1].rsplit("-", 1)[-1] or "-"
    session = row.key.rsplit("/", 1)[-1]
    if session.startswith("rollout-"):  # Codex: rollout-<time>-<uuid>
        session = session[-36:]
    return f"{project[:14]} {session[:8]}"


def footer(total: Row, skipped: Skipped) -> Text:
    from rich.text import Text

    lines = []
    if total.totals.unpriced:
        names = ", ".join(sorted(total.totals.unpriced))
        lines.append(
            f"* no price in capgate's table for: {names} (tokens counted, cost not included)"
        )
    if skipped.bad_lines or skipped.unreadable_files:
        lines.append(
            f"skipped: {skipped.bad_lines} unreadable line(s), "
            f"{len(skipped.unreadable_files)} unreadable file(s)"
        )
    return Text("\n".join(lines), style="yellow")


def blocks_table(console: Console, items: list[Block], zone: tzinfo) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(pad_edge=False, show_edge=False, box=None, header_style="bold")
    table.add_column("block start", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("models", overflow="fold")
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    for block in items:
        start = block.start.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        if block.gap:
            table.add_row(Text(start, style="dim"), Text("gap", style="dim"), "", "", "")
            continue
        status = Text("ACTIVE", style="bold green") if block.active else Text("done")
        models = "\n".join(short_model(m) for m in sorted(block.models))
        t = block.totals
        table.add_row(start, status, models, count(t.total_tokens, True), _cost_cell(t))
    return table


def live_panel(block: Block | None, pace: Burn | None, now: datetime, zone: tzinfo) -> Group:
    from rich.console import Group, RenderableType
    from rich.text import Text

    if block is None:
        return Group(Text("no active 5-hour block: no Claude Code use in the last 5 hours"))
    t = block.totals
    ends = block.end.astimezone(zone).strftime("%H:%M")
    lines: list[RenderableType] = [
        Text(f"current block {block.start.astimezone(zone):%Y-%m-%d %H:%M} - {ends}", "bold"),
        Text(f"tokens {t.total_tokens:,}   cost {_cost_cell(t)}   answers {t.entries}"),
    ]
    if pace is None:
        lines.append(Text("burn rate: not enough data yet"))
    else:
        lines.append(
            Text(
                f"burn rate {pace.tokens_per_minute:,.0f} tokens/min   "
                f"{cents(pace.cost_nano_per_hour)}/hour"
            )
        )
        lines.append(
            Text(
                f"projection by {ends}: {pace.projected_tokens:,} tokens   "
                f"{cents(pace.projected_cost_nano)}   ({pace.remaining_minutes} min left)"
            )
        )
    lines.append(Text(f"updated {now.astimezone(zone):%H:%M:%S} - Ctrl-C to stop", "dim"))
    return Group(*lines)
