"""`capgate routing rules show | set FILE | reset`: the routing rules in force, through the
admin API (`/admin/routing/rules`; docs/routing.md#rules-at-runtime). `show` prints them
as YAML that `set` reads back; `set` takes YAML or JSON: the list itself, or a mapping
with `rules:` (a config file's section pasted as is)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from capgate.cli.client import AdminClient, fail
from capgate.cli.keys import JsonOpt, UrlOpt
from capgate.errors import InvalidRequest
from capgate.rules.live import rules_of

app = typer.Typer(help="Routing rules: the config file's, or an ordered list set at runtime.")

RULES = "/admin/routing/rules"


def _origin(answer: dict[str, Any]) -> str:
    if answer["source"] == "config":
        where = "the config file"
    else:
        when = datetime.fromtimestamp(answer["changed_at"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        where = f"runtime, set by {answer['changed_by']} at {when}"
    problem = f"\n# problem: {answer['problem']}" if answer.get("problem") else ""
    return f"# rules in force: {where} ({len(answer['rules'])} rules){problem}"


def _print(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    print(_origin(answer))
    print(yaml.safe_dump({"rules": answer["rules"]}, sort_keys=False, allow_unicode=True), end="")


def read_rules(text: str, name: str) -> Any:
    """The list of rules in `text` (YAML or JSON; the list, or a mapping with `rules`)."""
    try:
        data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        fail(f"{name}: not valid {'JSON' if name.endswith('.json') else 'YAML'}: {exc}")
    try:
        return rules_of(data, name)
    except InvalidRequest as exc:
        fail(str(exc))


@app.command("show")
def rules_show(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The rules in force, where they come from, as YAML (`set` reads it back)."""
    _print(AdminClient(url).call("GET", RULES), as_json)


@app.command("set")
def rules_set(
    file: Annotated[str, typer.Argument(help="a YAML or JSON file ('-': standard input)")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace the whole ordered list of rules (checked first: nothing changes on an error)."""
    if file == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        path = Path(file)
        try:
            text, name = path.read_text(encoding="utf-8"), path.name
        except OSError as exc:
            fail(f"{file}: {exc.strerror or exc}")
    rules = read_rules(text, name)
    _print(AdminClient(url).call("PUT", RULES, json={"rules": rules}), as_json)


@app.command("reset")
def rules_reset(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Back to the config file's rules."""
    _print(AdminClient(url).call("DELETE", RULES), as_json)
