"""`capgate statusline`: one line for Claude Code's status bar: the capgate budget left
(the dollar limit with the least left, from /v1/me with CAPGATE_KEY, or on a hook machine
from /hook/v1/status with its token) and today's local cost at API prices (from the
session files). It runs on every status refresh, so both are cached in one small file
for CAPGATE_STATUSLINE_TTL seconds (default 30) and a cache hit imports nothing of
capgate beyond this module (`python -X importtime`: ~5 ms).
Never fails: a problem shows in the line itself; the key or token is never written
anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TTL = 30.0
# What decides the budget shown (budget.key_from / url_from read these).
IDENTITY_VARS = ("CAPGATE_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY",
                 "CAPGATE_URL", "ANTHROPIC_BASE_URL")  # fmt: skip
SEPARATOR = " · "
HOOK_DIR = "/etc/capgate-hook"  # as capgate.mcp.budget.HOOK_DIR (not imported on a hit)


def _hook_identity(env: Mapping[str, str]) -> list[str]:
    """The hook machine the budget would come from without a key: its directory and what
    its config.json and token hold (read, hashed by the caller; an unreadable one is '')."""
    base = Path(env.get("CAPGATE_HOOK_DIR") or HOOK_DIR)
    found = [str(base)]
    for name in ("config.json", "token"):
        try:
            found.append((base / name).read_text("utf-8", "replace"))
        except OSError:
            found.append("")
    return found


def cache_path(env: Mapping[str, str]) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "capgate" / "statusline.json"


def ttl(env: Mapping[str, str]) -> float:
    try:
        return max(0.0, float(env.get("CAPGATE_STATUSLINE_TTL", DEFAULT_TTL)))
    except ValueError:
        return DEFAULT_TTL


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(data))
        partial.replace(path)  # whole or not at all: a concurrent reader never sees half
    except OSError:
        pass  # no cache: slower, still right


def _fresh(part: Any, ident: str, now: float, max_age: float) -> str | None:
    if isinstance(part, dict) and part.get("id") == ident:
        at = part.get("at")
        if isinstance(at, int | float) and 0 <= now - at < max_age:
            text = part.get("text")
            return text if isinstance(text, str) else None
    return None


def budget_text(env: Mapping[str, str], now: float) -> str | None:
    """'$4.20 left today' for the tightest dollar limit, else the limit with the least
    left ('14 prompts left (day)'); from the key's /v1/me or, without a key, the hook
    machine's status; None with neither."""
    from capgate.core.limits import usd_to_nano
    from capgate.mcp import budget

    try:
        summary = budget.summarize(budget.me_from(env, timeout=2.0), now)
    except budget.BudgetError as exc:
        return exc.brief or None
    row = budget.tightest_dollars(summary)
    if row is None:
        return _least_left(summary)
    cents = usd_to_nano(row["left"]) // 10_000_000  # down: never show more than is left
    text = f"capgate ${cents // 100:,}.{cents % 100:02d} left ({row['window']})"
    fc = row["forecast"]
    if fc is not None and fc["over"] and fc["runs_out_at"] is not None:
        text += time.strftime(" · out at %H:%M", time.localtime(fc["runs_out_at"]))
    return text


def _least_left(summary: Mapping[str, Any]) -> str:
    """With no dollar limit (hook mode counts prompts): the count limit of all models with
    the least left for its max, in the words `capgate status` uses on a hook machine."""
    rows = [r for r in summary["limits"] if r["metric"] not in ("cost_usd", "concurrent")]
    rows = [r for r in rows if not r.get("model")] or rows
    if not rows:
        return "capgate: no limit"
    row = min(rows, key=lambda r: (int(r["left"]) / max(int(r["max"]), 1), int(r["left"])))
    noun = str(row["metric"]).replace("_", " ")
    if noun == "requests" and summary.get("machine"):
        noun = "prompts"  # what a request is on a hook machine
    return f"capgate {int(row['left']):,} {noun} left ({row['window']})"


def today_text(env: Mapping[str, str]) -> str:
    from datetime import date

    from capgate.local.files import system_zone
    from capgate.local.render import cents
    from capgate.mcp.tools import LocalUsage, UsageError

    usage = LocalUsage(env, Path.home(), Path.cwd(), system_zone)
    today = date.today().isoformat()
    try:
        report = usage.period("daily", usage.query(today, today, None, None, "all"), False, 1)
    except UsageError:
        return "today: no session files"
    total = report["totals"]
    nano = round(total["totalCost"] * 1e9)  # shown to the cent: a float is exact enough
    return f"today {cents(nano)}" + ("+?" if total["unpricedModels"] else "")


def render(env: Mapping[str, str], now: float) -> str:
    path = cache_path(env)
    cache = _read(path)
    max_age = ttl(env)
    # The cache is valid for one key and server, or one hook machine's enrolment; it keeps
    # a hash of them, never the key or the token.
    who = "\n".join([*(env.get(var, "") for var in IDENTITY_VARS), *_hook_identity(env)])
    budget_id = hashlib.sha256(who.encode()).hexdigest()[:16]
    today_id = time.strftime("%Y-%m-%d", time.localtime(now))
    budget = _fresh(cache.get("budget"), budget_id, now, max_age)
    today = _fresh(cache.get("today"), today_id, now, max_age)
    stale = budget is None or today is None
    if budget is None:
        budget = budget_text(env, now) or ""
        cache["budget"] = {"id": budget_id, "at": now, "text": budget}
    if today is None:
        today = today_text(env)
        cache["today"] = {"id": today_id, "at": now, "text": today}
    if stale:
        _write(path, cache)
    return SEPARATOR.join(part for part in (budget, today) if part)


def statusline() -> None:
    """Print one status line for Claude Code (`statusLine` in its settings): capgate
    budget left and today's local cost, cached (CAPGATE_STATUSLINE_TTL seconds)."""
    if not sys.stdin.isatty():
        sys.stdin.read()  # Claude Code's session JSON: read it all so its pipe never blocks
    print(render(os.environ, time.time()))


if __name__ == "__main__":  # `python -m capgate.cli.statusline`: skips the CLI's imports
    statusline()
