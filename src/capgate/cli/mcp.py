"""`capgate mcp`: the MCP server for Claude Code (stdio) or any MCP client (HTTP)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from capgate.cli.client import fail


def mcp(
    http: Annotated[
        bool, typer.Option("--http", help="serve streamable HTTP at /mcp instead of stdio")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="--http: address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="--http: port")] = 8765,
) -> None:
    """Serve your local costs and capgate budgets as MCP tools (stdio by default)."""
    try:
        from capgate.local.files import system_zone
        from capgate.mcp.server import build
        from capgate.mcp.tools import LocalUsage
    except ModuleNotFoundError as exc:  # the SDK is an extra: say how to get it
        fail(f"capgate mcp needs the MCP SDK ({exc.name}): pip install 'capgate[mcp]'")
    usage = LocalUsage(os.environ, Path.home(), Path.cwd(), system_zone)
    server = build(usage, dict(os.environ))
    if http:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run("stdio")
