"""A provider's settings (`providers:` in the config file) and the checks on what it
sends upstream: its base URL, extra headers and API key. Part of capgate.config, which
reads the whole file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ProviderType = Literal[
    "anthropic", "openai", "openai-compatible", "mock", "claude-cli", "codex-cli",
    "bedrock", "vertex", "azure",
]  # fmt: skip
CLI_TYPES = frozenset({"claude-cli", "codex-cli"})
CLOUD_TYPES = frozenset({"bedrock", "vertex", "azure"})  # providers/bedrock.py, vertex.py, azure.py
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
}


# An HTTP header name (RFC 9110 token) and value (no control characters but tab), and the
# headers capgate writes itself: a provider's `headers` may not set those.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]{0,8192}$")
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-type", "upgrade"}
)


def check_base_url(url: str) -> str:
    """An upstream's base URL: http(s) with a host, no credentials, query or fragment
    (they would be sent nowhere, or somewhere unexpected). ValueError says what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with http:// or https:// (got {parts.scheme or 'none'}://)")
    if not parts.hostname:
        raise ValueError("must name a host (http://HOST[:PORT][/PATH])")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (user:password@): use api_key or headers")
    if parts.query or url.rstrip().endswith("?"):
        raise ValueError("must not hold a query string (?...)")
    if parts.fragment or "#" in url:
        raise ValueError("must not hold a fragment (#...)")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("must not hold spaces or control characters")
    del port
    return url


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Extra headers sent upstream: valid names and values, none capgate sets itself."""
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r}: not a valid header name")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"{name!r}: capgate sets this header itself")
        if not _HEADER_VALUE.match(value):
            raise ValueError(f"{name!r}: the value holds a line break or control character")
    return dict(headers)


def check_api_key(key: str) -> str:
    """An upstream API key: sent in a header, so one line of printable characters."""
    if not key or len(key) > 4096 or not _HEADER_VALUE.match(key) or key != key.strip():
        raise ValueError("must be 1-4096 printable characters, no spaces around it")
    return key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: ProviderType
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = {}
    connect_timeout_s: float = Field(10.0, gt=0)
    # Until the answer's status and first body bytes arrive (a stream's first event).
    first_byte_timeout_s: float = Field(120.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0)  # between bytes of an answer
    timeout_s: float = Field(600.0, gt=0)  # the whole request, answer included
    max_connections: int = Field(1000, ge=1)
    # Circuit breaker: after this many failures in a row (429, 5xx, timeouts, connection
    # errors) the provider is cooled down for `cooldown_s`; routes skip it meanwhile.
    cooldown_after: int = Field(3, ge=1)
    cooldown_s: float = Field(30.0, ge=0)
    # claude-cli / codex-cli: the program, its extra environment, how many may run at once
    # and how much output is read before the run is stopped.
    command: str | None = None
    env: dict[str, str] = {}
    max_concurrency: int = Field(4, ge=1)
    max_output_mb: float = Field(16.0, gt=0)
    # Cloud providers (docs/providers.md#cloud-providers): bedrock's region and AWS
    # credentials; vertex's project, region and service-account JSON file; azure's API
    # version and model -> deployment names.
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,40}$")
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_profile: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@+-]{1,64}$")
    api: Literal["invoke", "converse"] = "invoke"  # bedrock: InvokeModel or Converse
    project: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    credentials_file: str | None = None
    api_version: str = Field("2024-10-21", pattern=r"^[A-Za-z0-9.-]{1,40}$")
    deployments: dict[str, str] = {}

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        return check_api_key(value) if value else value  # "": none (`${KEY:-}` unset)

    @field_validator("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    @classmethod
    def _aws_secret(cls, value: str | None) -> str | None:
        return check_api_key(value) if value else None

    @field_validator("deployments")
    @classmethod
    def _deployments(cls, value: dict[str, str]) -> dict[str, str]:
        for model, name in value.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
                raise ValueError(f"{model}: {name!r} is not a deployment name")
        return value

    @model_validator(mode="after")
    def _cloud(self) -> ProviderConfig:
        """What each cloud type needs, so that a missing field stops the start."""
        needs = {
            "bedrock": ("region",),  # credentials: the AWS chain (providers/aws_credentials.py)
            "vertex": ("project", "region", "credentials_file"),
            "azure": ("base_url", "api_key"),
        }.get(self.type, ())
        missing = [name for name in needs if not getattr(self, name)]
        if self.api != "invoke" and self.type != "bedrock":
            raise ValueError(f"api: {self.api} is for bedrock providers only")
        if bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            missing.append(
                "aws_secret_access_key" if self.aws_access_key_id else "aws_access_key_id"
            )
        if missing:
            raise ValueError(f"a {self.type} provider needs {', '.join(missing)}")
        return self

    @property
    def url(self) -> str:
        if self.base_url is None and self.type == "bedrock":
            return f"https://bedrock-runtime.{self.region}.amazonaws.com"
        if self.base_url is None and self.type == "vertex":
            host = "" if self.region == "global" else f"{self.region}-"
            return f"https://{host}aiplatform.googleapis.com"
        return (self.base_url or DEFAULT_BASE_URLS.get(self.type, "")).rstrip("/")

    @property
    def dialects(self) -> frozenset[str]:
        if self.type == "mock":
            return frozenset({"anthropic", "openai"})
        if self.type in ("anthropic", "claude-cli", "bedrock", "vertex"):
            return frozenset({"anthropic"})
        return frozenset({"openai"})

    @property
    def program(self) -> str:
        """The CLI a claude-cli / codex-cli provider runs."""
        return self.command or ("claude" if self.type == "claude-cli" else "codex")
