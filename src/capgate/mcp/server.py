"""The MCP server (official `mcp` SDK): the tools, over stdio or streamable HTTP.
Everything it knows comes from `LocalUsage` (the session files) and `budget` (the
server's /v1/me); this module only declares the tools and turns errors into tool errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from capgate import __version__
from capgate.mcp import budget
from capgate.mcp.tools import LocalUsage, UsageError

Agent = Literal["claude", "codex", "all"]
Since = Annotated[str | None, Field(description="from this local date (YYYY-MM-DD)")]
Until = Annotated[str | None, Field(description="up to this local date, inclusive")]
Zone = Annotated[str | None, Field(description="IANA zone for dates (default: the system's)")]
Project = Annotated[str | None, Field(description="only this project")]
Breakdown = Annotated[bool, Field(description="a row per model inside each row")]
Last = Annotated[int, Field(ge=0, le=1000, description="at most this many rows (0: all)")]
Order = Literal["asc", "desc"]
PeriodOrder = Annotated[
    Order, Field(description="asc: oldest first (the default); desc: newest first")
]
Weekday = Literal["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]

INSTRUCTIONS = (
    "What this developer's Claude Code and Codex sessions cost at API prices (from the "
    "session files on this machine) and, when a capgate key is configured or the machine "
    "is enrolled in capgate's hook mode, their capgate budgets: used, left, resets and a "
    "forecast. Costs are US dollars."
)


def build(
    usage: LocalUsage, env: Mapping[str, str], clock: Callable[[], float] = time.time
) -> MCPServer:
    server: MCPServer = MCPServer(
        "capgate", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    @server.tool(name="usage_daily")
    def usage_daily(
        since: Since = None,
        until: Until = None,
        timezone: Zone = None,
        project: Project = None,
        agent: Agent = "all",
        breakdown: Breakdown = False,
        order: PeriodOrder = "asc",
        instances: Annotated[
            bool, Field(description="a report per project: {projects: {name: rows}}")
        ] = False,
        last: Last = 31,
    ) -> dict[str, Any]:
        """Cost and tokens per local day, as `capgate local daily --json`; the most
        recent rows."""
        with _tool_errors():
            query = usage.query(since, until, timezone, project, agent)
            if instances:
                return usage.projects("daily", query, breakdown, last, order)
            return usage.period("daily", query, breakdown, last, order)

    @server.tool(name="usage_weekly")
    def usage_weekly(
        since: Since = None,
        until: Until = None,
        timezone: Zone = None,
        project: Project = None,
        agent: Agent = "all",
        breakdown: Breakdown = False,
        order: PeriodOrder = "asc",
        start_of_week: Annotated[
            Weekday, Field(description="the day weeks start on; a week is keyed by its date")
        ] = "sunday",
        last: Last = 31,
    ) -> dict[str, Any]:
        """Cost and tokens per week, as `capgate local weekly --json`; the most recent rows."""
        with _tool_errors():
            query = usage.query(since, until, timezone, project, agent, start_of_week)
            return usage.period("weekly", query, breakdown, last, order)

    @server.tool(name="usage_monthly")
    def usage_monthly(
        since: Since = None,
        until: Until = None,
        timezone: Zone = None,
        project: Project = None,
        agent: Agent = "all",
        breakdown: Breakdown = False,
        order: PeriodOrder = "asc",
        last: Last = 31,
    ) -> dict[str, Any]:
        """Cost and tokens per month, as `capgate local monthly --json`; the most recent
        rows."""
        with _tool_errors():
            query = usage.query(since, until, timezone, project, agent)
            return usage.period("monthly", query, breakdown, last, order)

    @server.tool(name="usage_session")
    def usage_session(
        since: Since = None,
        until: Until = None,
        timezone: Zone = None,
        project: Project = None,
        agent: Agent = "all",
        breakdown: Breakdown = False,
        order: Annotated[
            Order, Field(description="desc: dearest first (the default); asc: cheapest first")
        ] = "desc",
        last: Last = 20,
    ) -> dict[str, Any]:
        """Cost and tokens per session, dearest first, as `capgate local session --json`."""
        with _tool_errors():
            query = usage.query(since, until, timezone, project, agent)
            return usage.sessions(query, breakdown, last, order)

    @server.tool(name="usage_blocks")
    def usage_blocks(
        active_only: Annotated[bool, Field(description="only the current block")] = False,
        order: PeriodOrder = "asc",
        last: Last = 10,
    ) -> dict[str, Any]:
        """Claude Code's use in 5-hour blocks (as its usage limits count them), with the
        active block's burn rate and projection, as `capgate local blocks --json`."""
        with _tool_errors():
            return usage.blocks(active_only, last, order)

    @server.tool(name="session_cost")
    def session_cost(
        session_id: Annotated[
            str | None,
            Field(description="a session id (default: the latest session of this project)"),
        ] = None,
    ) -> dict[str, Any]:
        """The current session's cost so far at API prices, with its tokens and models."""
        with _tool_errors():
            return usage.current_session(session_id)

    @server.tool(name="capgate_budget")
    def capgate_budget() -> dict[str, Any]:
        """Your capgate limits (key, user, team, org): used, left, when each resets, and a
        forecast of each window's use at its end at the current pace. Needs CAPGATE_KEY
        (and CAPGATE_URL), or this machine enrolled in capgate's hook mode."""
        try:
            me = budget.me_from(env)
        except budget.BudgetError as exc:
            raise ToolError(str(exc)) from None
        return budget.summarize(me, clock())

    return server


@contextmanager
def _tool_errors() -> Iterator[None]:
    """A bad argument or location becomes the tool's error (is_error), with its message."""
    try:
        yield
    except UsageError as exc:
        raise ToolError(str(exc)) from None
