"""What one request logs: its body as received and the answer its client was sent,
each kept up to a cap (plus a margin, so that a secret cut by the cap is still redacted
whole) while counting the full size. Pure; the service redacts, cuts and writes it.

A streamed answer is kept as the events the client received (after translation when
there was one), up to STREAM_FACTOR times the cap: one append per block on the request
path, no parsing there. The service assembles their text in the background
(`assemble.py`), where a secret split over several deltas is whole again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARGIN = 512  # bytes kept past the cap: redacted with the rest, then cut off
STREAM_FACTOR = 16  # events are ~20 times their text: this much kept to assemble the cap


@dataclass(slots=True)
class BodyCapture:
    request_id: str
    cap: int  # bytes kept of each part
    request: bytes  # at most cap + MARGIN
    request_bytes: int
    answer_parts: list[bytes] = field(default_factory=list)
    answer_kept: int = 0
    answer_bytes: int = 0
    created_at: float = 0.0
    stream: str | None = None  # the endpoint whose events the answer is, when streamed

    @classmethod
    def of(cls, request_id: str, raw: bytes, cap: int, now: float) -> BodyCapture:
        return cls(request_id, cap, raw[: cap + MARGIN], len(raw), created_at=now)

    def feed(self, block: bytes) -> None:
        """A part of the answer, as sent to the client."""
        self.answer_bytes += len(block)
        room = self.cap * (STREAM_FACTOR if self.stream else 1) + MARGIN - self.answer_kept
        if room > 0:
            kept = block[:room]
            self.answer_parts.append(kept)
            self.answer_kept += len(kept)

    @property
    def answer(self) -> bytes:
        return b"".join(self.answer_parts)


def cut(text: str, cap: int, total: int) -> tuple[str, bool]:
    """`text` (redacted from the first cap + MARGIN bytes of a part of `total` bytes) as
    stored: whole when the part fit in the cap, else its first `cap` bytes of UTF-8 and a
    marker; and whether it was cut."""
    if total <= cap:
        return text, False
    kept = text.encode()[:cap].decode("utf-8", "ignore")
    return f"{kept}\n[TRUNCATED: {total} bytes in all, the first {cap} kept]", True
