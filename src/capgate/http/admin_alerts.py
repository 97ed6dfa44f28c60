"""`/admin/alerts/...`: the alert rules of scopes, the webhooks that receive alerts and
reports, and the delivery log. Every change is one write of the alerts' configuration
with its audit entry (webhook secrets never appear in the audit log nor in answers, but
once: when the webhook is created)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from capgate.alerts.payload import iso, render
from capgate.alerts.rules import parse_defaults, parse_rule
from capgate.alerts.setup import AlertSetup, parse_webhook
from capgate.alerts.targets import check_url
from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.http.admin_io import choice_param, int_param, json_response, known_params
from capgate.store.alerting import (
    DELIVERY_STATUSES,
    AlertChange,
    AlertClaim,
    AlertDelivery,
    NewDelivery,
)

if TYPE_CHECKING:
    from capgate.http.admin import AdminAPI

MAX_DELIVERIES = 1000
TEST_KEEP_S = 86400.0  # a test's claim is forgotten after a day
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InvalidRequest("Content-Type must be application/json.")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequest("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body: a JSON object")
    return body


def delivery_json(d: AlertDelivery) -> dict[str, Any]:
    try:
        body: Any = orjson.loads(d.body)
    except orjson.JSONDecodeError:
        body = d.body
    return {
        "id": d.id,
        "alert": d.claim,
        "webhook": d.webhook,
        "status": d.status,
        "attempts": d.attempts,
        "created_at": iso(d.created_at),
        "next_attempt_at": iso(d.next_at) if d.status == "pending" else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "delivered_at": None if d.delivered_at is None else iso(d.delivered_at),
        "body": body,
    }


class AlertRoutes:
    def __init__(self, api: AdminAPI) -> None:
        self.api = api

    def routes(self, guard: Callable[[Handler], Handler]) -> list[web.RouteDef]:
        """The routes, each wrapped by `guard` (the admin API's authentication)."""
        base = "/admin/alerts"
        return [
            web.get(base + "/rules", guard(self.rules)),
            web.post(base + "/rules", guard(self.add_rule)),
            web.delete(base + "/rules/{id}", guard(self.remove_rule)),
            web.get(base + "/webhooks", guard(self.webhooks)),
            web.post(base + "/webhooks", guard(self.add_webhook)),
            web.delete(base + "/webhooks/{name}", guard(self.remove_webhook)),
            web.post(base + "/webhooks/{name}/test", guard(self.test_webhook)),
            web.get(base + "/deliveries", guard(self.deliveries)),
        ]

    async def _setup(self) -> AlertSetup:
        return AlertSetup.from_json(await self.api.store.get_alert_config())

    async def _change(
        self, request: web.Request, edit: Callable[[AlertSetup], tuple[AlertSetup, AlertChange]]
    ) -> None:
        """Read, `edit` (raises to refuse), write if nobody changed it meanwhile; again
        if somebody did (another admin, another process or node)."""
        for attempt in range(3):
            stored = await self.api.store.get_alert_config()
            new, change = edit(AlertSetup.from_json(stored))
            try:
                await self.api.store.put_alert_config(
                    new.to_json(), stored, change, request["actor"]
                )
                return
            except Conflict:
                if attempt == 2:
                    raise

    async def rules(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        setup = await self._setup()
        await self.api.runtime.refresh(self.api.store)
        defaults = parse_defaults(self.api.runtime.effective()["alert_rules"])
        return json_response(
            {
                "defaults": [{k: v for k, v in r.to_json().items() if k != "id"} for r in defaults],
                "items": [r.to_json() for r in setup.rules],
            }
        )

    async def add_rule(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if "id" in body:
            raise InvalidRequest("id: chosen by capgate")
        if "scope" not in body:
            raise InvalidRequest('scope: "KIND:NAME" (key, user, team, org or provider) or "*"')
        try:
            rule = parse_rule({**body, "id": secrets.token_hex(4)})
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

        def edit(setup: AlertSetup) -> tuple[AlertSetup, AlertChange]:
            change = AlertChange("create", f"alert-rule:{rule.id}", None, rule.to_json())
            return AlertSetup((*setup.rules, rule), setup.webhooks), change

        await self._change(request, edit)
        return json_response(rule.to_json(), status=201)

    async def remove_rule(self, request: web.Request) -> web.Response:
        rule_id = request.match_info["id"]

        def edit(setup: AlertSetup) -> tuple[AlertSetup, AlertChange]:
            gone = [r for r in setup.rules if r.id == rule_id]
            if not gone:
                raise NotFound(f"no alert rule {rule_id}")
            kept = tuple(r for r in setup.rules if r.id != rule_id)
            change = AlertChange("delete", f"alert-rule:{rule_id}", gone[0].to_json(), None)
            return AlertSetup(kept, setup.webhooks), change

        await self._change(request, edit)
        return web.Response(status=204)

    async def webhooks(self, request: web.Request) -> web.Response:
        known_params(request.query, ())
        setup = await self._setup()
        return json_response({"items": [w.to_json(secret=False) for w in setup.webhooks]})

    async def add_webhook(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        unknown = sorted(
            set(body) - {"name", "url", "secret", "format", "events", "scope", "report"}
        )
        if unknown:
            raise InvalidRequest(f"{unknown[0]}: not a field of a webhook")
        if not isinstance(body.get("url"), str):
            raise InvalidRequest("url: an http:// or https:// URL")
        await self.api.runtime.refresh(self.api.store)
        allow = bool(self.api.runtime.effective()["alerts_allow_private_targets"])
        body.setdefault("secret", "whsec_" + secrets.token_urlsafe(24))
        try:
            check_url(body["url"], allow)
            hook = parse_webhook(body)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

        def edit(setup: AlertSetup) -> tuple[AlertSetup, AlertChange]:
            if setup.webhook(hook.name) is not None:
                raise Conflict(f'a webhook named "{hook.name}" exists; delete it first')
            after = hook.to_json(secret=False)
            change = AlertChange("create", f"alert-webhook:{hook.name}", None, after)
            return AlertSetup(setup.rules, (*setup.webhooks, hook)), change

        await self._change(request, edit)
        return json_response(hook.to_json(), status=201)

    async def remove_webhook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def edit(setup: AlertSetup) -> tuple[AlertSetup, AlertChange]:
            hook = setup.webhook(name)
            if hook is None:
                raise NotFound(f'no webhook named "{name}"')
            kept = tuple(w for w in setup.webhooks if w.name != name)
            change = AlertChange(
                "delete", f"alert-webhook:{name}", hook.to_json(secret=False), None
            )
            return AlertSetup(setup.rules, kept), change

        await self._change(request, edit)
        return web.Response(status=204)

    async def test_webhook(self, request: web.Request) -> web.Response:
        """Queue a signed test delivery to the webhook: the next tick of any process
        sends it, as it would an alert (the delivery log shows how it went)."""
        name = request.match_info["name"]
        hook = (await self._setup()).webhook(name)
        if hook is None:
            raise NotFound(f'no webhook named "{name}"')
        now = self.api.clock()
        body: dict[str, Any] = {
            "id": f"test:{secrets.token_hex(8)}",
            "type": "test",
            "created_at": iso(now),
            "text": f'a test of the webhook "{name}"',
            "scope": None,
            "data": {},
        }
        delivery = NewDelivery(name, render(body, hook.format))
        claim = AlertClaim(str(body["id"]), now + TEST_KEEP_S, (delivery,), "admin", now)
        await self.api.store.claim_alert(claim, now)
        return json_response({"id": body["id"]}, status=202)

    async def deliveries(self, request: web.Request) -> web.Response:
        known_params(request.query, ("limit", "status"))
        limit = min(int_param(request.query, "limit", 1) or 100, MAX_DELIVERIES)
        status = choice_param(request.query, "status", DELIVERY_STATUSES)
        rows = await self.api.store.alert_deliveries(limit, status)
        return json_response({"items": [delivery_json(d) for d in rows]})
