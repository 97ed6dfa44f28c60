"""The alerts' part of the store port (`AlertStore`, part of `base.Store`) and its records.

The store decides which process fires an alert: `claim_alert` inserts the alert's key
once (INSERT OR IGNORE / ON CONFLICT DO NOTHING), and in the same transaction the
deliveries of the winner, so an alert is either claimed with its deliveries queued or not
at all. Deliveries are rows any process may send once their lease has run out: a delivery
survives the restart (or crash) of the process that claimed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

ALERTS_ROW = "alerts"  # the meta row holding the per-scope rules and the webhooks
DELIVERY_STATUSES = ("pending", "delivered", "failed")
CHANGED = "the alerts' configuration was changed meanwhile; read it again and retry"


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """What to send to one webhook (by name): the body as it will be sent."""

    webhook: str
    body: str


@dataclass(frozen=True, slots=True)
class AlertClaim:
    """An alert to fire once. `key` names it (scope, limit, window, threshold ...);
    `expires_at`: when the claim may be forgotten (its window is over; never for a
    `total` window). The deliveries are queued leased to `owner` until `lease_until`,
    so the winner sends them first and any process takes them over after."""

    key: str
    expires_at: float
    deliveries: tuple[NewDelivery, ...]
    owner: str
    lease_until: float


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    """One webhook delivery and where it stands."""

    id: int
    claim: str
    webhook: str
    body: str
    status: str  # pending | delivered | failed
    attempts: int
    created_at: float
    next_at: float  # when the next attempt is due (pending)
    last_status: int | None  # the receiver's HTTP status at the last attempt
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """What one attempt came to: `status` delivered, failed (no more tries) or pending
    (tried again at `next_at`)."""

    id: int
    status: str
    attempts: int
    next_at: float
    last_status: int | None
    last_error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What the audit log says of a change of the alerts' configuration: `target` e.g.
    "alert-rule:ID", `before` / `after` the rule or webhook (never a secret)."""

    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


# The delivery log's columns as `AlertDelivery` takes them, and a row of them as one.
DELIVERY_COLUMNS = (
    "id, claim, webhook, body, status, attempts, created_at, next_at, last_status, "
    "last_error, delivered_at"
)


def delivery_from_row(row: Any) -> AlertDelivery:
    return AlertDelivery(*tuple(row))


class AlertStore(Protocol):
    """Alert claims, deliveries and the alerts' configuration, shared by every process
    and node on the database."""

    async def claim_alert(self, claim: AlertClaim, now: float) -> bool:
        """Insert `claim.key` unless it is there; True for the one caller that inserted
        it, whose deliveries are queued in the same transaction (pending, due now)."""

    async def take_deliveries(
        self, owner: str, now: float, lease_until: float, limit: int = 20
    ) -> list[AlertDelivery]:
        """Pending deliveries due at `now` that `owner` holds, or that nobody holds (their
        lease ended), oldest first: leased to `owner` until `lease_until`."""

    async def record_attempt(self, attempt: DeliveryAttempt) -> None:
        """Store what an attempt came to and free the delivery's lease."""

    async def alert_deliveries(
        self, limit: int = 100, status: str | None = None
    ) -> list[AlertDelivery]:
        """The newest `limit` deliveries (of `status`, when given), newest first."""

    async def prune_alerts(self, now: float, keep_s: float) -> None:
        """Forget the claims that expired before `now`, and the finished deliveries
        created more than `keep_s` ago."""

    async def get_alert_config(self) -> dict[str, Any]:
        """The alert rules and webhooks an admin set ({} when none)."""

    async def put_alert_config(
        self,
        config: dict[str, Any],
        expected: dict[str, Any],
        change: AlertChange,
        actor: str = "admin",
    ) -> None:
        """Store the rules and webhooks and write the audit entry, in one transaction,
        if the stored ones are still `expected` (what `config` was made from); Conflict
        otherwise (another admin changed them meanwhile: nothing is written)."""
