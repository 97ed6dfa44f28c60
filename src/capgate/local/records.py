"""What the readers produce: one `Entry` per model answer, and the count of what was
skipped on the way (bad lines, unreadable files) so that a report can say so."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

SYNTHETIC = "<synthetic>"  # Claude Code's own error lines: tokens count, no model, no price
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per answer
class Entry:
    agent: str  # "claude" | "codex"
    micros: int  # its time: microseconds since the Unix epoch (a report compares and
    # buckets these; `timestamp` makes the datetime only where one is shown)
    project: str
    session: str
    model: str
    input_tokens: int = 0  # uncached input
    output_tokens: int = 0  # reasoning / thinking included, as logged
    cache_write_tokens: int = 0  # 5-minute cache writes
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0  # Codex: part of output, shown apart
    message_id: str | None = None
    request_id: str | None = None
    sidechain: bool = False
    has_speed: bool = False

    @property
    def timestamp(self) -> datetime:  # aware, UTC
        return EPOCH + self.micros * MICROSECOND

    @property
    def cache_creation_tokens(self) -> int:
        return self.cache_write_tokens + self.cache_write_1h_tokens

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
        )


@dataclass(slots=True)
class Skipped:
    """Lines that could not be read as JSON (bad or half-written) and files that could
    not be opened; never fatal, always reported."""

    bad_lines: int = 0
    unreadable_files: list[str] = field(default_factory=list)

    def add(self, other: Skipped) -> None:
        self.bad_lines += other.bad_lines
        self.unreadable_files.extend(other.unreadable_files)
