"""AWS event-stream framing (`application/vnd.amazon.eventstream`), the binary framing of
Bedrock's `invoke-with-response-stream`: a sans-I/O decoder fed the bytes as they arrive
and an encoder (for the mock and the tests).

One message: total length (4 bytes, big-endian), headers length (4), CRC32 of those 8
bytes (4), the headers, the payload, CRC32 of everything before it (4). A header is a
1-byte name length, the name, a 1-byte type and the value; Bedrock sends strings (type 7:
2-byte length, UTF-8). A CRC that does not match, or a length out of bounds, is refused:
the stream cannot be trusted after it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # AWS's own limit is 16 MiB
_PRELUDE = 12
# Fixed sizes of the header value types, by type byte (strings and bytes have a length).
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class EventStreamError(ValueError):
    """The bytes are not a valid event stream."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, str | bytes | int | bool]
    payload: bytes


class EventStreamDecoder:
    """Feed bytes in any pieces; complete messages come out in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a message begun and not finished (0 at a clean end)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out = []
        while len(self._buffer) >= _PRELUDE:
            total, header_len, prelude_crc = struct.unpack_from(">III", self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise EventStreamError("event stream: the prelude's CRC does not match")
            if total < _PRELUDE + 4 + header_len or total > MAX_MESSAGE_BYTES:
                raise EventStreamError(f"event stream: a message of {total} bytes")
            if len(self._buffer) < total:
                break
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (crc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(frame[:-4]) != crc:
                raise EventStreamError("event stream: the message's CRC does not match")
            headers = _headers(frame[_PRELUDE : _PRELUDE + header_len])
            out.append(Message(headers, frame[_PRELUDE + header_len : -4]))
        return out


def _headers(data: bytes) -> dict[str, str | bytes | int | bool]:
    out: dict[str, str | bytes | int | bool] = {}
    i = 0
    try:
        while i < len(data):
            size = data[i]
            name = data[i + 1 : i + 1 + size].decode()
            kind = data[i + 1 + size]
            i += 2 + size
            value: str | bytes | int | bool
            if kind in (6, 7):  # bytes, string
                (length,) = struct.unpack_from(">H", data, i)
                raw = data[i + 2 : i + 2 + length]
                value = raw.decode() if kind == 7 else raw
                i += 2 + length
            elif kind in _FIXED:
                width = _FIXED[kind]
                raw = data[i : i + width]
                value = kind == 0 if kind in (0, 1) else int.from_bytes(raw, "big", signed=True)
                if kind == 9:
                    value = raw
                i += width
            else:
                raise EventStreamError(f"event stream: unknown header type {kind}")
            out[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise EventStreamError(f"event stream: malformed headers ({exc})") from None
    return out


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One message with string headers (what Bedrock sends)."""
    head = b"".join(
        bytes([len(k.encode())]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
        + v.encode()
        for k, v in headers.items()
    )  # fmt: skip
    total = _PRELUDE + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))
