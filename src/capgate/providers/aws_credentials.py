"""AWS credentials for the Bedrock provider: which source (the chain), and keeping
temporary credentials fresh.

The chain, first match wins (botocore's order, docs/providers.md#aws-credentials):

    1. the provider's `aws_access_key_id` / `aws_secret_access_key` (/ `aws_session_token`)
    2. the provider's `aws_profile` (only that profile: nothing else is tried)
    3. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN)
    4. AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (STS AssumeRoleWithWebIdentity)
    5. the profile AWS_PROFILE (else `default`) of ~/.aws/credentials and ~/.aws/config
       (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE): keys, `credential_process`, or
       `role_arn` + `web_identity_token_file`
    6. the container endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI)
    7. EC2 instance metadata (IMDSv2), unless AWS_EC2_METADATA_DISABLED=true

The source is picked at start from local facts only (config, environment, files); the
network is asked at the first request. Temporary credentials are refreshed ahead of
their expiry in the background while requests keep signing with the current ones; only
credentials too close to expiry make a request wait (one fetch for all). A failed
refresh keeps still-valid credentials and logs a warning; with none valid the attempt
fails with a 503 naming the provider and the source, before anything is sent.
"""

from __future__ import annotations

import asyncio
import configparser
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from capgate.config import ConfigError
from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers.aws_sources import (
    CONTAINER_HOST,
    IMDS_ENDPOINT,
    ContainerSource,
    CredentialError,
    Fetched,
    IMDSSource,
    ProcessSource,
    StaticSource,
    WebIdentitySource,
)
from capgate.providers.sigv4 import Credentials

log = logging.getLogger(__name__)
REFRESH_AHEAD_S = 300.0  # refreshed in the background this long before expiry
STALE_MARGIN_S = 10.0  # not used for signing this close to expiry
RETRY_S = 10.0  # after a failed background refresh


class Source(Protocol):
    name: str

    async def fetch(self) -> Fetched: ...
    async def close(self) -> None: ...


def resolve(config: ProviderConfig, environ: Mapping[str, str]) -> Source:
    """The first source of the chain that applies (ConfigError: none does, or the named
    profile cannot be used)."""
    where = f"providers.{config.name}"
    if config.aws_access_key_id and config.aws_secret_access_key:
        keys = Credentials(
            config.aws_access_key_id, config.aws_secret_access_key, config.aws_session_token
        )
        return StaticSource("the config's keys", keys)
    if config.aws_profile:
        found = _profile(config.aws_profile, config, environ, where)
        if found is None:
            raise ConfigError(
                f"{where}.aws_profile: profile {config.aws_profile!r} has no credentials"
            )
        return found
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return StaticSource(
            "the environment", Credentials(key, secret, environ.get("AWS_SESSION_TOKEN") or None)
        )
    token_file, role = environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"), environ.get("AWS_ROLE_ARN")
    if token_file and role:
        return _web_identity(token_file, role, config, environ)
    name = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE")
    found = _profile(name or "default", config, environ, where)
    if found is not None:
        return found
    if name:
        raise ConfigError(f"{where}: AWS_PROFILE {name!r} has no credentials")
    full, relative = (
        environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    )
    if full or relative:
        url = full or CONTAINER_HOST + str(relative)
        try:
            return ContainerSource(
                url,
                environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            )
        except CredentialError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        return IMDSSource(environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT)
    raise ConfigError(
        f"{where}: no AWS credentials (config keys, aws_profile, environment, web identity, "
        "shared files, container endpoint; instance metadata is disabled)"
    )


def _web_identity(
    token_file: str, role: str, config: ProviderConfig, environ: Mapping[str, str]
) -> Source:
    sts = environ.get("AWS_ENDPOINT_URL_STS") or f"https://sts.{config.region}.amazonaws.com"
    session = environ.get("AWS_ROLE_SESSION_NAME") or f"capgate-{int(time.time())}"
    return WebIdentitySource(token_file, role, session, sts)


def _read(path: Path, where: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"{where}: {path} cannot be read: {type(exc).__name__}") from None
    return parser


