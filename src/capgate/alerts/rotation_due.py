"""The `rotation_due` alert, pure: a key set to rotate every so often (`rotate_every`)
is announced to the webhooks a week before it is due (a quarter of the period before,
for periods under four weeks), once per period. capgate never rotates a key on its own:
a new secret that nobody is shown would only lock its holder out (docs/security.md).
The alert carries nothing secret: the key's name, id prefix and when it is due."""

from __future__ import annotations

from collections.abc import Iterable

from capgate.alerts.rules import Alert
from capgate.core.limits import Scope, Status
from capgate.rotation import due_at, iso, notice_at

TYPE = "rotation_due"


def rotation_alerts(keys: Iterable[Scope], now: float) -> list[Alert]:
    return [alert for key in keys if (alert := rotation_alert(key, now)) is not None]


def rotation_alert(key: Scope, now: float) -> Alert | None:
    every = key.extra.get("rotate_every")
    if every is None or key.status is Status.REVOKED:
        return None
    due = due_at(key.extra["created_at"], key.extra.get("rotated_at"), every)
    if due is None or now < notice_at(due, every):
        return None
    late = "is overdue for rotation since" if now >= due else "is due for rotation at"
    text = (
        f'key "{key.name}" {late} {iso(due)}: rotate it (capgate keys rotate {key.name} '
        "--grace ...) and hand its holder the new secret"
    )
    data = {
        "key": key.name,
        "prefix": key.extra.get("prefix"),
        "due_at": iso(due),
        "rotated_at": None if key.extra.get("rotated_at") is None else iso(key.extra["rotated_at"]),
    }
    # One claim per key and period: a rotation moves `due`, and so the claim's name.
    return Alert(f"{TYPE}:{key.id}:{int(due)}", due + every, TYPE, text, ("key", key.name), data)
