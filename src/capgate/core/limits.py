"""Limits, the scopes that carry them, and the amounts they count.

A `Limit` caps one metric over one window, optionally only for models matching a glob.
Amounts are integers in the metric's unit: requests, tokens, or nano-dollars for cost
(1 USD = 10**9), so budgets add up exactly.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any

from capgate.core.caching import CacheSetting
from capgate.core.money import MAX_AMOUNT
from capgate.core.schedules import Schedule
from capgate.core.windows import Window, WindowKind, parse_window

NANO_PER_USD = 10**9


class Metric(enum.Enum):
    REQUESTS = "requests"
    TOKENS = "tokens"  # input (including cache reads and writes) + output
    INPUT_TOKENS = "input_tokens"  # everything the model read, cached or not
    OUTPUT_TOKENS = "output_tokens"
    COST_USD = "cost_usd"  # counted in nano-dollars
    CONCURRENT = "concurrent"  # requests in flight: held while they run, never accumulated
    CREDITS = "credits"  # a weight per request by model (opus 10, sonnet 3, haiku 1 by default)

    @property
    def noun(self) -> str:
        return _NOUNS[self]


_NOUNS = {
    Metric.REQUESTS: "request",
    Metric.TOKENS: "token",
    Metric.INPUT_TOKENS: "input token",
    Metric.OUTPUT_TOKENS: "output token",
    Metric.COST_USD: "cost",
    Metric.CONCURRENT: "concurrent request",
    Metric.CREDITS: "credit",
}

# The CLI's short names for metrics (`cost=5/day`).
METRIC_ALIASES = {"cost": Metric.COST_USD, "usd": Metric.COST_USD}


def parse_metric(text: str) -> Metric:
    if text in METRIC_ALIASES:
        return METRIC_ALIASES[text]
    try:
        return Metric(text)
    except ValueError:
        allowed = ", ".join(m.value for m in Metric)
        raise ValueError(f"unknown metric {text!r} (one of: {allowed}, or cost)") from None


def _decimal(value: Any, what: str) -> Decimal:
    """A finite decimal from a number or decimal string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not {value!r}")
    try:
        dec = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be a number, not {value!r}") from None
    if not dec.is_finite():
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return dec


_UNIT = {True: "nano-dollars", False: "of the metric's unit"}
_EXACT = Context(prec=80)  # enough digits that no realistic amount is ever rounded


def usd_to_nano(value: Any) -> int:
    """Exact conversion of a dollar amount (number or decimal string) to nano-dollars."""
    dec = _decimal(value, "a dollar amount")
    nano = _EXACT.multiply(dec, NANO_PER_USD)
    if nano != nano.to_integral_value():
        raise ValueError(f"dollar amount {value!r} is finer than a nano-dollar")
    return int(nano)


def nano_to_decimal_str(nano: int) -> str:
    """Nano-dollars as an exact decimal string of dollars: 1234500 -> '0.0012345'."""
    whole, frac = divmod(abs(nano), NANO_PER_USD)  # integers: exact, and cheap per answer
    sign = "-" if nano < 0 else ""
    return f"{sign}{whole}.{frac:09d}".rstrip("0") if frac else f"{sign}{whole}"


