"""`capgate alerts ...`: alert rules, webhooks and the delivery log, through the admin API
(docs/operations.md#alerts)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from capgate.cli.client import AdminClient
from capgate.cli.keys import JsonOpt, UrlOpt
from capgate.cli.render import print_items

app = typer.Typer(help="Budget alerts: rules, webhooks, deliveries.", no_args_is_help=True)


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@app.command("rules")
def rules(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The server's default rules and every scope's rules."""
    answer = AdminClient(url).call("GET", "/admin/alerts/rules")
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    print("defaults (runtime setting alert_rules):")
    for rule in answer["defaults"]:
        print("  " + json.dumps(rule))
    print("rules:")
    for rule in answer["items"]:
        print("  " + json.dumps(rule))


@app.command("add-rule")
def add_rule(
    scope: Annotated[str, typer.Option("--scope", help='KIND:NAME (e.g. team:eng), or "*"')],
    type_: Annotated[
        str,
        typer.Option("--type", help="threshold, refusal_rate, spend_rate or provider_down"),
    ],
    percents: Annotated[
        str | None, typer.Option("--percents", help="threshold: e.g. 50,80,100")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help='threshold: a limit metric, or "*" for all')
    ] = None,
    percent: Annotated[
        float | None, typer.Option("--percent", help="refusal_rate: above this % refused")
    ] = None,
    minutes: Annotated[
        int | None, typer.Option("--minutes", help="refusal_rate: over the last N minutes")
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option("--min-requests", help="refusal_rate: at least N requests")
    ] = None,
    factor: Annotated[
        float | None, typer.Option("--factor", help="spend_rate: K x the average hour")
    ] = None,
    floor_usd: Annotated[
        str | None, typer.Option("--floor-usd", help="spend_rate: and at least this spend")
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="provider_down: only this provider")
    ] = None,
    every_minutes: Annotated[
        int | None, typer.Option("--every-minutes", help="provider_down: at most once per N")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Add a rule to a scope; prints its id."""
    body: dict[str, Any] = {"scope": scope, "type": type_}
    fields: dict[str, Any] = {
        "percents": None if percents is None else [int(p) for p in _list(percents) or []],
        "metric": metric, "percent": percent, "minutes": minutes,
        "min_requests": min_requests, "factor": factor, "floor_usd": floor_usd,
        "provider": provider, "every_minutes": every_minutes,
    }  # fmt: skip
    body |= {k: v for k, v in fields.items() if v is not None}
    rule = AdminClient(url).call("POST", "/admin/alerts/rules", json=body)
    print(f"rule {rule['id']} added: {json.dumps(rule)}")


@app.command("remove-rule")
def remove_rule(
    rule_id: Annotated[str, typer.Argument(help="the rule's id")], url: UrlOpt = None
) -> None:
    """Remove a scope's rule."""
    AdminClient(url).call("DELETE", f"/admin/alerts/rules/{rule_id}")
    print(f"rule {rule_id} removed")


@app.command("webhooks")
def webhooks(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The webhooks (their secrets are not shown)."""
    items = AdminClient(url).call("GET", "/admin/alerts/webhooks")["items"]
    print_items(items, as_json, ("name", "url", "format", "scope", "report"))


@app.command("add-webhook")
def add_webhook(
    name: Annotated[str, typer.Argument(help="the webhook's name")],
    target: Annotated[str, typer.Argument(help="the URL alerts are POSTed to")],
    secret: Annotated[
        str | None, typer.Option("--secret", help="signing secret (default: a new one, shown once)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or slack")] = "json",
    events: Annotated[
        str | None, typer.Option("--events", help="comma-separated alert types (default: all)")
    ] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="only this scope's alerts, e.g. team:eng")
    ] = None,
    report: Annotated[
        str | None, typer.Option("--report", help="daily or weekly: a spend report per team")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Add a webhook; prints its signing secret (shown only now)."""
    body: dict[str, Any] = {"name": name, "url": target, "format": fmt}
    optional = {"secret": secret, "events": _list(events), "scope": scope, "report": report}
    body |= {k: v for k, v in optional.items() if v is not None}
    hook = AdminClient(url).call("POST", "/admin/alerts/webhooks", json=body)
    print(f"webhook {hook['name']} added; signing secret (shown once): {hook['secret']}")


@app.command("remove-webhook")
def remove_webhook(
    name: Annotated[str, typer.Argument(help="the webhook's name")], url: UrlOpt = None
) -> None:
    """Remove a webhook (its pending deliveries then fail)."""
    AdminClient(url).call("DELETE", f"/admin/alerts/webhooks/{name}")
    print(f"webhook {name} removed")


@app.command("test-webhook")
def test_webhook(
    name: Annotated[str, typer.Argument(help="the webhook's name")], url: UrlOpt = None
) -> None:
    """Send the webhook a signed test delivery (see `capgate alerts deliveries`)."""
    answer = AdminClient(url).call("POST", f"/admin/alerts/webhooks/{name}/test")
    print(f"test delivery {answer['id']} queued for webhook {name}")


@app.command("deliveries")
def deliveries(
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered or failed")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many, newest first")] = 50,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The delivery log, newest first."""
    params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
    items = AdminClient(url).call("GET", "/admin/alerts/deliveries", params=params)["items"]
    print_items(
        items, as_json,
        ("id", "created_at", "webhook", "status", "attempts", "last_status", "last_error", "alert"),
    )  # fmt: skip
