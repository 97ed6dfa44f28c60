"""A person's capgate budgets from the server, each with a forecast to its window's end
at the current burn rate: `GET /v1/me` with their key, or on a hook machine (no key)
`GET /hook/v1/status` with the machine's token, whose rows `me_of_hook` puts in /v1/me's
shape so both go through the one `summarize` and `forecast`. Those are pure; `fetch_me` and
`fetch_hook_status` are the network calls (urllib: cheap to import for the status line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgate.core.limits import nano_to_decimal_str, usd_to_nano
from capgate.core.windows import NEVER, Rolling, format_reset, parse_window, window_at

DEFAULT_URL = "http://127.0.0.1:4000"
MIN_ELAPSED = 60  # seconds into a window before its pace means anything
KEY_VARS = ("CAPGATE_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY")
HOOK_DIR = "/etc/capgate-hook"  # where the hook's installer leaves config.json and token
REVOKED_HINT = "revoked? reinstall the hook with a new install code"


class BudgetError(Exception):
    """The server could not be asked, or refused (its message, never the key or token).
    `brief` is what a status line shows of it."""

    def __init__(self, message: str, brief: str = "capgate unreachable") -> None:
        super().__init__(message)
        self.brief = brief


@dataclass(frozen=True)
class HookMachine:
    """This machine's hook-mode enrolment: the server it reports to and its token."""

    server: str
    token: str = field(repr=False)  # never in a repr, a log or a message
    name: str | None


def hook_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("CAPGATE_HOOK_DIR") or HOOK_DIR)


def hook_machine(env: Mapping[str, str]) -> HookMachine | None:
    """The enrolment in the hook directory, None when hook mode is not installed here (no
    config.json or no token); BudgetError when it is there but cannot be used."""
    import json

    base = hook_dir(env)
    config_path, token_path = base / "config.json", base / "token"
    if not config_path.is_file() or not token_path.exists():
        return None
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise BudgetError(f"cannot read {config_path}: {exc}", "capgate: hook config?") from None
    try:
        token = token_path.read_text("utf-8").strip()
    except PermissionError:
        raise BudgetError(
            f"cannot read {token_path}: only root and the group of the OS user the hook was "
            "installed for may read it. Run it as that user (or with sudo).",
            "capgate: token unreadable",
        ) from None
    except OSError as exc:
        raise BudgetError(f"cannot read {token_path}: {exc}", "capgate: token unreadable") from None
    server = config.get("server") if isinstance(config, dict) else None
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise BudgetError(
            f'{config_path} names no server ("server": "https://..."); reinstall the hook',
            "capgate: hook config?",
        )
    if not token:
        raise BudgetError(
            f"{token_path} is empty; reinstall the hook with a new install code",
            "capgate: token unreadable",
        )
    name = config.get("machine")
    return HookMachine(server.rstrip("/"), token, name if isinstance(name, str) else None)


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


def me_from(env: Mapping[str, str], timeout: float = 5.0) -> dict[str, Any]:
    """/v1/me with the person's key; without one, on a hook machine, its status in /v1/me's
    shape (`me_of_hook`). BudgetError when neither is configured (saying what to set)."""
    key = key_from(env)
    if key is not None:
        return fetch_me(url_from(env), key, timeout)
    machine = hook_machine(env)
    if machine is None:
        raise BudgetError(
            "no capgate key configured: set CAPGATE_KEY (sk-cg-...) and CAPGATE_URL (or enrol "
            f"this machine in hook mode: {hook_dir(env)}/ has no config.json and token)",
            brief="",
        )
    status = fetch_hook_status(machine, timeout)
    try:
        return me_of_hook(status)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BudgetError(
            f"capgate at {machine.server} sent a status this version cannot read"
        ) from None


def fetch_me(url: str, key: str, timeout: float = 5.0) -> dict[str, Any]:
    return _get(url, "/v1/me", key, timeout, hint="", brief="capgate: key refused")


def fetch_hook_status(machine: HookMachine, timeout: float = 5.0) -> dict[str, Any]:
    """The person's limits as this machine's token sees them (GET /hook/v1/status)."""
    return _get(
        machine.server, "/hook/v1/status", machine.token, timeout,
        hint=f" (this machine's token was refused: {REVOKED_HINT})",
        brief="capgate: machine token refused (revoked?)",
    )  # fmt: skip


def _get(url: str, path: str, token: str, timeout: float, hint: str, brief: str) -> dict[str, Any]:
    """GET `path` with the bearer `token`; a refusal's message says who answered what (and
    `hint` on a 401), never the token."""
    import json  # lazy: the status line pays for these only on a cache miss
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - the configured capgate URL
        url + path, headers={"authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        message = " ".join(str(message).replace(token, "...").split())  # one line
        if exc.code == 401:
            raise BudgetError(f"capgate at {url} answered 401: {message}{hint}", brief) from None
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


def me_of_hook(status: Mapping[str, Any]) -> dict[str, Any]:
    """`GET /hook/v1/status` in `GET /v1/me`'s shape: the machine is the key (its own
    limits), the person and the scopes above are `scopes`; dollars as decimal strings,
    `held` (prompts in flight) as `reserved`, `resets_at` as `resets` in the person's zone."""
    timezone = str(status.get("timezone") or "UTC")
    machine = status.get("machine")
    own: list[dict[str, Any]] = []
    above: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in status.get("limits") or []:
        kind, _, name = str(row["scope"]).partition(":")
        dollars = row["metric"] == "cost_usd"
        at = row.get("resets_at")
        shaped = {
            "metric": row["metric"],
            "window": row["window"],
            "max": _shown(int(row["max"]), dollars),
            "used": _shown(int(row["used"]), dollars),
            "reserved": _shown(int(row.get("held") or 0), dollars),
            "remaining": _shown(int(row["left"]), dollars),
            "resets": format_reset(NEVER if at is None else int(at), timezone),
        }
        if row.get("model"):
            shaped["model"] = row["model"]
        if kind == "key" and name == machine:
            own.append(shaped)
        else:
            above.setdefault((kind, name), []).append(shaped)
    scopes = [{"kind": k, "name": n, "limits": rows} for (k, n), rows in above.items()]
    return {
        "key": machine,
        "machine": machine,
        "user": status.get("user"),
        "status": status.get("status"),
        "timezone": timezone,
        "limits": own,
        "scopes": scopes,
    }


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
    out = {"key": me.get("key"), "user": me.get("user"), "status": me.get("status")}
    if me.get("machine"):
        out["machine"] = me["machine"]  # a hook machine's (its token's) view
    return {**out, "limits": rows}


def tightest_dollars(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dollar limit with the least left, which is what a status line shows."""
    dollars = [r for r in summary["limits"] if r["metric"] == "cost_usd"]
    return min(dollars, key=lambda r: usd_to_nano(r["left"]), default=None)
