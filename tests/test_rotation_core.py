"""Key rotation's pure parts (capgate/rotation.py, alerts/rotation_due.py): durations,
the grace of each old secret, and when a scheduled rotation is announced."""

from __future__ import annotations

import pytest

from capgate.alerts.rotation_due import rotation_alert
from capgate.core.limits import Scope, ScopeKind, Status
from capgate.rotation import (
    KEEP_RETIRED,
    RetiredSecret,
    dump_retired,
    format_duration,
    load_retired,
    notice_at,
    parse_duration,
    retire,
    rotated_message,
)

DAY = 86400.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("45", 45), ("45s", 45), ("30m", 1800), ("1h", 3600), ("90d", 90 * DAY),
     ("2w", 14 * DAY), (" 7d ", 7 * DAY), (3600, 3600), (1.5, 1.5)],
)  # fmt: skip
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "-1h", "h", "1.5h", "soon", -1, True, "9" * 12])
def test_bad_durations_say_the_syntax(text: str | float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90 * DAY, "90d"), (14 * DAY, "2w"), (5400, "90m"), (3600, "1h"), (61, "61s"), (1.5, "1.5s")],
)
def test_durations_are_shown_in_their_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_each_old_secret_keeps_its_grace_but_a_rotation_never_extends_one() -> None:
    first = retire(b"a", (), 100.0, 3600.0)
    assert first == (RetiredSecret(b"a", 100.0, 3700.0),)
    second = retire(b"b", first, 200.0, 7200.0)  # longer: a's end stays
    assert [(s.hash, s.valid_until) for s in second] == [(b"b", 7400.0), (b"a", 3700.0)]
    third = retire(b"c", second, 300.0, 0.0)  # a leak: every old secret ends now
    assert [(s.hash, s.valid_until) for s in third] == [(b"c", 300.0), (b"b", 300.0), (b"a", 300.0)]
    assert load_retired(dump_retired(third)) == third
    many: tuple[RetiredSecret, ...] = ()
    for n in range(KEEP_RETIRED + 3):
        many = retire(bytes([n]), many, float(n), 0.0)
    assert len(many) == KEEP_RETIRED and many[0].hash == bytes([KEEP_RETIRED + 2])


def test_the_rotated_message_says_when() -> None:
    message = rotated_message(RetiredSecret(b"a", 0.0, 3600.0))
    assert "rotated at 1970-01-01T00:00:00Z" in message
    assert "stopped working at 1970-01-01T01:00:00Z" in message


def _key(created: float, every: float | None, rotated: float | None = None, **kw: object) -> Scope:
    extra = {"created_at": created, "rotated_at": rotated, "rotate_every": every,
             "prefix": "sk-cg-abc-…"}  # fmt: skip
    return Scope(ScopeKind.KEY, "abc", "ci", extra=extra, **kw)  # type: ignore[arg-type]


def test_a_scheduled_rotation_is_announced_a_week_ahead_once_per_period() -> None:
    every = 90 * DAY
    assert notice_at(every, every) == 83 * DAY
    assert notice_at(4 * DAY, 4 * DAY) == 3 * DAY  # a short period: a quarter ahead
    assert rotation_alert(_key(0.0, None), 10**9) is None
    assert rotation_alert(_key(0.0, every), 82 * DAY) is None
    alert = rotation_alert(_key(0.0, every), 84 * DAY)
    assert alert is not None and alert.type == "rotation_due"
    assert alert.key == f"rotation_due:abc:{int(every)}" and alert.expires_at == 2 * every
    assert alert.data == {"key": "ci", "prefix": "sk-cg-abc-…", "due_at": "1970-04-01T00:00:00Z",
                          "rotated_at": None}  # fmt: skip
    assert "is due for rotation at" in alert.text
    late = rotation_alert(_key(0.0, every), 91 * DAY)
    assert late is not None and "overdue" in late.text and late.key == alert.key
    # Rotated: the next period, another claim.
    rotated = rotation_alert(_key(0.0, every, rotated=50 * DAY), 134 * DAY)
    assert rotated is not None and rotated.key == f"rotation_due:abc:{int(140 * DAY)}"
    assert rotation_alert(_key(0.0, every, rotated=50 * DAY), 91 * DAY) is None
    assert rotation_alert(_key(0.0, every, status=Status.REVOKED), 91 * DAY) is None
