"""The cloud providers' mock upstreams (capgate.mock.bedrock, vertex, azure) served from
a background thread, and the independent checks they use: botocore's SigV4 signer for
Bedrock's signatures."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from capgate.mock.runner import MockUpstream

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
