"""Request bodies of the admin API, validated with messages that name the bad field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from capgate.core.bounds import MAX_NAME, NAME_CHARS, check_name, check_time
from capgate.core.caching import CacheSetting
from capgate.core.limits import Limit, ScopeKind, check_distinct, usd_to_nano
from capgate.core.money import MAX_AMOUNT
from capgate.core.schedules import Schedule
from capgate.core.windows import zone
from capgate.rotation import MAX_ROTATE_EVERY_S, MIN_ROTATE_EVERY_S, parse_duration
from capgate.store.base import ScopeFields


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = Field(description="requests | tokens | input_tokens | output_tokens | cost_usd")
    window: str = Field(description="minute | hour | day | week | month | total")
    max: StrictInt | StrictFloat | StrictStr = Field(
        description="dollars for cost_usd (number or decimal string), a count otherwise"
    )
    model: str | None = Field(None, description="glob: the limit applies only to these models")

    def to_limit(self) -> Limit:
        return Limit.from_json(self.model_dump())

    def model_post_init(self, context: Any) -> None:
        self.to_limit()  # raises ValueError with the reason; pydantic reports it


PLURALS = {  # the admin API's path for each kind of scope
    ScopeKind.KEY: "keys",
    ScopeKind.USER: "users",
    ScopeKind.TEAM: "teams",
    ScopeKind.ORG: "orgs",
    ScopeKind.PROVIDER: "providers",
}


def parse_time(value: str | float | int | None) -> float | None:
    """ISO 8601 (date or date-time; naive means UTC) or Unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):  # JSON true is not 1970-01-01T00:00:01Z
        raise ValueError(f"not a date or time: {value!r}")
    if isinstance(value, int | float):
        return check_time(float(value))
    try:
        return check_time(float(value))
    except ValueError as exc:
        if "out of range" in str(exc):
            raise
    if len(value) > 64:
        raise ValueError("not a date or time (use ISO 8601, e.g. 2026-12-31)")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date or time: {value!r} (use ISO 8601, e.g. 2026-12-31)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return check_time(parsed.timestamp())


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("*", description="glob of the models this schedule opens")
    days: str = Field("daily", description="mon-fri, sat,sun, mon,wed-fri or daily")
    start: str = Field(description="HH:MM, local time in tz; inside the window")
    end: str = Field(description="HH:MM; outside the window; before start = overnight")
    tz: str = Field("UTC", description="IANA timezone")

    def to_schedule(self) -> Schedule:
        return Schedule.from_json(self.model_dump())

    def model_post_init(self, context: Any) -> None:
        self.to_schedule()  # raises ValueError with the reason; pydantic reports it


class CacheIn(BaseModel):
    """A scope's response cache (docs/cache.md)."""

    model_config = ConfigDict(extra="forbid")
    ttl: StrictStr | StrictInt | StrictFloat = Field(
        description="how long an answer is kept: 1s to 30d (e.g. 10m, 1h) or seconds"
    )
    owner: Literal["key", "user", "team", "org"] = Field(
        "key",
        description="whose requests share answers: the key (default), or its user, team or org",
    )
    shared: StrictStr | None = Field(
        None, description="a shared cache's name: scopes naming the same one share answers"
    )
    charge: Literal["free", "full"] = Field(
        "free", description="a hit costs nothing (free) or what the answer cost (full)"
    )
    semantic: StrictBool = Field(
        False, description="also answer a close paraphrase of a kept prompt (semantic cache)"
    )

    @model_validator(mode="after")
    def _valid(self) -> CacheIn:
        self.to_setting()  # its ValueError names what is wrong
        return self

    def to_setting(self) -> CacheSetting:
        return CacheSetting(
            parse_duration(self.ttl), self.owner, self.shared, self.charge, self.semantic
        )


