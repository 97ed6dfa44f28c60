"""AWS Signature Version 4 for the Bedrock provider: pure functions (stdlib hmac and
hashlib), no I/O and no clock of their own (the caller passes the time).

The steps are AWS's (docs.aws.amazon.com, "Create a signed AWS API request"): a canonical
request, the string to sign, a key derived from the secret for the day, region and service,
and the `Authorization` header naming the signed headers. Paths are encoded a second time
in the canonical request (every service but S3 expects that), so a model id with `:`
(`...-v1:0`, sent as `%3A`) is signed as `%253A`. tests/test_sigv4.py checks this module
against botocore's signer, an independent implementation, on many inputs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never the secret, even in a traceback
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def amz_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def canonical_uri(path: str) -> str:
    """The path as sent (already percent-encoded once), normalized (RFC 3986: no `.` or
    `..` segments; AWS also drops empty ones) and encoded again; `/` and the unreserved
    characters stay."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    normal = "/" + "/".join(kept) + ("/" if kept and path.endswith("/") else "")
    return quote(normal, safe="/~")


def canonical_query(query: Mapping[str, str]) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def _header_value(value: str) -> str:
    return " ".join(value.split())  # trimmed, inner runs of spaces made one


def canonical_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """The canonical request and its signed-headers list; every header given is signed."""
    lowered = sorted((k.lower(), _header_value(v)) for k, v in headers.items())
    signed = ";".join(name for name, _ in lowered)
    lines = "".join(f"{name}:{value}\n" for name, value in lowered)
    text = "\n".join(
        [method.upper(), canonical_uri(path), canonical_query(query), lines, signed, payload_hash]
    )
    return text, signed


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), day)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def sign(
    credentials: Credentials,
    region: str,
    service: str,
    method: str,
    host: str,
    path: str,
    body: bytes,
    when: datetime,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers to add to the request: `x-amz-date`, `x-amz-security-token` (with a
    session token) and `authorization`. `host` and `headers` (e.g. content-type) are
    signed; the caller sends them as given."""
    stamp = amz_date(when)
    added = {"x-amz-date": stamp}
    if credentials.session_token:
        added["x-amz-security-token"] = credentials.session_token
    signed_headers = {**{k.lower(): v for k, v in (headers or {}).items()}, "host": host, **added}
    request, signed = canonical_request(
        method, path, query or {}, signed_headers, hashlib.sha256(body).hexdigest()
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = signing_key(credentials.secret_access_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    added["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return added