def _profile(
    name: str, config: ProviderConfig, environ: Mapping[str, str], where: str
) -> Source | None:
    """A profile's source: its keys (the credentials file's win over the config file's),
    else its credential_process, else its role_arn + web_identity_token_file."""
    home = Path(environ.get("HOME") or Path.home())
    credentials_file = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials")
    config_file = Path(environ.get("AWS_CONFIG_FILE") or home / ".aws/config")
    values: dict[str, str] = {}
    conf = _read(config_file.expanduser(), where)
    section = name if name == "default" else f"profile {name}"
    if conf.has_section(section):
        values.update(conf[section])
    creds = _read(credentials_file.expanduser(), where)
    if creds.has_section(name):
        values.update(creds[name])
    if values.get("aws_access_key_id") and values.get("aws_secret_access_key"):
        keys = Credentials(
            values["aws_access_key_id"],
            values["aws_secret_access_key"],
            values.get("aws_session_token") or None,
        )
        return StaticSource(f"profile {name!r}", keys)
    if values.get("credential_process"):
        try:
            return ProcessSource(values["credential_process"], name)
        except CredentialError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if values.get("role_arn") and values.get("web_identity_token_file"):
        return _web_identity(values["web_identity_token_file"], values["role_arn"], config, environ)
    if values.get("role_arn") or values.get("sso_session") or values.get("sso_start_url"):
        raise ConfigError(
            f"{where}: profile {name!r} uses assume-role or SSO, which capgate does not "
            "support; use keys, credential_process or web identity"
        )
    return None


class RefreshingCredentials:
    """The current credentials of one provider, fetched from its source when needed."""

    def __init__(
        self,
        provider: str,
        source: Source,
        clock: Callable[[], float] = time.time,
        ahead_s: float = REFRESH_AHEAD_S,
        margin_s: float = STALE_MARGIN_S,
    ) -> None:
        self._provider = provider
        self.source = source
        self._clock = clock
        self._ahead_s = ahead_s
        self._margin_s = margin_s
        self._current: Fetched | None = None
        self._refresh_at = 0.0
        self._stale_at = 0.0
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0  # successful fetches (for tests)

    async def get(self) -> Credentials:
        now = self._clock()
        current = self._current
        if current is None or (current.expires is not None and now >= self._stale_at):
            idle = self._task is None or self._task.done()
            if idle and now < self._retry_at:  # the last fetch failed: fail fast until then
                raise self._failure()
            await asyncio.shield(self._start())
            current = self._current
            if current is None or (current.expires is not None and self._clock() >= self._stale_at):
                raise self._failure()
            return current.credentials
        if current.expires is not None and now >= self._refresh_at and now >= self._retry_at:
            self._start()  # in the background; this request signs with the current ones
        return current.credentials

    def _start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():  # single-flight
            self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self._task

    async def _refresh(self) -> None:
        started = self._clock()
        try:
            fetched = await self.source.fetch()
        except Exception as exc:  # noqa: BLE001 (whatever a source raises: a failed fetch)
            error = exc if isinstance(exc, CredentialError) else type(exc).__name__
            self._retry_at = self._clock() + RETRY_S
            if self._current is not None and self._clock() < self._stale_at:
                log.warning(
                    'provider "%s": refreshing AWS credentials failed, the current ones are '
                    "kept until they expire (in %.0f s): %s",
                    self._provider, self._stale_at - self._clock(), error,
                )  # fmt: skip
            else:  # the details stay here: the clients' 503 says only that there are none
                log.warning(
                    'provider "%s": AWS credentials from %s %s (requests fail with a 503 '
                    "for %.0f s, then it is tried again): %s",
                    self._provider, self.source.name, self._what(), RETRY_S, error,
                )  # fmt: skip
            return
        self._current = fetched
        self.fetches += 1
        if fetched.expires is not None:
            life = max(0.0, fetched.expires - started)
            self._refresh_at = fetched.expires - min(self._ahead_s, life / 2)
            self._stale_at = fetched.expires - min(self._margin_s, life / 10)

    def _what(self) -> str:
        expired = self._current is not None
        return "expired and could not be refreshed" if expired else "could not be had"

    def _failure(self) -> UpstreamFailed:
        # Generic: an STS / container / IMDS error body names roles, accounts, endpoints
        # (they are in the server's log, written when the fetch failed).
        return UpstreamFailed(
            f'AWS credentials are unavailable for provider "{self._provider}"',
            status=503,
            sent=False,
        )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.source.close()
