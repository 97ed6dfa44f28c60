"""The alerts' configuration as an admin sets it (`/admin/alerts/...`), pure: the
per-scope rules and the webhooks, stored as one JSON object in the database."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capgate.alerts.payload import FORMATS
from capgate.alerts.rules import TYPES, Alert, Rule, parse_rule

REPORTS = ("daily", "weekly")
EVENTS = (*TYPES, "rotation_due", "report")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Webhook:
    name: str
    url: str
    secret: str
    format: str = "json"  # json | slack
    events: tuple[str, ...] = EVENTS  # which alerts it receives
    scope: str | None = None  # only this scope's alerts ("team:eng"); None: all
    report: str | None = None  # daily | weekly: a spend report per team

    def wants(self, alert: Alert) -> bool:
        if alert.type not in self.events:
            return False
        if self.scope is None:
            return True
        return alert.scope is not None and f"{alert.scope[0]}:{alert.scope[1]}" == self.scope

    def to_json(self, secret: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "url": self.url, "format": self.format,
            "events": list(self.events), "scope": self.scope, "report": self.report,
        }  # fmt: skip
        if secret:
            out["secret"] = self.secret
        return out


def parse_webhook(data: Mapping[str, Any]) -> Webhook:
    """A webhook from its JSON (with its secret); ValueError names the bad field."""
    name = str(data.get("name", ""))
    if not _NAME.match(name):
        raise ValueError("name: letters, digits, '_', '.', '-' (at most 64)")
    fmt = data.get("format", "json")
    if fmt not in FORMATS:
        raise ValueError(f"format: one of {', '.join(FORMATS)}")
    events = data.get("events", list(EVENTS))
    if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
        raise ValueError(f"events: a list of {', '.join(EVENTS)}")
    scope = data.get("scope")
    if scope is not None:
        parse_rule({"type": "threshold", "scope": scope})  # the same scope syntax
    report = data.get("report")
    if report is not None and report not in REPORTS:
        raise ValueError(f"report: one of {', '.join(REPORTS)}, or null")
    secret = str(data.get("secret", ""))
    if len(secret) < 16:
        raise ValueError("secret: at least 16 characters")
    return Webhook(name, str(data["url"]), secret, fmt, tuple(events), scope, report)


@dataclass(frozen=True, slots=True)
class AlertSetup:
    rules: tuple[Rule, ...] = ()
    webhooks: tuple[Webhook, ...] = ()

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> AlertSetup:
        rules = tuple(parse_rule(r) for r in stored.get("rules", []))
        hooks = tuple(parse_webhook(w) for w in stored.get("webhooks", []))
        return cls(rules, hooks)

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [r.to_json() for r in self.rules],
            "webhooks": [w.to_json() for w in self.webhooks],
        }

    def webhook(self, name: str) -> Webhook | None:
        return next((w for w in self.webhooks if w.name == name), None)
