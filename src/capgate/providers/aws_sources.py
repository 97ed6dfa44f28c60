"""Where AWS credentials come from, one small class per source, in the formats botocore's
resolver reads (the formats are AWS's; no code of botocore's, which capgate does not
depend on at run time):

    StaticSource       keys given in the config, the environment or a profile's files
    ProcessSource      a profile's `credential_process` (prints JSON, Version 1)
    WebIdentitySource  AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN -> STS
                       AssumeRoleWithWebIdentity (unsigned; XML answer)
    ContainerSource    ECS / EKS pod identity: GET AWS_CONTAINER_CREDENTIALS_FULL_URI (or
                       169.254.170.2 + _RELATIVE_URI) with AWS_CONTAINER_AUTHORIZATION_TOKEN
    IMDSSource         EC2 instance metadata, IMDSv2: PUT a session token, then the role's
                       credentials

Each `fetch()` returns `Fetched` (the keys and when they expire, or None for keys that do
not) or raises `CredentialError` with a message that holds no secret. Which source a
provider uses is decided by `aws_credentials.resolve` (the chain); refreshing is
`aws_credentials.RefreshingCredentials`.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

import aiohttp
import orjson

from capgate.providers.sigv4 import Credentials

STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
CONTAINER_HOST = "http://169.254.170.2"
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TOKEN_TTL_S = "21600"  # noqa: S105 (a lifetime, not a secret)
# Hosts a container endpoint may use over plain HTTP (botocore's rule): loopback and the
# link-local addresses of ECS and EKS pod identity.
_PLAIN_HTTP_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "169.254.170.2", "169.254.170.23"})
_FETCH_TIMEOUT_S = 5.0
PROCESS_TIMEOUT_S = 60.0  # a credential_process that takes longer is killed


class CredentialError(Exception):
    """Credentials could not be had from a source (the message names it, no secret)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    credentials: Credentials
    expires: float | None  # epoch seconds; None: they do not expire


def parse_expiration(value: Any, who: str) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialError(f"{who}: an Expiration that is not a time ({value!r})") from None


