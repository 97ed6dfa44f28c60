"""The one error hierarchy. Adapters translate driver and provider failures into these at
their edge; each HTTP surface renders them in its own dialect in one place
(`capgate.http.dialects`).

    CapgateError
     ├── InvalidRequest         400  malformed body, missing model, bad value
     ├── AuthenticationFailed   401  missing or unknown key
     ├── PermissionDenied       403  paused, revoked, expired key; model not allowed
     ├── NotFound               404
     ├── Conflict               409  duplicate name
     ├── PayloadTooLarge        413
     ├── UnsupportedMediaType   415
     ├── LimitExceeded          402 budget / 429 rate limit (carries the engine's Refusal)
     ├── UpstreamFailed         502  provider unreachable or broken answer
     │    └── UpstreamTimeout   504  no (complete) answer in time
     └── StoreUnavailable       503  the ledger cannot be written: fail closed

A refusal that cannot succeed on retry (every 4xx but a short rate limit) is not
`retryable`: its answer carries `x-should-retry: false`, which Claude Code and the official
SDKs honour, so they show the message at once instead of retrying for minutes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capgate.core.engine import Refusal


class CapgateError(Exception):
    status = 500
    kind = "api_error"  # a neutral error type; dialects map it to their own names
    retryable = True  # whether the same request may succeed if sent again

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:  # an upstream's own status, passed on
            self.status = status

    def shown_as(self, status: int, message: str) -> CapgateError:
        """This error as one client is sent it (another status or message): a new error
        of the same class, this one left as it was raised."""
        shown = type(self).__new__(type(self), message)
        shown.__dict__.update(self.__dict__)
        shown.status, shown.message = status, message
        return shown


class InvalidRequest(CapgateError):
    status = 400
    kind = "invalid_request_error"
    retryable = False


class AuthenticationFailed(CapgateError):
    status = 401
    kind = "authentication_error"
    retryable = False


class PermissionDenied(CapgateError):
    status = 403
    kind = "permission_error"
    retryable = False


class NotFound(CapgateError):
    status = 404
    kind = "not_found_error"
    retryable = False


class Conflict(CapgateError):
    status = 409
    kind = "conflict_error"
    retryable = False


class PayloadTooLarge(CapgateError):
    status = 413
    kind = "request_too_large"
    retryable = False


class UnsupportedMediaType(CapgateError):
    status = 415
    kind = "invalid_request_error"
    retryable = False


RETRY_WAIT_MAX = 60  # seconds: a rate limit that frees later is shown, not retried


class LimitExceeded(CapgateError):
    """A limit refused the request. Budgets answer 402 and are not retryable; rate limits
    over a minute or an hour answer 429 with `retry-after`, retryable when the wait is at
    most `RETRY_WAIT_MAX` seconds (clients retry for a few minutes at most)."""

    kind = "budget_exceeded"
    retryable = False

    def __init__(self, refusal: Refusal, now: float) -> None:
        headers = {"x-capgate-refusal": refusal.code}
        if refusal.is_rate_limit:
            self.status = 429
            self.kind = "rate_limit_error"
            wait = 1 if refusal.resets_at is None else math.ceil(refusal.resets_at - now)
            headers["retry-after"] = str(max(1, wait))
            self.retryable = wait <= RETRY_WAIT_MAX
        else:
            self.status = 402
            headers["x-should-retry"] = "false"
        super().__init__(refusal.message, headers=headers)
        self.refusal = refusal


def refusal_status(refusal: Refusal) -> int:
    """402 for a spent budget, 429 for a rate limit (short window or concurrency), 403 for
    a scope that is paused, revoked, expired or not allowed the model."""
    if refusal.code != "limit_exceeded":
        return 403
    return 429 if refusal.is_rate_limit else 402


class UpstreamFailed(CapgateError):
    status = 502
    kind = "api_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        sent: bool = True,
        charge_all: bool = False,
    ) -> None:
        super().__init__(message, headers=headers, status=status)
        # False only when the request surely never reached the provider (no connection):
        # otherwise it may have run, and been billed, upstream.
        self.sent = sent
        # The provider surely generated (and billed) an answer that was lost, as in a CLI
        # run stopped midway: charge the reservation in full, not what was relayed.
        self.charge_all = charge_all


class UpstreamTimeout(UpstreamFailed):
    """No (complete) answer in time: a first-byte or whole-request timeout, a CLI run
    that was stopped."""

    status = 504


class StoreUnavailable(CapgateError):
    status = 503
    kind = "api_error"


def refusal_error(refusal: Refusal, now: float) -> CapgateError:
    """The error a refusal of the engine is raised as: a limit answers 402 / 429
    (LimitExceeded), anything else (paused, revoked, expired, model, schedule) 403."""
    if refusal.code == "limit_exceeded":
        return LimitExceeded(refusal, now)
    return PermissionDenied(refusal.message, headers={"x-capgate-refusal": refusal.code})
