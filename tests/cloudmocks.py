"""The cloud providers' mock upstreams (capgate.mock.bedrock, vertex, azure) served from
a background thread, and the independent checks they use: botocore's SigV4 signer for
Bedrock's signatures; a capgate in front of Anthropic's mock and a Converse mock."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from capgate.mock.bedrock import create_bedrock_app
from capgate.mock.runner import MockUpstream
from conftest import Capgate, start_capgate

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)


def botocore_signature(
    credentials: Credentials,
    region: str,
    service: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    stamp: str,
    params: Mapping[str, str] | None = None,
) -> str:
    """The signature botocore computes for this request at this time (`x-amz-date`)."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers), params=params)
    request.context["timestamp"] = stamp
    auth = SigV4Auth(credentials, service, region)
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


def sigv4_verifier(
    access_key_id: str, secret: str, token: str | None, region: str, service: str = "bedrock"
):  # type: ignore[no-untyped-def]
    """What AWS checks, with botocore computing the signature: the scope, the time, the
    session token, and the signature over the headers the request says it signed."""
    credentials = Credentials(access_key_id, secret, token)

    def verify(method: str, url: str, headers: Mapping[str, str], body: bytes) -> str | None:
        found = _AUTH.match(headers.get("authorization", ""))
        if found is None:
            return "malformed Authorization header"
        key_id, day, scope_region, scope_service, signed, signature = found.groups()
        if key_id != access_key_id:
            return "unknown access key id"
        if (scope_region, scope_service) != (region, service):
            return f"scope {scope_region}/{scope_service}, expected {region}/{service}"
        stamp = headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "no valid x-amz-date"
        if stamp[:8] != day or abs((datetime.now(UTC) - when).total_seconds()) > 300:
            return "x-amz-date out of range"
        if token is not None and headers.get("x-amz-security-token") != token:
            return "wrong security token"
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return "host and x-amz-date must be signed"
        chosen = {name: headers[name] for name in names}
        expected = botocore_signature(
            credentials, region, service, method, url, chosen, body, stamp
        )
        return None if hmac.compare_digest(expected, signature) else "signature mismatch"

    return verify


class CloudMock(MockUpstream):
    """A cloud mock app served from a background thread (MockUpstream's machinery)."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self.app = app


@dataclass
class ConverseSetup:
    """A capgate with two providers: `anthropic` (the mock) and `converse` (Bedrock's
    Converse API on a mock that checks each request's SigV4 signature)."""

    gw: Capgate
    anthropic: MockUpstream
    bedrock: CloudMock
    log: Path


@contextmanager
def converse_gateway(
    tmp: Path, aws: tuple[str, str, str], region: str, models: list[dict[str, Any]]
) -> Iterator[ConverseSetup]:
    """`models` routed over the two providers; `aws` = key id, secret, session token."""
    with (
        MockUpstream() as main,
        CloudMock(create_bedrock_app(sigv4_verifier(*aws, region))) as bedrock,
    ):
        config: dict[str, Any] = {
            "providers": [
                {"name": "anthropic", "type": "anthropic", "base_url": main.url, "api_key": "a"},
                {"name": "converse", "type": "bedrock", "api": "converse", "region": region,
                 "base_url": bedrock.url, "aws_access_key_id": aws[0],
                 "aws_secret_access_key": aws[1], "aws_session_token": aws[2]},
            ],
            "models": models,
        }  # fmt: skip
        log = tmp / "capgate.log"
        gw = start_capgate(tmp, config, log=log)
        try:
            yield ConverseSetup(gw, main, bedrock, log)
        finally:
            gw.close()


def cost_at(entry: dict[str, Any], price: tuple[str, str, str, str]) -> Decimal:
    """What a ledger entry's tokens cost at `price` (USD per million: input, output,
    cache write, cache read)."""
    counts = (
        entry["input_tokens"],
        entry["output_tokens"],
        entry["cache_write_tokens"],
        entry["cache_read_tokens"],
    )
    return sum((Decimal(p) * n for p, n in zip(price, counts, strict=True)), Decimal(0)) / 1_000_000
