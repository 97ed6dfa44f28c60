"""Reading `rules:` from the config file into a `RuleSet` (capgate.rules.language). Pure.

Every mistake is found at load and named with its rule: an unknown field, a comparison
that is not one, a model no route serves, two actions in one `then`, a bad timezone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from capgate.core.limits import Metric, ScopeKind, parse_metric, usd_to_nano
from capgate.core.schedules import Schedule, parse_days, parse_time
from capgate.core.windows import zone
from capgate.rules.language import BudgetLeft, Comparison, Rule, RuleSet, Then, When

_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)?\s*([0-9][0-9_,]*)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_WHEN_FIELDS = frozenset(
    {"model", "key", "user", "team", "org", "input_tokens", "input_bytes", "max_tokens",
     "tools", "images", "thinking", "stream", "header", "time", "budget_left"}
)  # fmt: skip
_THEN_FIELDS = frozenset({"model", "refuse", "status", "fallback"})
_BUDGET_SCOPES = {"key": ScopeKind.KEY, "user": ScopeKind.USER, "team": ScopeKind.TEAM,
                  "org": ScopeKind.ORG}  # fmt: skip
_REFUSE_STATUSES = (403, 429)
MAX_RULES = 1000


class RuleError(ValueError):
    """A rule that cannot be used; the message names it and the field."""


def parse_rules(
    data: Any, serves: Callable[[str], bool] | None = None, timezone: str = "UTC"
) -> RuleSet:
    """`rules:` as the config file has it. `serves(model)`: whether some route serves a
    model name (None: not checked). RuleError names the rule and the field."""
    if data is None:
        return RuleSet()
    if not isinstance(data, list):
        raise RuleError("rules: must be a list of rules")
    if len(data) > MAX_RULES:
        raise RuleError(f"rules: at most {MAX_RULES} rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        where = f"rules[{i}]"
        if not isinstance(item, dict):
            raise RuleError(f"{where}: must be a mapping with name, when and then")
        name = item.get("name")
        if isinstance(name, str) and _NAME.match(name):
            where = f"{where} ({name})"
        try:
            rule = _rule(item, serves, timezone)
        except (ValueError, TypeError) as exc:
            raise RuleError(f"{where}: {exc}") from None
        if rule.name in seen:
            raise RuleError(f"{where}: the name {rule.name!r} is used twice")
        seen.add(rule.name)
        rules.append(rule)
    kinds = frozenset(r.when.budget_left.scope for r in rules if r.when.budget_left is not None)
    return RuleSet(tuple(rules), kinds)


def _rule(item: Mapping[str, Any], serves: Callable[[str], bool] | None, tz: str) -> Rule:
    unknown = set(item) - {"name", "when", "then"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} (a rule has name, when, then)")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "name: required, 1-64 letters, digits and _.:- (it is shown in the "
            "x-capgate-rule header and the ledger)"
        )
    when = item.get("when") or {}
    if not isinstance(when, dict):
        raise ValueError("when: must be a mapping of conditions")
    if "then" not in item:
        raise ValueError("then: required (model, refuse or fallback)")
    return Rule(name, _when(when, tz), _then(item["then"], serves))


def _when(data: Mapping[str, Any], tz: str) -> When:
    unknown = set(data) - _WHEN_FIELDS
    if unknown:
        allowed = ", ".join(sorted(_WHEN_FIELDS))
        raise ValueError(f"when: unknown condition {sorted(unknown)[0]!r} (one of: {allowed})")
    out: dict[str, Any] = {}
    for key, attr in (("model", "models"), ("key", "keys"), ("user", "users"),
                      ("team", "teams"), ("org", "orgs")):  # fmt: skip
        if key in data:
            out[attr] = _names(data[key], f"when.{key}")
    for key in ("input_tokens", "input_bytes", "max_tokens"):
        if key in data:
            out[key] = parse_comparison(data[key], f"when.{key}")
    for key in ("tools", "images", "thinking", "stream"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ValueError(f"when.{key}: must be true or false, not {data[key]!r}")
            out[key] = data[key]
    if "header" in data:
        out["headers"] = _headers(data["header"])
    if "time" in data:
        out["time"] = _time(data["time"], tz)
    if "budget_left" in data:
        out["budget_left"] = _budget_left(data["budget_left"])
    return When(**out)


def _names(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{where}: a name (or glob), or a list of them")
    return tuple(items)


def parse_comparison(value: Any, where: str) -> Comparison:
    """`"< 2000"`, `">= 1_000"`, `"!= 0"`, or a plain number (equal to it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Comparison("==", value)
    match = _COMPARISON.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f'{where}: {value!r} is not a comparison (like "< 2000", ">= 100", "== 0")'
        )
    return Comparison(match.group(1) or "==", int(match.group(2).replace("_", "").replace(",", "")))


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise ValueError("when.header: a mapping of header name to value (or glob)")
    out = []
    for name, glob in value.items():
        if not isinstance(name, str) or not _HEADER.match(name):
            raise ValueError(f"when.header: {name!r} is not a header name")
        if not isinstance(glob, str | int) or isinstance(glob, bool):
            raise ValueError(f"when.header.{name}: the value must be a string (or glob)")
        out.append((name.lower(), str(glob)))
    return tuple(out)


