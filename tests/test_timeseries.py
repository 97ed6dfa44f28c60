"""Chart arithmetic, pure: buckets of a range in a timezone (DST days, half-hour offsets),
and ledger sums per 15-minute grain folded into them with the top groups kept apart."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from capgate.timeseries import MAX_BUCKETS, OTHER, auto_step, bucket_starts, fold


def ts(text: str, tz: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp())


def test_hour_buckets_cover_the_range() -> None:
    starts = bucket_starts("hour", ts("2026-05-01T10:30"), ts("2026-05-01T13:10"), "UTC")
    assert starts == [ts(f"2026-05-01T{h}:00") for h in (10, 11, 12, 13)]


def test_day_buckets_follow_dst() -> None:
    berlin = "Europe/Berlin"  # 2026-03-29: clocks go from 02:00 to 03:00
    starts = bucket_starts(
        "day", ts("2026-03-28T00:00", berlin), ts("2026-03-31T00:00", berlin), berlin
    )
    assert starts == [ts(f"2026-03-{d}T00:00", berlin) for d in (28, 29, 30)]
    assert [b - a for a, b in pairwise(starts)] == [86400, 23 * 3600]


def test_hours_in_a_half_hour_zone_start_at_half_past() -> None:
    starts = bucket_starts("hour", ts("2026-05-01T10:00"), ts("2026-05-01T12:00"), "Asia/Kolkata")
    assert [datetime.fromtimestamp(s, UTC).minute for s in starts] == [30, 30, 30]
    assert starts[0] == ts("2026-05-01T09:30")


def test_too_many_buckets_is_an_error() -> None:
    with pytest.raises(ValueError, match="buckets"):
        bucket_starts("minute", 0, (MAX_BUCKETS + 5) * 60, "UTC")


@pytest.mark.parametrize(
    ("span", "step"), [(3600, "minute"), (3 * 3600, "minute"), (86400, "hour"), (30 * 86400, "day")]
)
def test_auto_step(span: int, step: str) -> None:
    assert auto_step(1000, 1000 + span) == step


def test_fold_keeps_the_costliest_groups_and_sums_the_rest() -> None:
    h0, h1 = ts("2026-05-01T10:00"), ts("2026-05-01T11:00")
    starts = [h0, h1]
    rows = [  # (grain start, group, requests, cost nano, tokens, refused, errors)
        (h0, "a", 2, 3_000, 10, 0, 0),
        (h0 + 900, "a", 1, 1_500, 5, 1, 0),  # another grain of the same hour
        (h1 + 2700, "a", 1, 1, 1, 0, 1),
        (h0, "b", 5, 2_000, 50, 0, 0),
        (h1, "c", 1, 10, 1, 0, 0),
        (h1, None, 4, 20, 4, 0, 0),
        (h0 - 900, "a", 9, 9, 9, 9, 9),  # before the first bucket: ignored
    ]
    series = fold(rows, starts, top=2)
    assert [s["name"] for s in series] == ["a", "b", OTHER]
    a, b, other = series
    assert a["requests"] == [3, 1] and a["cost_usd"] == ["0.0000045", "0.000000001"]
    assert a["refused"] == [1, 0] and a["errors"] == [0, 1] and a["tokens"] == [15, 1]
    assert a["total_requests"] == 4 and a["total_cost_usd"] == "0.000004501"
    assert b["requests"] == [5, 0] and b["cost_usd"] == ["0.000002", "0"]
    assert other["requests"] == [0, 5] and other["total_cost_usd"] == "0.00000003"
    assert fold([], starts, top=3) == []
