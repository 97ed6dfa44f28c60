"""A person's capgate budgets from the server (`GET /v1/me` with their key), each with a
forecast to its window's end at the current burn rate. `forecast` and `summarize` are
pure; `fetch_me` is the one network call (urllib: cheap to import for the status line)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capgate.core.limits import nano_to_decimal_str, usd_to_nano
from capgate.core.windows import NEVER, Rolling, parse_window, window_at

DEFAULT_URL = "http://127.0.0.1:4000"
MIN_ELAPSED = 60  # seconds into a window before its pace means anything
KEY_VARS = ("CAPGATE_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")


class BudgetError(Exception):
    """The server could not be asked, or refused (its message, never the key)."""


def key_from(env: Mapping[str, str]) -> str | None:
    """The person's capgate virtual key (sk-cg-...), never the admin key."""
    for var in KEY_VARS:
        value = env.get(var, "")
        if value.startswith("sk-cg-") and not value.startswith("sk-cg-admin-"):
            return value
    return None


def url_from(env: Mapping[str, str]) -> str:
    url = env.get("CAPGATE_URL") or env.get("ANTHROPIC_BASE_URL") or DEFAULT_URL
    return url.rstrip("/").removesuffix("/v1")


def fetch_me(url: str, key: str, timeout: float = 5.0) -> dict[str, Any]:
    import json  # lazy: the status line pays for these only on a cache miss
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - the configured capgate URL
        url + "/v1/me", headers={"authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise BudgetError(f"capgate at {url} answered {exc.code}: {message}") from None
    except (OSError, ValueError) as exc:
        raise BudgetError(f"cannot reach capgate at {url}: {exc}") from None
    if not isinstance(data, dict):
        raise BudgetError(f"capgate at {url} sent no JSON object")
    return data


def forecast(row: Mapping[str, Any], now: float, timezone: str) -> dict[str, Any] | None:
    """What the window will have used at its end if use goes on at its pace so far
    (used + held, over the time elapsed). None when it cannot be said: a total or rolling
    window, or too early in the window."""
    window = parse_window(str(row["window"]))
    if isinstance(window, Rolling):
        return None
    instance = window_at(window, now, timezone)
    elapsed = int(now) - instance.start
    if instance.end >= NEVER or elapsed < MIN_ELAPSED:
        return None
    dollars = row["metric"] == "cost_usd"
    spent = _amount(row["used"], dollars) + _amount(row["reserved"], dollars)
    top = _amount(row["max"], dollars)
    projected = spent * (instance.end - instance.start) // elapsed
    return {
        "at_reset": _shown(projected, dollars),
        "over": projected > top,
        "runs_out_at": _runs_out(spent, top, instance.start, elapsed),
    }


def _runs_out(spent: int, top: int, start: int, elapsed: int) -> int | None:
    """Unix seconds when the limit is reached at this pace (None: no use yet)."""
    if spent <= 0:
        return None
    return start + top * elapsed // spent


def _amount(value: Any, dollars: bool) -> int:
    return usd_to_nano(value) if dollars else int(value)


def _shown(amount: int, dollars: bool) -> str | int:
    return nano_to_decimal_str(amount) if dollars else amount


def summarize(me: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The limits of the key and of the scopes above it, small: one row per limit."""
    timezone = str(me.get("timezone") or "UTC")
    groups = [("key", me.get("key"), me.get("limits", []))]
    groups += [(s["kind"], s["name"], s["limits"]) for s in me.get("scopes", [])]
    rows = []
    for kind, name, limits in groups:
        for row in limits:
            out = {
                "scope": f"{kind} {name}",
                "metric": row["metric"],
                "window": row["window"],
                "max": row["max"],
                "used": row["used"],
                "reserved": row["reserved"],
                "left": row["remaining"],
                "resets": row.get("resets"),
                "forecast": forecast(row, now, timezone),
            }
            if row.get("model"):
                out["model"] = row["model"]
            rows.append(out)
    return {"key": me.get("key"), "status": me.get("status"), "limits": rows}


def tightest_dollars(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dollar limit with the least left, which is what a status line shows."""
    dollars = [r for r in summary["limits"] if r["metric"] == "cost_usd"]
    return min(dollars, key=lambda r: usd_to_nano(r["left"]), default=None)