class _ScopeFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str | None = Field(None, description="keys: the team the key belongs to")
    user: str | None = Field(None, description="keys: the user the key belongs to")
    org: str | None = Field(None, description="teams: the org the team belongs to")
    limits: list[LimitIn] | None = None
    models: list[str] | None = Field(None, description="allowed model globs; empty = all")
    schedules: list[ScheduleIn] | None = Field(
        None, description="when the models they match may be used; replaces the list"
    )
    expires_at: StrictStr | StrictFloat | StrictInt | None = None
    timezone: str | None = Field(None, description="IANA name for calendar windows")
    metadata: dict[str, Any] | None = None
    on_short_budget: Literal["clamp", "reject"] | None = Field(
        None,
        description="when the budget cannot pay the full max_tokens: lower it to fit "
        "(clamp, the default) or refuse (reject)",
    )
    unbounded_hold_usd: str | float | None = Field(
        None,
        description="keys: dollars to hold for a request whose worst case cannot be "
        "bounded (a code execution tool, ...) instead of refusing it; null: refuse",
    )
    fail_open: bool | None = Field(
        None,
        description="keys: while the store cannot be reached, forward the key's requests "
        "un-reserved and record their usage when it is back, even past a limit (true), "
        "or refuse them (false, the default)",
    )

    log_bodies: bool | None = Field(
        None,
        description="keys, users, teams, orgs: log the bodies and answers of the requests "
        "that count against this scope, redacted (docs/security.md); false, the default: "
        "nothing is logged",
    )

    cache: CacheIn | None = Field(
        None,
        description="keys, users, teams, orgs: cache the answers of the requests that count "
        "against this scope (docs/cache.md); null: off, the default",
    )

    rotate_every: StrictStr | None = Field(
        None,
        description="keys: how often the key is due for rotation (1h to 3650d, e.g. 90d): "
        "an alert announces it ahead (docs/security.md#key-rotation); null: never",
    )

    @field_validator("rotate_every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            seconds = parse_duration(value)
            if not MIN_ROTATE_EVERY_S <= seconds <= MAX_ROTATE_EVERY_S:
                raise ValueError("must be between 1h and 3650d")
        return value

    @field_validator("limits")
    @classmethod
    def _distinct(cls, value: list[LimitIn] | None) -> list[LimitIn] | None:
        if value is not None:
            check_distinct(tuple(x.to_limit() for x in value))
        return value

    @field_validator("unbounded_hold_usd")
    @classmethod
    def _hold(cls, value: str | float | None) -> str | float | None:
        if value is not None and not 0 < usd_to_nano(value) <= MAX_AMOUNT:
            raise ValueError("must be a dollar amount above 0")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("expires_at")
    @classmethod
    def _time(cls, value: str | float | None) -> str | float | None:
        parse_time(value)
        return value

    def to_fields(self) -> ScopeFields:
        given = self.model_fields_set
        clear: frozenset[str] = frozenset(
            name
            for name in ("team", "user", "expires_at")
            if name in given and getattr(self, name) is None
        )
        if "unbounded_hold_usd" in given and self.unbounded_hold_usd is None:
            clear |= {"unbounded_hold_nano"}
        if "rotate_every" in given and self.rotate_every is None:
            clear |= {"rotate_every"}
        if "cache" in given and self.cache is None:
            clear |= {"cache"}
        hold = self.unbounded_hold_usd
        return ScopeFields(
            limits=None if self.limits is None else tuple(x.to_limit() for x in self.limits),
            models=None if self.models is None else tuple(self.models),
            team=self.team,
            user=self.user,
            org=self.org,
            timezone=self.timezone,
            expires_at=parse_time(self.expires_at),
            metadata=self.metadata,
            clamp=None if self.on_short_budget is None else self.on_short_budget == "clamp",
            unbounded_hold_nano=None if hold is None else usd_to_nano(hold),
            fail_open=self.fail_open,
            log_bodies=self.log_bodies,
            cache=None if self.cache is None else self.cache.to_setting(),
            rotate_every=None if self.rotate_every is None else parse_duration(self.rotate_every),
            schedules=None
            if self.schedules is None
            else tuple(x.to_schedule() for x in self.schedules),
            clear=clear,
        )


class ScopeCreate(_ScopeFields):
    name: str = Field(
        description=f"1 to {MAX_NAME} of: letters, digits and . _ @ - (docs/security.md)",
        pattern=f"^[{NAME_CHARS}]{{1,{MAX_NAME}}}$",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return check_name(value) if isinstance(value, str) else value


class ScopeUpdate(_ScopeFields):
    pass
