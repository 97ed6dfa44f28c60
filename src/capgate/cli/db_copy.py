"""`capgate db copy --from sqlite:///capgate.db --to postgresql://...`: move a team's
database from SQLite to PostgreSQL (store/copy.py), verified by counts and sums."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from capgate.store.copy import CopyError, copy_to_postgres


def copy_command(
    source: Annotated[
        str, typer.Option("--from", help="the SQLite database to copy: sqlite:///PATH")
    ],
    target: Annotated[
        str,
        typer.Option("--to", help="an empty PostgreSQL database: postgresql://USER@HOST:PORT/NAME"),
    ],
) -> None:
    """Copy a SQLite database into an empty PostgreSQL database, in one transaction, and
    check counts and sums; stop every server on the source first for the final copy."""
    if not source.startswith("sqlite:///"):
        _fail(f"--from {source!r}: give the SQLite database as sqlite:///PATH")
    if not target.startswith(("postgresql://", "postgres://")):
        _fail(f"--to {target!r}: give the PostgreSQL database as postgresql://...")
    path = source.removeprefix("sqlite:///")
    try:
        result = asyncio.run(copy_to_postgres(path, target))
    except CopyError as exc:
        _fail(str(exc))
    totals = result.totals
    for table, rows in sorted(totals.rows.items()):
        print(f"  {table:<16} {rows:>10,} rows")
    print(
        f"copied {path} to PostgreSQL (schema version {result.schema_version}) and checked: "
        f"rows per table, ledger cost {totals.ledger_cost_nano:,} nano-dollars, counters "
        f"settled {totals.counters_settled:,} and reserved {totals.counters_reserved:,}"
    )
    if result.server_running is not None:
        print(
            f"note: a server (process {result.server_running}) was running on {path}: the copy "
            "is one consistent moment; what it wrote after is not in it. Stop every server "
            "before the final copy."
        )
    if result.journal_files:
        print(
            f"note: {result.journal_files} settlement journal file(s) beside {path}: a server "
            "is running or died with settlements maybe not written. Start and stop a server "
            "on the SQLite file (it replays them), then copy again into a new database."
        )


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)
