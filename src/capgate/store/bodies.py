"""The logged bodies' part of the store port (`BodyStore`, part of `base.Store`) and its
record. Table `request_bodies` (SQLite migration 16, PostgreSQL 10): one row per request
whose scopes opted in, keyed by the `x-capgate-request-id` its client was answered with,
holding the redacted request body and answer (each cut to `server.body_log_max_bytes`),
their sizes as received, and when it was written; rows older than
`server.body_retention_days` are deleted in bounded batches (`delete_bodies`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class BodyRecord:
    request_id: str
    created_at: float
    request: str  # redacted, cut to the cap (with a marker)
    answer: str | None  # None: no answer was sent (an error before one)
    request_bytes: int  # sizes as received and sent, before redaction and the cap
    answer_bytes: int
    truncated: bool  # either part was cut

    def values(self) -> tuple[object, ...]:
        return (
            self.request_id, self.created_at, self.request, self.answer,
            self.request_bytes, self.answer_bytes, int(self.truncated),
        )  # fmt: skip


def body_from_row(row: Any) -> BodyRecord:
    """A `sqlite3.Row` or an `asyncpg.Record` (both index by column name)."""
    return BodyRecord(
        row["request_id"], row["created_at"], row["request"], row["answer"],
        row["request_bytes"], row["answer_bytes"], bool(row["truncated"]),
    )  # fmt: skip


class BodyStore(Protocol):
    async def write_body(self, body: BodyRecord) -> None:
        """Keep a request's logged body (a second write for the same request id is
        ignored). StoreUnavailable when it cannot be written."""
        ...

    async def read_body(self, request_id: str) -> BodyRecord | None:
        """The logged body of a request, or None (not logged, or deleted by retention)."""
        ...

    async def delete_bodies(self, before: float, limit: int) -> int:
        """Delete at most `limit` logged bodies written before `before` (Unix seconds);
        returns how many were deleted."""
        ...
