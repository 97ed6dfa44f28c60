"""What a person's scopes say to a hook, pure: their status (active, paused, revoked),
the logout mark of a kill, their timezone, and why a running turn must stop or a model
switch is refused (`POST /hook/v1/check`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from capgate.core.engine import Amounts, Refusal, check_access
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, Status
from capgate.hook.gate import Standing, block_message


def metadata_of(scope: Scope) -> dict[str, Any]:
    metadata = scope.extra.get("metadata") or {}
    return metadata if isinstance(metadata, dict) else {}


def refusal_of(data: dict[str, Any]) -> Refusal:
    """A refusal as the ledger keeps it (a retried gate answers it again)."""
    limit = Limit.from_json(data["limit"]) if data.get("limit") else None
    return Refusal(
        str(data["code"]), str(data["message"]), str(data["scope"]), str(data["name"]), limit,
        int(data.get("used") or 0), data.get("resets_at"),
    )  # fmt: skip


def status_refusal(scopes: Sequence[Scope], now: float) -> Refusal | None:
    """Status and expiry only (the model is not known)."""
    for scope in scopes:
        label = f'{scope.kind.value} "{scope.name}"'
        if scope.status is Status.REVOKED:
            return Refusal(
                "revoked", f"The {label} has been revoked.", scope.kind.value, scope.name
            )
        if scope.status is Status.PAUSED:
            msg = f"The {label} is paused by an administrator; ask them to resume it."
            return Refusal("paused", msg, scope.kind.value, scope.name)
        if scope.expires_at is not None and now >= scope.expires_at:
            return Refusal("expired", f"The {label} has expired.", scope.kind.value, scope.name)
    return None


def status_of(scopes: Sequence[Scope], now: float) -> str:
    if any(
        s.status is Status.REVOKED or (s.expires_at is not None and now >= s.expires_at)
        for s in scopes
    ):
        return "revoked"
    return "paused" if any(s.status is Status.PAUSED for s in scopes) else "active"


def logout_of(scopes: Sequence[Scope]) -> bool:
    """An admin killed the person with logout: the hook logs the agent out."""
    return any(
        s.status is not Status.ACTIVE and bool(metadata_of(s).get("hook_logout")) for s in scopes
    )


def timezone_of(scopes: Sequence[Scope]) -> str:
    """The person's timezone (their user scope's), else the machine key's."""
    user = next((s for s in scopes if s.kind is ScopeKind.USER), None)
    return (user or scopes[0]).timezone


def stop_reason(
    scopes: Sequence[Scope], model: str | None, standing: Sequence[Standing], now: float
) -> str | None:
    """Why a running turn must stop now: a scope paused, revoked or expired; its model not
    allowed now; a cost or token limit that applies already used up."""
    refusal = check_access(scopes, (model, model), now) if model else status_refusal(scopes, now)
    if refusal is not None:
        return f"capgate: {refusal.message}"
    spent = (Metric.COST_USD, Metric.TOKENS, Metric.INPUT_TOKENS, Metric.OUTPUT_TOKENS)
    for s in standing:
        limit = s.usage.limit
        applies = model is None or limit.applies_to(model)
        if limit.metric in spent and applies and s.usage.used >= limit.max:
            return limit_message(s, scopes)
    return None


def switch_reason(
    scopes: Sequence[Scope],
    target: str,
    standing: Sequence[Standing],
    worst: Callable[[str], Amounts],
    now: float,
) -> str | None:
    """Why a switch to `target` is refused: not allowed now, or its caps used up (one more
    prompt of it does not fit its prompt and credit limits, or a limit on it is spent)."""
    refusal = check_access(scopes, (target, target), now)
    if refusal is not None:
        return f"capgate: {refusal.message}"
    need = worst(target)
    for s in standing:
        limit = s.usage.limit
        if not limit.applies_to(target):
            continue
        prompt_metric = limit.metric in (Metric.REQUESTS, Metric.CREDITS)
        if (prompt_metric and s.usage.remaining < need.of(limit.metric)) or (
            s.usage.used >= limit.max
        ):
            return limit_message(s, scopes)
    return None


def limit_message(s: Standing, scopes: Sequence[Scope]) -> str:
    kind, _, name = s.scope.partition(":")
    refusal = Refusal(
        "limit_exceeded", "", kind, name, s.usage.limit, s.usage.used, s.usage.resets_at
    )
    return block_message(refusal, [s], Amounts(), timezone_of(scopes), None)
