"""Server-sent events, split at event boundaries as bytes arrive.

The relay forwards each complete event the moment its blank line arrives and keeps only
an unfinished tail, so nothing is buffered beyond one partial event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class EventSplitter:
    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Complete events in `chunk` (with what was left before), as one bytes block."""
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:  # normalise CRLF framing once, so boundaries are always \n\n
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data
            return b""
        self._tail = data[end + 2 :]
        return data[: end + 2]

    def rest(self) -> bytes:
        """What is left when the stream ends (an event cut off without its blank line)."""
        tail, self._tail = self._tail, b""
        return tail


def events(block: bytes) -> Iterator[bytes]:
    """The single events of a block of complete events, each without its blank line."""
    for event in block.split(b"\n\n"):
        if event:
            yield event


def data_of(event: bytes) -> bytes:
    """The joined `data:` lines of one event."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[6:] if line[5:6] == b" " else line[5:])
    return b"\n".join(parts)


def event_spans(block: bytes, pattern: re.Pattern[bytes]) -> Iterator[tuple[int, int]]:
    """(start, end) of each event in a block of complete events that `pattern` matches
    somewhere inside, end including the blank line. Only those events are looked at, so
    finding the one usage event among many costs a search, not a loop over all of them."""
    end = 0
    for match in pattern.finditer(block):
        if match.start() < end:
            continue  # another match in an event already yielded
        start = block.rfind(b"\n\n", 0, match.start())
        start = 0 if start < 0 else start + 2
        end = block.find(b"\n\n", match.end())
        end = len(block) if end < 0 else end + 2
        yield start, end