def _time(value: Any, tz: str) -> Schedule:
    """`"09:00-18:00"` every day in the server's timezone, or
    `{hours: "09:00-18:00", days: mon-fri, timezone: Europe/Paris}`."""
    data = {"hours": value} if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError('when.time: "HH:MM-HH:MM" or {hours, days, timezone}')
    unknown = set(data) - {"hours", "days", "timezone"}
    if unknown:
        raise ValueError(f"when.time: unknown field {sorted(unknown)[0]!r} (hours, days, timezone)")
    hours = data.get("hours", "00:00-24:00")
    start, sep, end = str(hours).partition("-")
    if not sep:
        raise ValueError(f'when.time.hours: {hours!r} is not a range like "09:00-18:00"')
    first, last = parse_time(start), parse_time(end)
    if first == last:
        raise ValueError("when.time.hours: start and end must differ")
    days = data.get("days", "daily")
    days_text = ",".join(days) if isinstance(days, list) else str(days)
    timezone = str(data.get("timezone") or tz)
    zone(timezone)
    return Schedule("*", parse_days(days_text), first, last, timezone)


def _budget_left(value: Any) -> BudgetLeft:
    if not isinstance(value, dict):
        raise ValueError("when.budget_left: a mapping {scope, metric, below}")
    unknown = set(value) - {"scope", "metric", "below", "window"}
    if unknown:
        raise ValueError(
            f"when.budget_left: unknown field {sorted(unknown)[0]!r} (scope, metric, below, window)"
        )
    scope = _BUDGET_SCOPES.get(str(value.get("scope")))
    if scope is None:
        raise ValueError("when.budget_left.scope: one of key, user, team, org")
    metric = parse_metric(str(value.get("metric", "cost")))
    if metric is Metric.CONCURRENT:
        raise ValueError("when.budget_left.metric: concurrent has no budget to run low")
    window = value.get("window")
    if window is not None and not isinstance(window, str):
        raise ValueError("when.budget_left.window: a window name (day, month, ...)")
    below = value.get("below")
    if isinstance(below, str) and below.strip().endswith("%"):
        share = _fraction(below.strip()[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"when.budget_left.below: {below!r} must be above 0% and at most 100%")
        return BudgetLeft(scope, metric, share / 100, None, window)
    if below is None or isinstance(below, bool):
        raise ValueError('when.budget_left.below: a share ("20%") or an amount')
    text = str(below).strip()
    if metric is Metric.COST_USD:
        amount = usd_to_nano(text.removeprefix("$"))
    elif re.fullmatch(r"[0-9][0-9_]*", text):
        amount = int(text.replace("_", ""))
    else:
        raise ValueError(f"when.budget_left.below: {below!r} is not a share or a whole amount")
    if amount <= 0:
        raise ValueError("when.budget_left.below: must be above zero")
    return BudgetLeft(scope, metric, None, amount, window)


def _fraction(text: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"when.budget_left.below: {text!r}% is not a number") from None


def _then(value: Any, serves: Callable[[str], bool] | None) -> Then:
    if not isinstance(value, dict):
        raise ValueError("then: a mapping with one of model, refuse, fallback")
    unknown = set(value) - _THEN_FIELDS
    if unknown:
        raise ValueError(f"then: unknown action {sorted(unknown)[0]!r} (model, refuse or fallback)")
    actions = [a for a in ("model", "refuse", "fallback") if a in value]
    if len(actions) != 1:
        raise ValueError("then: exactly one of model, refuse, fallback")
    if "status" in value and actions[0] != "refuse":
        raise ValueError("then.status: only with refuse")
    if actions[0] == "refuse":
        message, status = value["refuse"], value.get("status", 403)
        if not isinstance(message, str) or not message.strip() or len(message) > 1000:
            raise ValueError("then.refuse: the message the client is shown (1-1000 characters)")
        if status not in _REFUSE_STATUSES:
            raise ValueError(f"then.status: 403 or 429, not {status!r}")
        return Then(refuse=message.strip(), status=status)
    names = _names(value[actions[0]], f"then.{actions[0]}")
    if actions[0] == "model" and len(names) != 1:
        raise ValueError("then.model: one model name")
    for name in names:
        if any(c in name for c in "*?["):
            raise ValueError(f"then.{actions[0]}: {name!r} is a glob; name one model")
        if serves is not None and not serves(name):
            raise ValueError(f"then.{actions[0]}: no route serves the model {name!r}")
    if actions[0] == "model":
        return Then(model=names[0])
    return Then(fallback=names)
