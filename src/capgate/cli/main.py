"""`capgate`: the command line. `serve` runs the gateway; the rest talk to a running one."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from capgate import __version__
from capgate.cli import alerts as alerts_cli
from capgate.cli import db as db_cli
from capgate.cli import hook as hook_cli
from capgate.cli import keys as keys_cli
from capgate.cli import routing as routing_cli
from capgate.cli import secrets as secrets_cli
from capgate.cli.local import app as local_app
from capgate.cli.mcp import mcp
from capgate.cli.scopes import scope_app
from capgate.cli.status import status
from capgate.cli.statusline import statusline
from capgate.cli.usage import usage
from capgate.config import ConfigError, load_config, with_overrides

app = typer.Typer(
    help="capgate: an LLM gateway with hard, exact budgets for teams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="capgate server for the commands that talk to one (env CAPGATE_URL); "
            "also accepted after the command",
        ),
    ] = None,
) -> None:
    """capgate: an LLM gateway with hard, exact budgets for teams."""
    if url:  # `capgate --url X keys list` = `capgate keys list --url X`
        os.environ["CAPGATE_URL"] = url


app.add_typer(keys_cli.app, name="keys")
app.add_typer(db_cli.app, name="db")
app.add_typer(alerts_cli.app, name="alerts")
app.add_typer(local_app, name="local")
app.add_typer(hook_cli.app, name="hook")
app.add_typer(routing_cli.app, name="routing")
app.add_typer(secrets_cli.app, name="secrets")
for _plural, _what, _help in (
    ("users", "user", "Budgets per person: keys join a user with --user."),
    ("teams", "team", "Budgets per team: keys join a team with --team."),
    ("orgs", "org", "Budgets per org: teams join an org with --org."),
    ("providers", "provider", "Budgets per provider (named as in the config)."),
):
    app.add_typer(scope_app(_plural, _what, _help), name=_plural)
app.command()(usage)
app.command()(status)
app.command()(mcp)
app.command()(statusline)


@app.command()
def serve(
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [4000]; 0 picks a free one")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="add a built-in mock provider and a demo key")
    ] = False,
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///PATH (default: sqlite:///capgate.db)")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug | info | warning | error (default: info); to stderr")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="text | json (default: text)")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate chain: serve HTTPS")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    workers: Annotated[
        int | None, typer.Option(help="worker processes answering on the port (default: 1)")
    ] = None,
) -> None:
    """Run the gateway, admin API and dashboard on one port."""
    try:
        cfg = with_overrides(
            load_config(config),
            os.environ,
            {"host": host, "port": port, "database_url": database_url,
             "log_level": log_level, "log_format": log_format,
             "tls_cert": tls_cert, "tls_key": tls_key, "workers": workers},
        )  # fmt: skip
    except ConfigError as exc:
        typer.secho(f"capgate: bad configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    from capgate.cli.serve import run  # the server's imports are only paid by `serve`

    # A server must survive clients that hang up mid-write: ignore SIGPIPE (the CLI's
    # printing commands restore the default so `capgate usage | head` exits quietly).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    run(cfg, demo=demo)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    if sys.platform != "win32":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `capgate usage | head` exits quietly
    app()