def from_json(data: bytes, who: str, token_field: str = "Token") -> Fetched:  # noqa: S107
    """The JSON of the container endpoint, IMDS and credential_process."""
    try:
        found = orjson.loads(data)
        keys = Credentials(
            str(found["AccessKeyId"]), str(found["SecretAccessKey"]), found.get(token_field)
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CredentialError(f"{who}: the answer has no AccessKeyId and SecretAccessKey") from None
    expires = found.get("Expiration")
    return Fetched(keys, None if expires is None else parse_expiration(expires, who))


class StaticSource:
    def __init__(self, name: str, credentials: Credentials) -> None:
        self.name = name
        self._fetched = Fetched(credentials, None)

    async def fetch(self) -> Fetched:
        return self._fetched

    async def close(self) -> None:
        return None


class _HTTPSource:
    """A source that asks an HTTP endpoint (its own small session: off the hot path)."""

    name = "?"

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _call(
        self, method: str, url: str, headers: Mapping[str, str], data: bytes | None = None
    ) -> bytes:
        try:
            async with self._client().request(method, url, headers=headers, data=data) as answer:
                body = await answer.read()
                if answer.status != 200:
                    text = body[:200].decode("utf-8", "replace").strip()
                    raise CredentialError(f"{self.name}: {method} answered {answer.status}: {text}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CredentialError(f"{self.name}: {type(exc).__name__} at {_origin(url)}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class WebIdentitySource(_HTTPSource):
    def __init__(
        self, token_file: str, role_arn: str, session_name: str, sts_endpoint: str
    ) -> None:
        super().__init__()
        self.name = "web identity (STS AssumeRoleWithWebIdentity)"
        self._token_file = Path(token_file)
        self._role_arn = role_arn
        self._session_name = session_name
        self._endpoint = sts_endpoint.rstrip("/") + "/"

    async def fetch(self) -> Fetched:
        try:  # read each time: the orchestrator rotates the file
            token = (await asyncio.to_thread(self._token_file.read_text)).strip()
        except OSError as exc:
            raise CredentialError(
                f"{self.name}: cannot read the token file: {exc.strerror}"
            ) from None
        form = urlencode({
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": self._role_arn, "RoleSessionName": self._session_name,
            "WebIdentityToken": token,
        })  # fmt: skip
        headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
        body = await self._call("POST", self._endpoint, headers, form.encode())
        return parse_sts(body, self.name)


def parse_sts(body: bytes, who: str) -> Fetched:
    """STS's XML answer: `.../Credentials/{AccessKeyId, SecretAccessKey, SessionToken,
    Expiration}` (the same for AssumeRole and AssumeRoleWithWebIdentity)."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:  # no entities: nothing to expand
        raise CredentialError(f"{who}: STS answered XML with a DTD")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 (DTDs refused above)
    except ElementTree.ParseError:
        raise CredentialError(f"{who}: STS answered something that is not XML") from None
    found = next((node for node in root.iter() if node.tag.endswith("Credentials")), None)

    def text(name: str) -> str | None:
        node = None if found is None else found.find(STS_NS + name)
        if node is None and found is not None:
            node = found.find(name)
        return None if node is None or node.text is None else node.text.strip()

    key, secret, expiration = text("AccessKeyId"), text("SecretAccessKey"), text("Expiration")
    if not key or not secret or not expiration:
        raise CredentialError(f"{who}: STS's answer has no credentials")
    return Fetched(
        Credentials(key, secret, text("SessionToken")), parse_expiration(expiration, who)
    )


class ContainerSource(_HTTPSource):
    def __init__(self, url: str, token: str | None, token_file: str | None) -> None:
        super().__init__()
        self.name = "the container credentials endpoint"
        parts = urlsplit(url)
        if parts.scheme != "https" and (
            parts.scheme != "http" or parts.hostname not in _PLAIN_HTTP_HOSTS
        ):
            raise CredentialError(
                f"{self.name}: {_origin(url)} is neither https nor a loopback or ECS/EKS address"
            )
        self._url = url
        self._token = token
        self._token_file = token_file

    async def fetch(self) -> Fetched:
        headers = {"accept": "application/json"}
        token = self._token
        if self._token_file:  # EKS pod identity rotates it: read it each time
            try:
                token = (await asyncio.to_thread(Path(self._token_file).read_text)).strip()
            except OSError as exc:
                raise CredentialError(
                    f"{self.name}: cannot read the token file: {exc.strerror}"
                ) from None
        if token:
            headers["authorization"] = token
        return from_json(await self._call("GET", self._url, headers), self.name)


class IMDSSource(_HTTPSource):
    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.name = "EC2 instance metadata (IMDSv2)"
        self._base = endpoint.rstrip("/")

    async def fetch(self) -> Fetched:
        put = {"x-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL_S}
        token = self._text(await self._call("PUT", self._base + "/latest/api/token", put))
        headers = {"x-aws-ec2-metadata-token": token.strip()}
        prefix = self._base + "/latest/meta-data/iam/security-credentials/"
        roles = self._text(await self._call("GET", prefix, headers)).split()
        if not roles:
            raise CredentialError(f"{self.name}: the instance has no IAM role")
        fetched = from_json(await self._call("GET", prefix + roles[0], headers), self.name)
        return fetched

    def _text(self, body: bytes) -> str:
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise CredentialError(f"{self.name}: an answer that is not UTF-8 text") from None


class ProcessSource:
    """A profile's `credential_process`: a command (no shell) that prints the JSON."""

    def __init__(self, command: str, profile: str) -> None:
        self.name = f"credential_process of profile {profile!r}"
        try:
            self._argv = shlex.split(command)
        except ValueError as exc:  # an unbalanced quote: a config error (the command unsaid)
            raise CredentialError(f"{self.name} is not a valid command line: {exc}") from None
        if not self._argv:
            raise CredentialError(f"{self.name} is empty")

    async def fetch(self) -> Fetched:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise CredentialError(f"{self.name}: cannot run it ({type(exc).__name__})") from None
        try:
            async with asyncio.timeout(PROCESS_TIMEOUT_S):
                out, _err = await proc.communicate()
        except BaseException as exc:  # timed out or cancelled: no process left behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise CredentialError(
                    f"{self.name}: no answer in {PROCESS_TIMEOUT_S:g} s"
                ) from None
            raise
        if proc.returncode != 0:  # its stderr may hold anything: not repeated
            raise CredentialError(f"{self.name}: exited with status {proc.returncode}")
        fetched = from_json(out, self.name, token_field="SessionToken")  # noqa: S106
        return fetched

    async def close(self) -> None:
        return None
