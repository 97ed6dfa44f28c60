"""How every command reports a failure: one red line on stderr, exit code 1. Its own module
so that the commands that must start fast (`capgate local`) need not import the HTTP client."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)
