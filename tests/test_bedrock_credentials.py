"""Bedrock's AWS credential chain through a real capgate server: the environment, profiles
(keys, credential_process, AWS_PROFILE), web identity (STS), the container endpoint and
EC2 instance metadata (IMDSv2), each against loopback mocks (capgate.mock.aws_credentials);
temporary credentials refreshed before they expire, and the failure modes. The mock
Bedrock runtime checks every signature with botocore against the credentials the mock
endpoints issued, and refuses expired ones."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from capgate.mock.aws_credentials import Issuer, create_credentials_app
from capgate.mock.bedrock import create_bedrock_app
from cloudmocks import CloudMock, sigv4_verifier
from conftest import Capgate, start_capgate

REGION = "us-west-2"
MODEL = "us.amazon.nova-lite-v1:0"
STATIC = {  # key id -> (secret, session token): keys given by files, env or a process
    "AKIAENVIRONMENT": ("env/secret+0123456789", "env-session-token"),
    "AKIAPROFILEDEV": ("dev/secret+0123456789", None),
    "AKIAPROFILEENV": ("envprofile/secret+0123456789", None),
    "AKIAPROCESS": ("process/secret+0123456789", "process-token"),
}
_KEY_ID = re.compile(r"Credential=([^/]+)/")


def _verifier(issuer: Issuer):  # type: ignore[no-untyped-def]
    def verify(method: str, url: str, headers: Mapping[str, str], body: bytes) -> str | None:
        found = _KEY_ID.search(headers.get("authorization", ""))
        key = found.group(1) if found else ""
        if key in issuer.issued:
            issued = issuer.issued[key]
            if time.time() >= issued.expires:
                return "expired token"
            check = sigv4_verifier(key, issued.secret, issued.token, REGION)
            return check(method, url, headers, body)  # type: ignore[no-any-return]
        if key in STATIC:
            secret, token = STATIC[key]
            return sigv4_verifier(key, secret, token, REGION)(method, url, headers, body)  # type: ignore[no-any-return]
        return "unknown access key id"

    return verify


class Mocks:
    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self.issuer = Issuer(lifetime_s=lifetime_s)
        self.creds = CloudMock(create_credentials_app(self.issuer))
        self.bedrock = CloudMock(create_bedrock_app(_verifier(self.issuer)))

    def key_ids(self) -> list[str]:
        """The access key id of each request the Bedrock mock received, in order."""
        return [
            _KEY_ID.search(r.headers["authorization"]).group(1)  # type: ignore[union-attr]
            for r in self.bedrock.requests()
        ]


@pytest.fixture
def mocks() -> Iterator[Mocks]:
    made = Mocks()
    with made.creds, made.bedrock:
        yield made


@pytest.fixture
def short_lived() -> Iterator[Mocks]:
    made = Mocks(lifetime_s=6.0)
    with made.creds, made.bedrock:
        yield made


def _start(tmp: Path, mocks: Mocks, env: dict[str, str], **fields: Any) -> tuple[Capgate, Path]:
    providers = [
        {"name": name, "type": "bedrock", "api": "converse", "region": REGION,
         "base_url": mocks.bedrock.url, **extra}
        for name, extra in (fields or {"bedrock": {}}).items()
    ]  # fmt: skip
    models = [
        {"match": name, "retries": 0, "targets": [{"provider": name, "model": MODEL}]}
        for name in (fields or {"bedrock": {}})
    ]
    log = tmp / "capgate.log"
    base = {"HOME": str(tmp), "AWS_EC2_METADATA_DISABLED": "true"}  # no real ~/.aws, no IMDS
    gw = start_capgate(
        tmp, {"providers": providers, "models": models}, env={**base, **env}, log=log
    )
    return gw, log


def _ask(gw: Capgate, key: str, model: str = "bedrock") -> anthropic.types.Message:
    with anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as client:
        return client.messages.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": "hi mock:words=3"}]
        )


def test_keys_from_the_environment(tmp_path: Path, mocks: Mocks, key_name: str) -> None:
    secret, token = STATIC["AKIAENVIRONMENT"]
    env = {"AWS_ACCESS_KEY_ID": "AKIAENVIRONMENT", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_SESSION_TOKEN": token or ""}  # fmt: skip
    gw, log = _start(tmp_path, mocks, env)
    try:
        assert _ask(gw, gw.create_key(key_name)).usage.output_tokens == 3
    finally:
        gw.close()
    assert mocks.key_ids() == ["AKIAENVIRONMENT"]
    assert mocks.bedrock.last_request().headers["x-amz-security-token"] == token
    assert secret not in log.read_text() and str(token) not in log.read_text()


def test_profiles_keys_credential_process_and_aws_profile(
    tmp_path: Path, mocks: Mocks, key_name: str
) -> None:
    process = tmp_path / "creds.py"
    secret, token = STATIC["AKIAPROCESS"]
    answer = {"Version": 1, "AccessKeyId": "AKIAPROCESS", "SecretAccessKey": secret,
              "SessionToken": token, "Expiration": "2099-01-01T00:00:00Z"}  # fmt: skip
    process.write_text(f"print({orjson.dumps(answer).decode()!r})\n")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[dev]\naws_access_key_id = AKIAPROFILEDEV\n"
        f"aws_secret_access_key = {STATIC['AKIAPROFILEDEV'][0]}\n"
        f"[envprofile]\naws_access_key_id = AKIAPROFILEENV\n"
        f"aws_secret_access_key = {STATIC['AKIAPROFILEENV'][0]}\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile proc]\ncredential_process = {sys.executable} {process}\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config),
           "AWS_PROFILE": "envprofile"}  # fmt: skip
    gw, _ = _start(
        tmp_path, mocks, env,
        dev={"aws_profile": "dev"}, proc={"aws_profile": "proc"}, plain={},
    )  # fmt: skip
    try:
        key = gw.create_key(key_name)
        for model in ("dev", "proc", "plain"):
            assert _ask(gw, key, model).usage.output_tokens == 3
    finally:
        gw.close()
    assert mocks.key_ids() == ["AKIAPROFILEDEV", "AKIAPROCESS", "AKIAPROFILEENV"]


def test_web_identity_through_sts(tmp_path: Path, mocks: Mocks, key_name: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(mocks.issuer.web_identity_token + "\n")
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
           "AWS_ROLE_ARN": mocks.issuer.role_arn, "AWS_ENDPOINT_URL_STS": mocks.creds.url}  # fmt: skip
    gw, log = _start(tmp_path, mocks, env)
    try:
        key = gw.create_key(key_name)
        _ask(gw, key)
        _ask(gw, key)
    finally:
        gw.close()
    (issued,) = mocks.issuer.issued.values()  # one exchange, shared by both requests
    assert mocks.issuer.fetches["sts"] == 1 and mocks.key_ids() == [issued.key_id] * 2
    assert mocks.bedrock.last_request().headers["x-amz-security-token"] == issued.token
    text = log.read_text()
    assert issued.secret not in text and mocks.issuer.web_identity_token not in text


def test_the_container_endpoint(tmp_path: Path, mocks: Mocks, key_name: str) -> None:
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": mocks.creds.url + "/v2/credentials/task-1",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": mocks.issuer.container_token}  # fmt: skip
    gw, _ = _start(tmp_path, mocks, env)
    try:
        _ask(gw, gw.create_key(key_name))
    finally:
        gw.close()
    (issued,) = mocks.issuer.issued.values()
    assert mocks.issuer.fetches["container"] == 1 and mocks.key_ids() == [issued.key_id]


def test_instance_metadata_v2(tmp_path: Path, mocks: Mocks, key_name: str) -> None:
    env = {"AWS_EC2_METADATA_DISABLED": "false",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT": mocks.creds.url}  # fmt: skip
    gw, _ = _start(tmp_path, mocks, env)
    try:
        _ask(gw, gw.create_key(key_name))
    finally:
        gw.close()
    (issued,) = mocks.issuer.issued.values()
    assert mocks.issuer.fetches["imds-token"] == 1 and mocks.issuer.fetches["imds"] == 1
    assert mocks.key_ids() == [issued.key_id]


def _container_env(mocks: Mocks) -> dict[str, str]:
    return {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": mocks.creds.url + "/v2/credentials/task-1",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": mocks.issuer.container_token,
    }


def test_short_lived_credentials_are_refreshed_before_they_expire(
    tmp_path: Path, short_lived: Mocks, key_name: str
) -> None:
    """Credentials that live 6 s are refreshed from their half-life on, in the background:
    the request that finds them due still signs with them, the next with the new ones."""
    gw, _ = _start(tmp_path, short_lived, _container_env(short_lived))
    try:
        key = gw.create_key(key_name)
        _ask(gw, key)
        time.sleep(3.3)  # past the half-life, before the expiry
        _ask(gw, key)
        time.sleep(0.5)  # the background refresh is done
        _ask(gw, key)
    finally:
        gw.close()
    first, second = list(short_lived.issuer.issued)
    assert short_lived.key_ids() == [first, first, second]
    assert short_lived.issuer.fetches["container"] == 2


def test_a_failed_refresh_keeps_valid_credentials_then_expiry_fails_clearly(
    tmp_path: Path, short_lived: Mocks, key_name: str
) -> None:
    gw, log = _start(tmp_path, short_lived, _container_env(short_lived))
    try:
        key = gw.create_key(key_name)
        _ask(gw, key)
        short_lived.issuer.failing = True
        time.sleep(3.3)
        failed_at = time.monotonic()  # the next request's background refresh fails
        _ask(gw, key)  # signed with the still-valid ones; the refresh failed behind it
        time.sleep(2.8)  # now they are (about to be) expired, and cannot be refreshed
        with (
            anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0) as client,
            pytest.raises(anthropic.APIStatusError) as caught,
        ):
            client.messages.create(
                model="bedrock", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
            )
        with (
            openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as chat,
            pytest.raises(openai.APIStatusError) as raised,
        ):
            chat.chat.completions.create(
                model="bedrock", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
            )
        short_lived.issuer.failing = False  # the endpoint is back: so are the requests
        time.sleep(max(0.0, failed_at + 10.2 - time.monotonic()))  # after the retry backoff
        _ask(gw, key)
        entries = gw.ledger(key=key_name)
    finally:
        gw.close()
    assert caught.value.status_code == 503 and raised.value.status_code == 503
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message == 'AWS credentials are unavailable for provider "bedrock"'
    assert 'provider "bedrock"' in raised.value.body["message"]  # type: ignore[index]
    first, second = list(short_lived.issuer.issued)
    assert short_lived.key_ids() == [first, first, second]  # the failed ones sent nothing
    text = log.read_text()
    assert "refreshing AWS credentials failed, the current ones are kept" in text
    assert all(
        i.secret not in text and i.token not in text for i in short_lived.issuer.issued.values()
    )
    assert sorted(e["status"] for e in entries) == [200, 200, 200, 503, 503]


def test_credentials_that_cannot_be_had_fail_the_request_clearly(
    tmp_path: Path, mocks: Mocks, key_name: str
) -> None:
    env = {**_container_env(mocks), "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong-token"}
    gw, log = _start(tmp_path, mocks, env)
    try:
        with (
            anthropic.Anthropic(
                base_url=gw.url, api_key=gw.create_key(key_name), max_retries=0
            ) as client,
            pytest.raises(anthropic.APIStatusError) as caught,
        ):
            client.messages.create(
                model="bedrock", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        gw.close()
    assert caught.value.status_code == 503
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message == 'AWS credentials are unavailable for provider "bedrock"'
    text = log.read_text()
    assert "403" in text and "bad authorization token" in text and "wrong-token" not in text
    assert mocks.bedrock.requests() == []
