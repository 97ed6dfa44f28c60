"""`capgate db backup|restore`: copies of the database, taken and put back on this machine.

They work on the file itself (not through a server), so they find the database the way
`serve` does: `--database-url`, `CAPGATE_DATABASE_URL`, the config file's
`server.database_url`, then `sqlite:///capgate.db`. They are for SQLite only: a PostgreSQL
database is backed up and restored with PostgreSQL's own tools (`pg_dump`, `pg_restore`;
docs/deployment.md), which these commands say and stop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from capgate.cli.db_copy import copy_command
from capgate.config import ConfigError, load_config, sqlite_path, with_overrides
from capgate.store.backup import BackupError, backup, restore

app = typer.Typer(
    help="Back up and restore the database (run on the machine that holds it).",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file (for server.database_url)")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(help="sqlite:///PATH (default: CAPGATE_DATABASE_URL, the config, capgate.db)"),
]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _database(config: str | None, database_url: str | None) -> Path:
    try:
        cfg = with_overrides(load_config(config), os.environ, {"database_url": database_url})
        url = cfg.server.database_url
        if url.startswith(POSTGRES_SCHEMES):
            typer.secho(
                "error: `capgate db backup` and `restore` copy a SQLite file; this database "
                "is PostgreSQL: use pg_dump and pg_restore (docs/operations.md, Backup and restore)",
                fg="red",
                err=True,
            )
            raise typer.Exit(2)
        return Path(sqlite_path(url))
    except ConfigError as exc:
        typer.secho(f"capgate: bad configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _fail(exc: BackupError) -> typer.Exit:
    typer.secho(f"error: {exc}", fg="red", err=True)
    return typer.Exit(1)


@app.command("backup")
def backup_command(
    path: Annotated[str, typer.Argument(help="the new file to write (must not exist)")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Copy the database to PATH, consistently, while servers keep running."""
    database = _database(config, database_url)
    try:
        result = backup(database, path)
    except BackupError as exc:
        raise _fail(exc) from None
    print(
        f"backed up {database} to {result.path} (owner-only): schema version "
        f"{result.schema_version}, {result.requests} ledger entries"
    )


@app.command("restore")
def restore_command(
    path: Annotated[str, typer.Argument(help="a file made by `capgate db backup`")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Replace the database with the backup PATH; every server using it must be stopped."""
    database = _database(config, database_url)
    try:
        result = restore(path, database)
    except BackupError as exc:
        raise _fail(exc) from None
    if result.set_aside is not None:
        print(f"the database it replaced is kept at {result.set_aside}")
    migrated = (
        f", migrated from schema version {result.migrated_from}"
        if result.migrated_from != result.schema_version
        else ""
    )
    print(
        f"restored {path} to {result.database}: schema version {result.schema_version}"
        f"{migrated}, {result.requests} ledger entries"
    )


app.command("copy")(copy_command)  # cli/db_copy.py: SQLite -> PostgreSQL
