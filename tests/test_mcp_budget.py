"""The budget forecast (capgate.mcp.budget) as pure functions: tables of cases, exact
integers (nano-dollars), no server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capgate.mcp.budget import (
    forecast,
    key_from,
    me_of_hook,
    summarize,
    tightest_dollars,
    url_from,
)

DEC = datetime(2026, 12, 1, tzinfo=UTC).timestamp()  # a 31-day month
DAY = 86400


def row(
    metric: str, window: str, used: Any, reserved: Any, top: Any, **extra: Any
) -> dict[str, Any]:
    return {"metric": metric, "window": window, "used": used, "reserved": reserved,
            "max": top, "remaining": extra.pop("remaining", 0), **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("limit", "now", "want"),
    [
        # $1 in 10 of 31 days: $3.10 at the month's end, $5 reached on day 50 (after it).
        (row("cost_usd", "month", "1", "0", "5"), DEC + 10 * DAY,
         {"at_reset": "3.1", "over": False, "runs_out_at": int(DEC) + 50 * DAY}),
        # held money counts as spent: $1.5 + $0.5 = $2 -> $6.20, out on day 25
        (row("cost_usd", "month", "1.5", "0.5", "5"), DEC + 10 * DAY,
         {"at_reset": "6.2", "over": True, "runs_out_at": int(DEC) + 25 * DAY}),
        # nano-dollars stay exact: 1 nano-dollar in a tenth of the month -> 10 (floor)
        (row("cost_usd", "month", "0.000000001", "0", "1"), DEC + 31 * DAY // 10,
         {"at_reset": "0.00000001", "over": False, "runs_out_at": int(DEC) + 31 * DAY // 10 * 10**9}),
        # requests: 10 + 2 held in 6 hours of a day -> 48 of 40
        (row("requests", "day", 10, 2, 40), DEC + 6 * 3600,
         {"at_reset": 48, "over": True, "runs_out_at": int(DEC) + 40 * 6 * 3600 // 12}),
        (row("tokens", "day", 0, 0, 40), DEC + 6 * 3600,
         {"at_reset": 0, "over": False, "runs_out_at": None}),
    ],
)  # fmt: skip
def test_forecast_at_the_current_pace(limit: dict[str, Any], now: float, want: Any) -> None:
    assert forecast(limit, now, "UTC") == want


@pytest.mark.parametrize(
    ("limit", "now"),
    [
        (row("cost_usd", "total", "1", "0", "5"), DEC + 10 * DAY),  # never resets
        (row("cost_usd", "rolling-24h", "1", "0", "5"), DEC + 10 * DAY),  # no fixed end
        (row("requests", "day", 3, 0, 5), DEC + 59),  # too early to have a pace
    ],
)
def test_no_forecast_when_it_cannot_be_said(limit: dict[str, Any], now: float) -> None:
    assert forecast(limit, now, "UTC") is None


def test_forecast_uses_the_keys_timezone() -> None:
    """10:00 UTC is 19:00 in Tokyo: 19 of 24 hours of Tokyo's day have passed."""
    limit = row("requests", "day", 19, 0, 100)
    got = forecast(limit, datetime(2026, 12, 4, 10, tzinfo=UTC).timestamp(), "Asia/Tokyo")
    assert got is not None and got["at_reset"] == 24


def test_summary_covers_the_scopes_above_and_picks_the_tightest_dollars() -> None:
    me = {
        "key": "ana-laptop", "status": "active", "timezone": "UTC",
        "limits": [row("cost_usd", "day", "1", "0", "10", remaining="9", resets="r1")],
        "scopes": [{"kind": "team", "name": "web", "status": "active",
                    "limits": [row("cost_usd", "month", "95", "1", "100", remaining="4"),
                               row("requests", "day", 1, 0, 5, remaining=4)]}],
    }  # fmt: skip
    summary = summarize(me, DEC + 10 * DAY + 3600)
    assert [(r["scope"], r["metric"], r["left"]) for r in summary["limits"]] == [
        ("key ana-laptop", "cost_usd", "9"),
        ("team web", "cost_usd", "4"),
        ("team web", "requests", 4),
    ]
    tight = tightest_dollars(summary)
    assert tight is not None and tight["scope"] == "team web"


def test_the_key_is_a_virtual_key_never_the_admin_key() -> None:
    assert (
        key_from({"CAPGATE_KEY": "sk-cg-admin-x", "ANTHROPIC_API_KEY": "sk-cg-abc"}) == "sk-cg-abc"
    )
    assert key_from({"ANTHROPIC_API_KEY": "sk-ant-real"}) is None
    assert url_from({"ANTHROPIC_BASE_URL": "http://gw:4000/v1/"}) == "http://gw:4000"


def test_a_hook_machines_status_is_summarized_as_v1_me() -> None:
    """GET /hook/v1/status (amounts in the metric's unit: nano-dollars) in /v1/me's shape:
    the machine's own limits as the key's, the person's as a scope; `held` is reserved."""
    status = {
        "user": "ana", "machine": "ana@box", "timezone": "Europe/Berlin", "status": "active",
        "limits": [
            {"scope": "user:ana", "metric": "cost_usd", "window": "month", "model": None,
             "max": 5 * 10**9, "used": 10**9, "held": 90_000_001, "left": 3_909_999_999,
             "resets_at": DEC + 31 * DAY},
            {"scope": "key:ana@box", "metric": "requests", "window": "total",
             "model": "claude-opus-*", "max": 9, "used": 2, "held": 0, "left": 7,
             "resets_at": None},
        ],
    }  # fmt: skip
    summary = summarize(me_of_hook(status), DEC + 10 * DAY)
    assert summary["key"] == summary["machine"] == "ana@box" and summary["user"] == "ana"
    own, money = summary["limits"]
    assert own == {"scope": "key ana@box", "metric": "requests", "window": "total", "max": 9,
                   "used": 2, "reserved": 0, "left": 7, "resets": "never (total limit)",
                   "forecast": None, "model": "claude-opus-*"}  # fmt: skip
    assert (money["scope"], money["max"], money["used"], money["reserved"], money["left"]) == (
        "user ana",
        "5",
        "1",
        "0.090000001",
        "3.909999999",
    )
    assert money["resets"] == "2027-01-01 01:00 Europe/Berlin"
    # $1.090000001 in the 10 days and 1 hour since Berlin's month began (23:00 UTC), over
    # its 31 days, floored to the nano-dollar
    assert money["forecast"]["at_reset"] == "3.364979256"  # 1090000001 * 744 // 241
