"""`capgate routing providers|routes|rules ...`: upstream providers and routes defined at
runtime, through the admin API (`/admin/routing/...`;
docs/configuration.md#providers-and-routes-at-runtime).
An API key is read from an environment variable, never from the command line (which
shell history and `ps` would keep)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any
from urllib.parse import quote

import typer

from capgate.cli.client import AdminClient, fail
from capgate.cli.keys import JsonOpt, UrlOpt
from capgate.cli.render import print_items
from capgate.cli.routing_rules import app as rules_app

app = typer.Typer(help="Upstream providers and routes, changed while capgate runs.")
providers_app = typer.Typer(help="Upstream providers (the config file's are read-only).")
routes_app = typer.Typer(help="Routes: which providers serve which model names.")
app.add_typer(providers_app, name="providers")
app.add_typer(routes_app, name="routes")
app.add_typer(rules_app, name="rules")

PROVIDERS = "/admin/routing/providers"
ROUTES = "/admin/routing/routes"

TypeOpt = Annotated[
    str | None, typer.Option("--type", help="anthropic | openai | openai-compatible | mock")
]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="http(s)://host[:port][/path]")]
KeyEnvOpt = Annotated[
    str | None,
    typer.Option("--api-key-env", help="read the upstream API key from this environment variable"),
]
HeaderOpt = Annotated[
    list[str] | None, typer.Option("--header", help="NAME=VALUE sent upstream (repeatable)")
]
FieldOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="FIELD=VALUE, e.g. timeout_s=120 (repeatable; JSON values)"),
]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"{what}: expected NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _provider_body(
    type_: str | None,
    base_url: str | None,
    api_key_env: str | None,
    headers: list[str] | None,
    fields: list[str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {k: _json_value(v) for k, v in _pairs(fields, "--set").items()}
    if type_ is not None:
        body["type"] = type_
    if base_url is not None:
        body["base_url"] = base_url
    if headers:
        body["headers"] = _pairs(headers, "--header")
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            fail(f"--api-key-env: the environment variable {api_key_env} is not set")
        body["api_key"] = key
    return body


@providers_app.command("list")
def providers_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every provider: the config file's and the runtime ones (keys as fingerprints)."""
    items = AdminClient(url).call("GET", PROVIDERS)["items"]
    print_items(
        items, as_json, ("name", "type", "source", "base_url", "api_key_fingerprint", "problem")
    )


@providers_app.command("add")
def providers_add(
    name: Annotated[str, typer.Argument(help="the provider's name")],
    type_: TypeOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = None,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a runtime provider (its API key is stored encrypted)."""
    body = {"name": name, **_provider_body(type_, base_url, api_key_env, header, field)}
    print_items([AdminClient(url).call("POST", PROVIDERS, json=body)], as_json, ("name", "type"))


@providers_app.command("set")
def providers_set(
    name: Annotated[str, typer.Argument(help="the provider's name")],
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = None,
    remove_api_key: Annotated[
        bool, typer.Option("--remove-api-key", help="send no API key from now on")
    ] = False,
    header: HeaderOpt = None,
    field: FieldOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a runtime provider; what is not given stays (the API key included)."""
    body = _provider_body(None, base_url, api_key_env, header, field)
    if remove_api_key:
        body["api_key"] = None
    answer = AdminClient(url).call("PATCH", f"{PROVIDERS}/{quote(name, safe='')}", json=body)
    print_items([answer], as_json, ("name", "type", "api_key_fingerprint"))


@providers_app.command("remove")
def providers_remove(
    name: Annotated[str, typer.Argument(help="the provider's name")], url: UrlOpt = None
) -> None:
    """Remove a runtime provider (refused while a route uses it)."""
    AdminClient(url).call("DELETE", f"{PROVIDERS}/{quote(name, safe='')}")
    print(f"removed provider {name}")


def _targets(specs: list[str] | None) -> list[dict[str, Any]]:
    """PROVIDER[:MODEL][@WEIGHT] each."""
    out = []
    for spec in specs or []:
        rest, _, weight = spec.partition("@")
        provider, _, model = rest.partition(":")
        target: dict[str, Any] = {"provider": provider}
        if model:
            target["model"] = model
        if weight:
            target["weight"] = _json_value(weight)
        out.append(target)
    return out


TargetOpt = Annotated[
    list[str] | None,
    typer.Option("--target", help="PROVIDER[:MODEL][@WEIGHT] (repeatable)"),
]
FallbackOpt = Annotated[
    list[str] | None, typer.Option("--fallback", help="PROVIDER[:MODEL], tried in order")
]
RetriesOpt = Annotated[int | None, typer.Option("--retries", help="per target")]
DeadlineOpt = Annotated[float | None, typer.Option("--deadline-s", help="for all attempts")]


def _route_body(
    target: list[str] | None,
    fallback: list[str] | None,
    retries: int | None,
    deadline: float | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if target:
        body["targets"] = _targets(target)
    if fallback:
        body["fallbacks"] = _targets(fallback)
    if retries is not None:
        body["retries"] = retries
    if deadline is not None:
        body["deadline_s"] = deadline
    return body


@routes_app.command("list")
def routes_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every route, the config file's first (the order they are matched in)."""
    items = AdminClient(url).call("GET", ROUTES)["items"]
    if not as_json:
        for item in items:
            item["targets"] = ",".join(t["provider"] for t in item["targets"])
    print_items(items, as_json, ("match", "source", "targets", "problem"))


@routes_app.command("add")
def routes_add(
    match: Annotated[str, typer.Argument(help="a model name or glob, e.g. 'llama-*'")],
    target: TargetOpt = None,
    fallback: FallbackOpt = None,
    retries: RetriesOpt = None,
    deadline_s: DeadlineOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a runtime route (matched after the config file's)."""
    body = {"match": match, **_route_body(target, fallback, retries, deadline_s)}
    print_items([AdminClient(url).call("POST", ROUTES, json=body)], as_json, ("match", "source"))


@routes_app.command("set")
def routes_set(
    match: Annotated[str, typer.Argument(help="the route's match")],
    target: TargetOpt = None,
    fallback: FallbackOpt = None,
    retries: RetriesOpt = None,
    deadline_s: DeadlineOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a runtime route; what is not given stays."""
    body = _route_body(target, fallback, retries, deadline_s)
    answer = AdminClient(url).call("PATCH", f"{ROUTES}/{quote(match, safe='')}", json=body)
    print_items([answer], as_json, ("match", "source"))


@routes_app.command("remove")
def routes_remove(
    match: Annotated[str, typer.Argument(help="the route's match")], url: UrlOpt = None
) -> None:
    """Remove a runtime route."""
    AdminClient(url).call("DELETE", f"{ROUTES}/{quote(match, safe='')}")
    print(f"removed route {match}")
