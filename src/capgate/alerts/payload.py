"""What a webhook receives, pure: the JSON body of an alert or a report (or Slack's
`{"text": ...}`), and the signature that proves capgate sent it.

`X-Capgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, the
scheme Stripe uses: the timestamp is signed with the body, so a receiver that refuses
old timestamps also refuses replays (docs/operations.md shows how to verify it).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson

from capgate.alerts.rules import Alert

FORMATS = ("json", "slack")
SIGNATURE_HEADER = "X-Capgate-Signature"
TOLERANCE_S = 300  # what `verify` accepts by default: 5 minutes either way


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_body(alert: Alert, now: float) -> dict[str, Any]:
    scope = None if alert.scope is None else {"kind": alert.scope[0], "name": alert.scope[1]}
    return {
        "id": alert.key,
        "type": alert.type,
        "created_at": iso(now),
        "text": alert.text,
        "scope": scope,
        "data": alert.data,
    }


def render(body: dict[str, Any], fmt: str) -> str:
    """The body as sent: capgate's JSON, or Slack's incoming-webhook shape."""
    if fmt == "slack":
        return orjson.dumps({"text": f"capgate: {body['text']}"}).decode()
    return orjson.dumps(body).decode()


def sign(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: float = TOLERANCE_S
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance` seconds of `now`:
    what a receiver does (here for tests and for receivers written in Python)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
