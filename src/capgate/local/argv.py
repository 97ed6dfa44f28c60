"""A quick start for `capgate local`'s reports: a well-formed command line (the options of
`capgate.cli.local`, `--name value` or `--name=value`) is run straight away, without
importing typer, click, pydantic or rich (most of a small report's time). Anything else
(`--help`, an unknown or incomplete option, a bad value, `blocks --live`) returns False:
the typer app then runs the command and says what is wrong, as it always did.
tests/test_local_cli.py checks that these options are the typer app's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FLAG, VALUE = "flag", "value"
_COMMON = {
    "--json": FLAG, "--since": VALUE, "--until": VALUE, "--timezone": VALUE,
    "--project": VALUE, "--agent": VALUE, "--breakdown": FLAG, "--no-cache": FLAG,
    "--order": VALUE,
}  # fmt: skip
OPTIONS: dict[str, dict[str, str]] = {
    "daily": {**_COMMON, "--instances": FLAG},
    "weekly": {**_COMMON, "--start-of-week": VALUE},
    "monthly": _COMMON,
    "session": _COMMON,
    "blocks": {"--json": FLAG, "--timezone": VALUE, "--order": VALUE},  # --live: typer's
}


def parse(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(command, its keyword arguments), or None when the typer app should handle it."""
    if not args or args[0] not in OPTIONS:
        return None
    known = OPTIONS[args[0]]
    values: dict[str, Any] = {}
    rest = args[1:]
    while rest:
        token = rest.pop(0)
        name, eq, value = token.partition("=")
        kind = known.get(name)
        if kind is None:
            return None
        if kind == FLAG:
            if eq:
                return None
            values[_keyword(name)] = True
            continue
        if not eq:  # the next word, whatever it is (as click takes it: `--project -home-x`)
            if not rest:
                return None
            value = rest.pop(0)
        values[_keyword(name)] = value
    return args[0], values


def _keyword(option: str) -> str:
    return "json_out" if option == "--json" else option[2:].replace("-", "_")


def run_quick(args: list[str]) -> bool:
    """Run the report `args` ask for; False (having printed nothing) if typer must."""
    parsed = parse(args)
    if parsed is None:
        return False
    from capgate.local import run

    commands: dict[str, Callable[..., None]] = {
        "daily": run.daily, "weekly": run.weekly, "monthly": run.monthly,
        "session": run.session, "blocks": run.blocks_report,
    }  # fmt: skip
    command, values = parsed
    try:
        commands[command](**values)
    except run.LocalError:
        return False  # typer's app runs it again and says what is wrong
    return True
