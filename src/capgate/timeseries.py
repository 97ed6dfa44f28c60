"""Charts' arithmetic, pure: the buckets of a time range in a timezone, and ledger sums per
small UTC-aligned grain folded into those buckets, with the top groups kept apart."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from typing import Any

from capgate.core.limits import nano_to_decimal_str
from capgate.core.windows import WindowKind, window_at

# Each step, and the grain the database sums by: 15 minutes divides every real UTC offset,
# so a grain never straddles a local hour or day.
STEPS = {
    "minute": (WindowKind.MINUTE, 60),
    "hour": (WindowKind.HOUR, 900),
    "day": (WindowKind.DAY, 900),
}
MAX_BUCKETS = 2000
OTHER = "(other)"

Row = tuple[int, "str | None", int, int, int, int, int]


def auto_step(since: float, until: float) -> str:
    span = until - since
    if span <= 3 * 3600:
        return "minute"
    return "hour" if span <= 3 * 86400 else "day"


def bucket_starts(step: str, since: float, until: float, tz: str) -> list[int]:
    """The start of every bucket that overlaps [since, until), in `tz`'s calendar."""
    kind = STEPS[step][0]
    starts: list[int] = []
    at = since
    while at < until:
        window = window_at(kind, at, tz)
        starts.append(window.start)
        if len(starts) > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} {step} buckets: choose a larger step")
        at = window.end
    return starts


def fold(rows: list[Row], starts: list[int], top: int) -> list[dict[str, Any]]:
    """One series per group (the `top` costliest by name, the rest summed as `(other)`),
    each with requests, cost_usd (exact decimal strings), tokens, refused and errors per
    bucket."""
    totals: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        totals[row[1]][0] += row[3]
        totals[row[1]][1] += row[2]
    ranked = sorted(totals, key=lambda g: (-totals[g][0], -totals[g][1], str(g)))
    kept = set(ranked[:top])
    width = len(starts)
    sums: dict[str | None, list[list[int]]] = {}
    for base, group, *values in rows:
        index = bisect_right(starts, base) - 1
        if index < 0 or index >= width:
            continue
        name = group if group in kept else OTHER
        columns = sums.setdefault(name, [[0] * width for _ in range(5)])
        for column, value in zip(columns, values, strict=True):
            column[index] += value
    order = [g for g in ranked if g in kept] + ([OTHER] if OTHER in sums else [])
    out = []
    for name in order:
        if name not in sums:
            continue
        requests, cost, tokens, refused, errors = sums[name]
        out.append(
            {
                "name": name,
                "requests": requests,
                "cost_usd": [nano_to_decimal_str(c) for c in cost],
                "tokens": tokens,
                "refused": refused,
                "errors": errors,
                "total_requests": sum(requests),
                "total_cost_usd": nano_to_decimal_str(sum(cost)),
            }
        )
    return out
