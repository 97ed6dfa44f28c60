"""Mock AWS credential endpoints, for the Bedrock provider's credential chain: STS
(AssumeRoleWithWebIdentity, `POST /`), the ECS / EKS container endpoint
(`GET /v2/credentials/{id}`) and EC2 instance metadata, IMDSv2 (`PUT /latest/api/token`,
`GET /latest/meta-data/iam/security-credentials/[role]`), in AWS's formats.

All three hand out temporary credentials from one `Issuer`, which remembers them (the
mock Bedrock runtime's signature check looks them up and refuses expired ones), counts
the fetches per endpoint, and can be told to fail (`failing`), to test refreshes.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs

import orjson
from aiohttp import web

ROLE = "capgate-mock-role"
_STS_XML = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:capgate</SubjectFromWebIdentityToken>
    <AssumedRoleUser><Arn>{arn}/{session}</Arn><AssumedRoleId>AROAMOCK:{session}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{key}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>mock-sts</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"""


@dataclass(frozen=True, slots=True)
class Issued:
    key_id: str
    secret: str
    token: str
    expires: float

    @property
    def expiration(self) -> str:
        return datetime.fromtimestamp(self.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Issuer:
    lifetime_s: float = 3600.0
    web_identity_token: str = "mock-oidc-token"  # noqa: S105 (the mock's, for tests)
    role_arn: str = "arn:aws:iam::123456789012:role/capgate"
    container_token: str = "mock-container-token"  # noqa: S105
    failing: bool = False
    issued: dict[str, Issued] = field(default_factory=dict)
    fetches: Counter[str] = field(default_factory=Counter)

    def issue(self, source: str) -> Issued:
        self.fetches[source] += 1
        n = len(self.issued)
        # Whole seconds, as AWS writes Expiration: the credentials expire when they say.
        expires = float(int(time.time() + self.lifetime_s))
        found = Issued(
            f"ASIAMOCK{n:08d}", secrets.token_urlsafe(24), secrets.token_urlsafe(32), expires
        )
        self.issued[found.key_id] = found
        return found


ISSUER = web.AppKey("issuer", Issuer)


def create_credentials_app(issuer: Issuer) -> web.Application:
    app = web.Application()
    app[ISSUER] = issuer
    app.router.add_post("/", _sts)
    app.router.add_get("/v2/credentials/{id}", _container)
    app.router.add_put("/latest/api/token", _imds_token)
    app.router.add_get("/latest/meta-data/iam/security-credentials/", _imds_roles)
    app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", _imds_role)
    return app


def _sts_error(status: int, code: str, message: str) -> web.Response:
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>mock</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


async def _sts(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    form = {k: v[0] for k, v in parse_qs(await request.text()).items()}
    if issuer.failing:
        return _sts_error(503, "ServiceUnavailable", "mock STS is failing")
    if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
        return _sts_error(400, "InvalidAction", "unknown action or version")
    if form.get("WebIdentityToken") != issuer.web_identity_token:
        return _sts_error(400, "InvalidIdentityToken", "the web identity token is not valid")
    if form.get("RoleArn") != issuer.role_arn or not form.get("RoleSessionName"):
        return _sts_error(
            403, "AccessDenied", "not authorized to perform sts:AssumeRoleWithWebIdentity"
        )
    found = issuer.issue("sts")
    text = _STS_XML.format(
        arn=issuer.role_arn, session=form["RoleSessionName"], key=found.key_id,
        secret=found.secret, token=found.token, expiration=found.expiration,
    )  # fmt: skip
    return web.Response(text=text, content_type="text/xml")


def _json(found: Issued) -> web.Response:
    body = {
        "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": found.key_id,
        "SecretAccessKey": found.secret, "Token": found.token,
        "Expiration": found.expiration, "RoleArn": "arn:aws:iam::123456789012:role/capgate",
    }  # fmt: skip
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _container(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    if issuer.failing:
        return web.json_response({"message": "mock container endpoint is failing"}, status=500)
    if request.headers.get("authorization") != issuer.container_token:
        return web.json_response({"message": "bad authorization token"}, status=403)
    return _json(issuer.issue("container"))


async def _imds_token(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    if issuer.failing:
        return web.Response(status=500)
    ttl = request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
    if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
        return web.Response(status=400)
    issuer.fetches["imds-token"] += 1
    return web.Response(text="imds-session-" + issuer.container_token)


def _imds_ok(request: web.Request) -> bool:  # IMDSv2 only: no token, no answer
    token = "imds-session-" + request.app[ISSUER].container_token
    return request.headers.get("x-aws-ec2-metadata-token") == token


async def _imds_roles(request: web.Request) -> web.Response:
    if not _imds_ok(request):
        return web.Response(status=401)
    return web.Response(text=ROLE)


async def _imds_role(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    if not _imds_ok(request):
        return web.Response(status=401)
    if request.match_info["role"] != ROLE:
        return web.Response(status=404)
    return _json(issuer.issue("imds"))