def format_usd(nano: int) -> str:
    """Dollars for people, exact: two decimals when the amount is whole cents ('$4.90',
    '$1,234.00'), else every digit it has down to the nano-dollar ('$0.0012345',
    '$12.345'). No two different amounts print the same, so "$0.004 of $0.01 used"
    never reads as if it fits; `parse_usd` reads it back."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole:,}.{digits}"


def parse_usd(text: str) -> int:
    """Nano-dollars of a `format_usd` string ('$1,234.50', '-$0.001') or a plain dollar
    amount ('5', '0.25')."""
    body = text.strip()
    sign = 1
    if body.startswith("-"):
        sign, body = -1, body[1:]
    body = body.removeprefix("$")
    if not re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})*(\.[0-9]+)?|[0-9]+(\.[0-9]+)?", body):
        raise ValueError(f"not a dollar amount: {text!r}")
    return sign * usd_to_nano(body.replace(",", ""))


@dataclass(frozen=True, slots=True)
class Limit:
    metric: Metric
    window: Window
    max: int  # in the metric's unit (nano-dollars for cost)
    model: str | None = None  # glob; the limit applies only to matching models
    # What names this limit's counter within its scope (not `max`: raising a limit keeps
    # what was spent). Computed once; counters are named on every request.
    ident: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        model = self.model or "*"
        object.__setattr__(self, "ident", f"{self.metric.value}:{self.window.value}:{model}")

    def applies_to(self, model: str) -> bool:
        return self.model is None or fnmatchcase(model, self.model)

    def format_amount(self, amount: int) -> str:
        if self.metric is Metric.COST_USD:
            return format_usd(amount)
        return f"{amount:,}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limit:
        metric = parse_metric(str(data["metric"]))
        window = parse_window(str(data["window"]))
        raw_max = data["max"]
        if metric is Metric.COST_USD:
            max_ = usd_to_nano(raw_max)
        else:
            dec = _decimal(raw_max, "max")
            if dec != dec.to_integral_value():
                raise ValueError(f"max of {metric.value} must be a whole number, not {raw_max}")
            max_ = int(dec)
        if max_ < 0:
            raise ValueError("max must not be negative")
        if max_ > MAX_AMOUNT:  # the store counts in 64-bit integers
            raise ValueError(
                f"max is too large (at most {MAX_AMOUNT:,} {_UNIT[metric is Metric.COST_USD]})"
            )
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError("model must be a non-empty glob string")
        if metric is Metric.CONCURRENT and window is not WindowKind.TOTAL:
            raise ValueError(
                "concurrent limits count requests in flight, not per window: "
                "use window total (e.g. concurrent=4/total)"
            )
        return cls(metric, window, max_, model)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric.value, "window": self.window.value}
        out["max"] = nano_to_decimal_str(self.max) if self.metric is Metric.COST_USD else self.max
        if self.model is not None:
            out["model"] = self.model
        return out


def check_distinct(limits: tuple[Limit, ...]) -> None:
    """Two limits of one scope on the same metric, window and models would share one
    counter and charge it twice: refuse them."""
    seen: set[tuple[Metric, Window, str | None]] = set()
    for limit in limits:
        ident = (limit.metric, limit.window, None if limit.model == "*" else limit.model)
        if ident in seen:
            what = f"{limit.metric.value}/{limit.window.value}" + (
                f" for {limit.model}" if limit.model else ""
            )
            raise ValueError(f"two limits on {what}: keep one")
        seen.add(ident)


_SPEC = re.compile(
    r"^(?:(?P<model>[^:=]+):)?(?P<metric>[a-z_]+)=(?P<max>[0-9.]+)/(?P<window>[a-z0-9-]+)$"
)


def parse_limit_spec(spec: str) -> Limit:
    """The CLI syntax `[MODEL_GLOB:]METRIC=MAX/WINDOW`, e.g. `opus*:requests=5/day`."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(
            f"bad limit {spec!r}: expected [MODEL_GLOB:]METRIC=MAX/WINDOW, e.g. cost=5/day"
        )
    return Limit.from_json(match.groupdict())


class ScopeKind(enum.Enum):
    KEY = "key"
    USER = "user"
    TEAM = "team"
    ORG = "org"
    PROVIDER = "provider"


class Status(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Scope:
    """Anything that carries limits: a key, user, team, org or provider."""

    kind: ScopeKind
    id: str
    name: str
    limits: tuple[Limit, ...] = ()
    status: Status = Status.ACTIVE
    timezone: str = "UTC"
    models: tuple[str, ...] = ()  # allowed model globs; empty = all
    expires_at: float | None = None
    # When the remaining budget cannot pay a request's full max_tokens: lower max_tokens
    # to what it pays for (True, "clamp") or refuse (False, "reject").
    clamp: bool = True
    # For requests whose worst case cannot be bounded (code execution, server
    # state on a model whose context window is unknown): hold this many nano-dollars
    # instead of refusing them. None: refuse.
    unbounded_hold_nano: int | None = None
    schedules: tuple[Schedule, ...] = ()  # when the models they match may be used
    # A key's requests are forwarded un-reserved while the store cannot be reached (and
    # settled when it is back); False: refused at once (fail closed).
    fail_open: bool = False
    # Its requests' bodies and answers are logged, redacted (a request is logged when
    # any of the scopes it counts against says so).
    log_bodies: bool = False
    # Its requests' answers are cached (capgate.cache); None: not cached. The innermost
    # scope (key, user, team, org) that sets one decides.
    cache: CacheSetting | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def counter_id(self, limit: Limit) -> str:
        """Names the counter a limit uses. Independent of `max`, so raising a limit keeps
        what was already spent."""
        return f"{self.kind.value}:{self.id}:{limit.ident}"

    def allows_model(self, model: str) -> bool:
        return not self.models or any(fnmatchcase(model, glob) for glob in self.models)
