"""Key rotation, pure: a key's old secrets and until when each still works, the grace
arithmetic, and when a key is due for its scheduled rotation (docs/security.md#key-rotation).

A rotation gives a key a new secret and keeps everything else (id, name, limits, counters,
ledger). The old secret's SHA-256 is kept as a `RetiredSecret` that works until
`valid_until` (now + the grace the admin chose) and is refused after with a message that
says it was rotated. Each old secret keeps its own end, but a rotation never lets an
older one outlive the new grace: rotating with grace 0 (a leak) ends every old secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

KEEP_RETIRED = 10  # old secrets remembered to say "rotated"; older ones are simply invalid
MAX_GRACE_S = 90 * 86400.0
MIN_ROTATE_EVERY_S = 3600.0
MAX_ROTATE_EVERY_S = 3650 * 86400.0
NOTICE_S = 7 * 86400.0  # a scheduled rotation is announced this long before it is due
_DURATION = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class RetiredSecret:
    """An old secret of a key: its SHA-256, when it was replaced, until when it works."""

    hash: bytes
    rotated_at: float
    valid_until: float

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash.hex(),
            "rotated_at": self.rotated_at,
            "valid_until": self.valid_until,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetiredSecret:
        return cls(
            bytes.fromhex(data["hash"]), float(data["rotated_at"]), float(data["valid_until"])
        )


def parse_duration(value: str | float | int) -> float:
    """Seconds of `90d`, `12h`, `30m`, `2w`, `45s` or a plain number of seconds;
    ValueError with the syntax otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != value:  # negative or NaN
            raise ValueError(f"not a duration: {value!r}")
        return float(value)
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 0, 30m, 1h, 7d, 90d)")
    return float(int(match.group(1)) * _UNIT_S[match.group(2)])


def format_duration(seconds: float) -> str:
    """The largest whole unit: 7776000 -> `90d`, 5400 -> `90m`."""
    whole = int(seconds)
    for unit in ("w", "d", "h", "m"):
        if whole and whole % _UNIT_S[unit] == 0 and whole == seconds:
            return f"{whole // _UNIT_S[unit]}{unit}"
    return f"{whole}s" if whole == seconds else f"{seconds}s"


def retire(
    current: bytes, earlier: Sequence[RetiredSecret], now: float, grace_s: float
) -> tuple[RetiredSecret, ...]:
    """The old secrets after a rotation at `now`: `current` (the secret being replaced)
    working until now + grace, newest first; each earlier one ends no later than that."""
    until = now + grace_s
    capped = (replace_until(old, min(old.valid_until, until)) for old in earlier)
    return (RetiredSecret(current, now, until), *capped)[:KEEP_RETIRED]


def replace_until(old: RetiredSecret, valid_until: float) -> RetiredSecret:
    return RetiredSecret(old.hash, old.rotated_at, valid_until)


def load_retired(text: str | None) -> tuple[RetiredSecret, ...]:
    return tuple(RetiredSecret.from_json(x) for x in orjson.loads(text or "[]"))


def dump_retired(retired: Iterable[RetiredSecret]) -> str:
    return orjson.dumps([old.to_json() for old in retired]).decode()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotated_message(old: RetiredSecret) -> str:
    """What a client sending an old secret after its grace is told (never "invalid")."""
    return (
        f"This API key was rotated at {iso(old.rotated_at)}; the secret you sent stopped "
        f"working at {iso(old.valid_until)}. Use the key's new secret (ask your capgate "
        "admin for it)."
    )


def due_at(
    created_at: float, rotated_at: float | None, rotate_every_s: float | None
) -> float | None:
    """When a key set to rotate every `rotate_every_s` is next due (None: not scheduled)."""
    if rotate_every_s is None:
        return None
    return (rotated_at if rotated_at is not None else created_at) + rotate_every_s


def notice_at(due: float, rotate_every_s: float) -> float:
    """When the reminder of a rotation due at `due` is sent: a week ahead, or a quarter of
    the period ahead when the period is shorter than four weeks."""
    return due - min(NOTICE_S, rotate_every_s / 4)
