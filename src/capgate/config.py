"""Settings, read in one place: flags, then `CAPGATE_*` environment, then the config file.

The config file (YAML) is validated strictly: an unknown or bad key stops the server at
start with a message that names it (`providers[0].type: ...`). `${VAR}` and
`${VAR:-default}` in string values are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from capgate.alerts.rules import DEFAULT_RULES as DEFAULT_ALERT_RULES
from capgate.alerts.rules import parse_defaults
from capgate.bodylog.redact import compile_custom
from capgate.core.windows import zone
from capgate.http.client_address import parse_networks
from capgate.provider_config import ProviderConfig, Strict
from capgate.rules.language import RuleSet
from capgate.rules.parse import RuleError, parse_rules


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


class TargetConfig(Strict):
    provider: str
    model: str | None = None  # None: pass the asked model through unchanged
    weight: int = Field(1, ge=1)


class RouteConfig(Strict):
    match: str = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=1)
    fallbacks: list[TargetConfig] = []
    retries: int | None = Field(None, ge=0, le=10)  # per target; default server.retries
    deadline_s: float | None = Field(None, gt=0)  # default server.request_deadline_s


class PriceConfig(Strict):
    input: float | str
    output: float | str
    cache_write: float | str | None = None
    cache_write_1h: float | str | None = None
    cache_read: float | str | None = None
    context_window: int | None = Field(None, gt=0, le=2**31)  # tokens; bounds hidden input

    def as_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {k: str(v) for k, v in self.model_dump().items() if v is not None}
        if self.context_window is not None:
            entry["context_window"] = self.context_window
        return entry


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    database_url: str = "sqlite:///capgate.db"
    admin_key: str | None = None
    # The AES-256 key (32 bytes, base64 or hex) that encrypts the provider API keys stored
    # at runtime, read from this file; the environment's CAPGATE_SECRET_KEY wins over it.
    secret_key_file: str | None = None
    # Rotating an admin key given here (docs/security.md#rotating-the-admin-key): the one
    # it replaces keeps working on the admin API until `admin_key_previous_until` (ISO 8601
    # or Unix seconds), then is refused as rotated.
    admin_key_previous: str | None = None
    admin_key_previous_until: str | float | None = None
    max_request_mb: float = Field(32.0, gt=0)
    default_max_tokens: int = Field(4096, ge=1)  # set when a client sends no max_tokens
    # A budget that cannot pay a request's max_tokens lowers it (keys with
    # on_short_budget=clamp), but never below this: a shorter answer is refused instead.
    min_clamped_tokens: int = Field(1024, ge=1)
    allow_unpriced_models: bool = False  # True: unpriced models pass; only non-dollar limits apply
    timezone: str = "UTC"
    # A process that has not renewed its lease for this long is taken for dead: its
    # reservations are settled in full and flagged `lease_expired`.
    lease_seconds: float = Field(30.0, ge=1)
    # How long a write waits for SQLite's write lock (held by another process) before it
    # fails: a reservation is refused with 503, a settlement is retried.
    store_busy_timeout_s: float = Field(10.0, gt=0)
    # PostgreSQL (database_url postgresql://...): connections per node, how long one
    # statement (or a connection attempt) may take before the request is refused with 503,
    # and this machine's directory for the settlement journals (None: the user's state
    # directory, ~/.local/state/capgate).
    pg_pool_size: int = Field(10, ge=1, le=1000)
    pg_statement_timeout_s: float = Field(5.0, gt=0)
    state_dir: str | None = None
    # Credits a request of a model costs, by glob over the routed model name; the first
    # match wins, a model none matches costs 1.
    credit_weights: dict[str, int] = Field(
        default_factory=lambda: {"*opus*": 10, "*sonnet*": 3, "*haiku*": 1}
    )
    # Failed attempts (429, 5xx, timeouts, connection errors) are retried on the same
    # target this many times, with exponential backoff and jitter starting at
    # `retry_backoff_s`, before the route's fallbacks are tried; all within the deadline.
    retries: int = Field(1, ge=0, le=10)
    retry_backoff_s: float = Field(0.25, ge=0)
    request_deadline_s: float = Field(600.0, gt=0)
    # What /generate and /generate-codex use when the request names no model.
    generate_model: str = "claude-sonnet-4-5"
    generate_codex_model: str = "gpt-5-codex"
    # Logs go to stderr, one line per request / admin action / upstream failure.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Serve HTTPS with this certificate chain and private key (PEM files), both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    # GET /metrics (Prometheus): off removes the route and the per-request counting. With
    # a token, scrapers must send it as a bearer token; without, only loopback clients may
    # scrape. Keys beyond the `metrics_key_series` most spending are summed as `_other`.
    metrics_enabled: bool = True
    metrics_token: str | None = None
    metrics_key_series: int = Field(50, ge=0, le=10_000)
    # `serve`: worker processes answering on the one port, each with its own store
    # connection, lease and journal (docs/operations.md#workers).
    workers: int = Field(1, ge=1, le=64)
    # Hook mode (docs/budgets.md#hook-mode-what-is-guaranteed): what a prompt's lease holds
    # until its model calls are reported (input and output tokens, priced at the model's
    # rates), how long a lease is held at most, how long a machine may enforce its cached
    # limits while it cannot reach the server, and the URL install commands name (None:
    # the URL the admin's request came to).
    hook_estimate_input_tokens: int = Field(20_000, ge=0, le=10_000_000)
    hook_estimate_output_tokens: int = Field(2_000, ge=0, le=10_000_000)
    hook_lease_s: float = Field(900.0, gt=0)
    hook_offline_s: float = Field(86_400.0, ge=0)
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed for
    # the failed-login throttles (docs/security.md); none: the TCP peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # The HTTP edge (docs/security.md#connections): a request's head must arrive within
    # `header_timeout_s` of connecting; an idle keep-alive connection is closed after
    # `idle_timeout_s`; at most `max_connections` at once (an extra one closes the idle
    # one that waited longest).
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    idle_timeout_s: float = Field(75.0, gt=0, le=86_400)
    max_connections: int = Field(4096, ge=16, le=1_000_000)
    # The gateway routes' own HTTP/1.1 server in front of aiohttp (docs/performance.md);
    # false: aiohttp serves everything, as before (an escape hatch).
    fast_path: bool = True
    # Alerts (docs/operations.md#alerts): each process looks at the store's counters every
    # `alerts_interval_s` and claims what crossed a rule; webhooks are retried with backoff
    # from `alerts_retry_base_s`, at most `alerts_max_attempts` times. `alert_rules` are the
    # server's default rules and `alerts_allow_private_targets` lets webhooks point at
    # private or loopback addresses: both also runtime settings (PATCH /admin/settings).
    alerts_enabled: bool = True
    alerts_interval_s: float = Field(5.0, gt=0, le=3600)
    alerts_max_attempts: int = Field(8, ge=1, le=100)
    alerts_retry_base_s: float = Field(10.0, gt=0, le=3600)
    alerts_allow_private_targets: bool = False
    alert_rules: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(rule) for rule in DEFAULT_ALERT_RULES]
    )
    # OpenTelemetry traces (docs/operations.md#traces), off unless an OTLP/HTTP endpoint
    # is given (`pip install 'capgate[otel]'`): a span per gateway request, sampled at
    # this ratio (a client's sampled traceparent is followed).
    otel_endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    otel_sample_ratio: float = Field(1.0, ge=0, le=1)
    # Prompt and answer logging (docs/security.md#prompt-and-answer-logging): off unless a
    # scope sets `log_bodies` (or `log_bodies` here, for every request); each part kept up
    # to `body_log_max_bytes`, redacted by the built-in rules and `redact_patterns`
    # (name -> regex), deleted after `body_retention_days`.
    log_bodies: bool = False
    body_log_max_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    body_retention_days: float = Field(30.0, gt=0, le=36_500)
    redact_patterns: dict[str, str] = Field(default_factory=dict)
    # The response cache (docs/cache.md): answers of the scopes that set `cache`, kept in
    # each process's memory up to this many MB (least recently used out first).
    cache_max_mb: float = Field(64.0, gt=0, le=65_536)
    # The semantic cache (docs/semantic-cache.md), for the scopes whose cache sets
    # `semantic`: how similar a paraphrase must be, how many prompts it indexes, and the
    # highest temperature it answers (1 admits requests that set none).
    semantic_threshold: float = Field(0.75, gt=0, le=1)
    semantic_max_entries: int = Field(10_000, ge=1, le=10_000_000)
    semantic_max_temperature: float = Field(0.0, ge=0, le=2)
    # Ledger pruning (docs/operations.md#ledger-retention): entries of whole days older
    # than this are summed per day and deleted (None: kept for ever), archived first to
    # `ledger_archive_dir` when it is set. At least 35 days: the current month's and
    # day's spend are read from the entries.
    ledger_retention_days: int | None = Field(None, ge=35, le=36_500)
    ledger_archive_dir: str | None = None

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("credit_weights")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        for glob, weight in value.items():
            if weight < 0:
                raise ValueError(f"credit weight of {glob!r} must not be negative")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @model_validator(mode="after")
    def _previous_admin_key(self) -> ServerConfig:
        if self.admin_key_previous is None:
            return self
        if self.admin_key is None or self.admin_key_previous_until is None:
            raise ValueError("admin_key_previous needs admin_key and admin_key_previous_until")
        self.previous_admin_until()  # a clear error now, not at the first request
        return self

    def previous_admin_until(self) -> float:
        """`admin_key_previous_until` in Unix seconds (ValueError with the syntax)."""
        value = self.admin_key_previous_until
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"admin_key_previous_until: not a time: {value!r} (ISO 8601, e.g. "
                "2026-12-31T18:00:00Z, or Unix seconds)"
            ) from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    def credits_for(self, model: str) -> int:
        return next((w for g, w in self.credit_weights.items() if fnmatchcase(model, g)), 1)

    @field_validator("alert_rules")
    @classmethod
    def _alert_rules(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parse_defaults(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("redact_patterns")
    @classmethod
    def _redact(cls, value: dict[str, str]) -> dict[str, str]:
        compile_custom(value)
        return value


class Config(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: list[ProviderConfig] = []
    models: list[RouteConfig] = []
    pricing: dict[str, PriceConfig] = {}
    # Routing rules (docs/routing.md), checked here and compiled by `compiled_rules`.
    rules: list[dict[str, Any]] = []

    def model_post_init(self, context: Any) -> None:
        names = [p.name for p in self.providers]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"providers: the name {name!r} is used twice")
        for i, route in enumerate(self.models):
            for j, target in enumerate([*route.targets, *route.fallbacks]):
                if target.provider not in names:
                    where = f"models[{i}].targets[{j}].provider"
                    raise ConfigError(f"{where}: no provider named {target.provider!r}")
        self.compiled_rules()

    def compiled_rules(self) -> RuleSet:
        """`rules:` checked and compiled; ConfigError names the rule. A rule's model must
        be served by a `models:` entry when the file has any (without, every name goes
        to the first provider, or to routes defined at runtime)."""
        routes = self.models

        def serves(model: str) -> bool:
            return not routes or any(fnmatchcase(model, r.match) for r in routes)

        try:
            return parse_rules(self.rules, serves, self.server.timezone)
        except RuleError as exc:
            raise ConfigError(str(exc)) from None

    def provider(self, name: str) -> ProviderConfig:
        return next(p for p in self.providers if p.name == name)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(node: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _ENV_REF.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute(v, env, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: Any, env: Mapping[str, str], source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    data = _substitute(data, env, "")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _location(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    if path is None:
        return parse_config({}, env)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, env, path)


ENV_SETTINGS = {
    "CAPGATE_HOST": "host",
    "CAPGATE_PORT": "port",
    "CAPGATE_DATABASE_URL": "database_url",
    "CAPGATE_ADMIN_KEY": "admin_key",
    "CAPGATE_SECRET_KEY_FILE": "secret_key_file",
    "CAPGATE_ADMIN_KEY_PREVIOUS": "admin_key_previous",
    "CAPGATE_ADMIN_KEY_PREVIOUS_UNTIL": "admin_key_previous_until",
    "CAPGATE_MAX_REQUEST_MB": "max_request_mb",
    "CAPGATE_DEFAULT_MAX_TOKENS": "default_max_tokens",
    "CAPGATE_MIN_CLAMPED_TOKENS": "min_clamped_tokens",
    "CAPGATE_ALLOW_UNPRICED_MODELS": "allow_unpriced_models",
    "CAPGATE_TIMEZONE": "timezone",
    "CAPGATE_LEASE_SECONDS": "lease_seconds",
    "CAPGATE_PG_POOL_SIZE": "pg_pool_size",
    "CAPGATE_PG_STATEMENT_TIMEOUT_S": "pg_statement_timeout_s",
    "CAPGATE_STATE_DIR": "state_dir",
    "CAPGATE_LOG_LEVEL": "log_level",
    "CAPGATE_LOG_FORMAT": "log_format",
    "CAPGATE_TLS_CERT": "tls_cert",
    "CAPGATE_TLS_KEY": "tls_key",
    "CAPGATE_METRICS_ENABLED": "metrics_enabled",
    "CAPGATE_METRICS_TOKEN": "metrics_token",
    "CAPGATE_METRICS_KEY_SERIES": "metrics_key_series",
    "CAPGATE_WORKERS": "workers",
    "CAPGATE_FAST_PATH": "fast_path",
    "CAPGATE_PUBLIC_URL": "public_url",
    "CAPGATE_ALERTS_ENABLED": "alerts_enabled",
    "CAPGATE_ALERTS_INTERVAL_S": "alerts_interval_s",
    "CAPGATE_ALERTS_ALLOW_PRIVATE_TARGETS": "alerts_allow_private_targets",
    "CAPGATE_OTEL_ENDPOINT": "otel_endpoint",
    "CAPGATE_OTEL_SAMPLE_RATIO": "otel_sample_ratio",
}


def with_overrides(config: Config, env: Mapping[str, str], flags: Mapping[str, Any]) -> Config:
    """Environment over the file, flags over both (SPEC 3.1)."""
    server = config.server.model_dump()
    for var, field in ENV_SETTINGS.items():
        if env.get(var):
            server[field] = env[var]
    server.update({k: v for k, v in flags.items() if v is not None})
    try:
        return config.model_copy(update={"server": ServerConfig.model_validate(server)})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(("server", _location(err["loc"]))).rstrip(".")
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def is_postgres(database_url: str) -> bool:
    return database_url.startswith(("postgresql://", "postgres://"))


def sqlite_path(database_url: str) -> str:
    if not database_url.startswith("sqlite:///"):
        raise ConfigError(
            f"database_url: {database_url.split('://')[0]}://...: use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return database_url.removeprefix("sqlite:///")
