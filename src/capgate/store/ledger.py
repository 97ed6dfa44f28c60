"""The ledger and the audit log read back: the store port's parts (`LedgerReader` and
the live feed's `EventSource`, part of `base.Store`) and what selects entries
(`RequestQuery`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from capgate.store.records import (
    AuditEntry,
    EventBatch,
    KeyActivity,
    LedgerEntry,
    MetricsSnapshot,
    SeriesRow,
    Summary,
    UsageRow,
)


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """Which ledger entries to read: every filter given must match (AND); `since` is
    inclusive, `until` exclusive (created_at, Unix seconds)."""

    key: str | None = None
    team: str | None = None
    teams: frozenset[str] | None = None  # the team is one of these (a team admin's teams)
    user: str | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    outcome: str | None = None
    request_id: str | None = None  # the x-capgate-request-id its client was answered with
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: int | None = None  # entries older than this id


class LedgerReader(Protocol):
    """The ledger and the audit log, read back. Each read includes every settlement this
    process submitted before the call."""

    async def query_requests(self, query: RequestQuery) -> list[LedgerEntry]:
        """The entries `query` selects, newest first (by id, descending), at most
        `query.limit`; `query.cursor`: only ids below it."""

    async def usage(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[UsageRow]:
        """The ledger in [since, until) summed per `group_by` (one of
        `records.USAGE_GROUPS`; KeyError otherwise), by cost descending then group
        ascending, the None group first."""

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""

    async def summary(self, query: RequestQuery) -> Summary:
        """Totals of the entries `query` selects (filters key, team, teams, user, model,
        provider, since, until; the others are ignored)."""

    async def series_rows(
        self, query: RequestQuery, group_by: str | None, grain: int
    ) -> list[SeriesRow]:
        """The entries `query` selects (filters as for summary) summed per `grain` seconds
        (bucket = floor(created_at / grain) * grain) and per `group_by` (one of
        `USAGE_GROUPS` but `day`, or None: one group, None). Unordered."""

    async def key_activity(self, day_start: float, month_start: float) -> dict[str, KeyActivity]:
        """Per key id, every key there is: spend since `day_start` and since `month_start`
        (nano-dollars, by the entries' key_id) and when its last entry was created (by
        key name; None if never)."""

    async def metrics_snapshot(self, now: float, ledger: bool) -> MetricsSnapshot:
        """Every scope's limits at `now`, the reservations held, and (when `ledger`) the
        ledger's totals (None otherwise)."""


class EventSource(Protocol):
    """The live feed's reads. Ids grow in commit order, so a reader that reads by
    increasing id from a cursor misses nothing committed later."""

    async def latest_ids(self) -> tuple[int, int]:
        """The highest ledger id and audit id (0 when empty)."""

    async def events_after(self, request_id: int, audit_id: int, limit: int = 500) -> EventBatch:
        """Ledger entries with id > `request_id` and audit entries with id > `audit_id`,
        each oldest first, at most `limit` of each."""
