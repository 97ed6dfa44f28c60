"""Google Vertex AI: Anthropic models through `rawPredict` / `streamRawPredict`, with an
access token from a service account.

The token: a JWT (RS256, signed with the service account's private key by
`cryptography`) is exchanged at the account's `token_uri` for an access token (OAuth 2.0
JWT bearer grant, RFC 7523), kept until a minute before it expires and shared by all
requests; one exchange at a time.

A request: `POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/
{model}:rawPredict` (`:streamRawPredict` for a stream) with the Anthropic body, the model
in the path instead of the body, and `anthropic_version: vertex-2023-10-16`. The answer is
Anthropic's (a stream is Anthropic SSE); Google's own errors (`{"error": {"code",
"message", "status"}}`) become Anthropic error bodies.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from capgate.config import ConfigError
from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint
from capgate.providers.converted import (
    ConvertedAnswer,
    anthropic_error,
    error_message,
    is_anthropic_error,
    json_body,
    pool_for,
)
from capgate.providers.upstream import Pool

ANTHROPIC_VERSION = "vertex-2023-10-16"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EARLY_S = 60.0  # a token is renewed this long before it expires


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    private_key_id: str
    token_uri: str
    key: rsa.RSAPrivateKey

    def __repr__(self) -> str:  # never the key
        return f"ServiceAccount({self.client_email!r})"

    @classmethod
    def load(cls, path: str, where: str) -> ServiceAccount:
        try:
            data = orjson.loads(Path(path).read_bytes())
            key = serialization.load_pem_private_key(data["private_key"].encode(), None)
            email = str(data["client_email"])
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"{where}: {path} is not a service-account JSON file with client_email and "
                "a private_key"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{where}: the private_key in {path} is not an RSA key")
        token_uri = str(data.get("token_uri") or "https://oauth2.googleapis.com/token")
        return cls(email, str(data.get("private_key_id", "")), token_uri, key)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jwt_assertion(account: ServiceAccount, now: float, lifetime_s: int = 3600) -> str:
    """The signed JWT that asks `token_uri` for an access token."""
    header = {"alg": "RS256", "typ": "JWT", "kid": account.private_key_id}
    claims = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": account.token_uri,
        "iat": int(now),
        "exp": int(now) + lifetime_s,
    }
    signing_input = _b64(orjson.dumps(header)) + b"." + _b64(orjson.dumps(claims))
    signature = account.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64(signature)).decode()


class TokenSource:
    """Access tokens for one service account, exchanged when needed and cached."""

    def __init__(
        self,
        config: ProviderConfig,
        account: ServiceAccount,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._account = account
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock: asyncio.Lock | None = None
        self._pool: Pool | None = None
        parts = urlsplit(account.token_uri)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path or "/"
        self.exchanges = 0  # how many tokens were fetched (for tests and metrics)

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._expires:
            return self._token
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one exchange at a time; the others use its token
            if self._token is None or self._clock() >= self._expires:
                self._token, lifetime = await self._exchange()
                self._expires = self._clock() + max(0.0, lifetime - EARLY_S)
        return self._token

    async def _exchange(self) -> tuple[str, float]:
        if self._pool is None:
            self._pool = pool_for(self._config, self._origin, f"{self._config.name} token")
        form = urlencode(
            {"grant_type": GRANT, "assertion": jwt_assertion(self._account, self._clock())}
        )
        head = self._pool.head(
            self._path,
            [
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept-encoding", "identity"),
            ],
        )
        who = f'provider "{self._config.name}"'
        answer = await self._pool.post(head, form.encode())
        data = await answer.read()
        if answer.status != 200:
            # No request reached Vertex: the next target can be tried at no cost.
            raise UpstreamFailed(
                f"{who}: the token exchange at {self._origin} answered {answer.status}: "
                f"{error_message(data)[:300]}",
                sent=False,
            )
        self.exchanges += 1
        try:
            found: Any = orjson.loads(data)
            return str(found["access_token"]), float(found.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UpstreamFailed(
                f"{who}: the token exchange sent no access_token", sent=False
            ) from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class VertexProvider:
    dialects = frozenset({"anthropic"})

    def __init__(self, config: ProviderConfig, tokens: TokenSource | None = None) -> None:
        assert config.project and config.region and config.credentials_file
        self.name = config.name
        self.type: str = config.type
        self.first_byte_timeout_s = config.first_byte_timeout_s
        self.chat_output_field = "max_tokens"  # never called in Chat Completions
        self._config = config
        where = f"providers.{config.name}.credentials_file"
        self.tokens = tokens or TokenSource(
            config, ServiceAccount.load(config.credentials_file, where)
        )
        self._prefix = (
            f"/v1/projects/{config.project}/locations/{config.region}/publishers/anthropic/models/"
        )
        self._pool: Pool | None = None

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is Endpoint.MESSAGES

    def request(self, body: bytes) -> tuple[str, bytes]:
        data = json_body(body, f'provider "{self.name}"')
        model = data.pop("model", None)
        if not isinstance(model, str) or not model:
            raise UpstreamFailed(f'provider "{self.name}": the request names no model', sent=False)
        data["anthropic_version"] = ANTHROPIC_VERSION
        action = "streamRawPredict" if data.get("stream") is True else "rawPredict"
        return f"{self._prefix}{quote(model, safe='@')}:{action}", orjson.dumps(data)

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> ConvertedAnswer:
        path, payload = self.request(body)
        token = await self.tokens.token()
        if self._pool is None:
            self._pool = pool_for(self._config, self._config.url)
        headers = [
            ("content-type", "application/json"),
            ("accept-encoding", "identity"),
            ("authorization", f"Bearer {token}"),
            *((k.lower(), v) for k, v in self._config.headers.items()),
        ]
        beta = client_headers.get("anthropic-beta")
        if beta:
            headers.append(("anthropic-beta", beta))
        answer = await self._pool.post(self._pool.head(path, headers), payload)
        if answer.status >= 400:
            status = answer.status

            def as_anthropic(data: bytes) -> bytes:
                if is_anthropic_error(data):
                    return data  # the model's own error, passed on by Vertex
                return anthropic_error(status, error_message(data))

            headers_out = {**answer.headers, "content-type": "application/json"}
            return ConvertedAnswer(answer, status, headers_out, whole=as_anthropic)
        return ConvertedAnswer(answer, answer.status, answer.headers)

    async def close(self) -> None:
        await self.tokens.close()
        if self._pool is not None:
            await self._pool.close()
