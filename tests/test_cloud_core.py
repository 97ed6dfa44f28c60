"""The cloud providers' pure parts, without a gateway: config validation, cloud model ids
priced as their model, Bedrock's and Vertex's request bodies, the service-account JWT
(checked with the public key by the Vertex mock's check) and the token cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from capgate.config import ConfigError, parse_config
from capgate.mock.vertex import VertexState, check_assertion, create_vertex_app
from capgate.pricing import PricingTable, cloud_model_name
from capgate.provider_config import ProviderConfig
from capgate.providers.bedrock import BedrockProvider
from capgate.providers.vertex import ServiceAccount, TokenSource, VertexProvider, jwt_assertion
from cloudmocks import CloudMock

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EMAIL = "sa@p.iam.gserviceaccount.com"


def _provider(**fields: Any) -> ProviderConfig:
    return parse_config({"providers": [{"name": "p", **fields}]}, {}).providers[0]


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"type": "bedrock", "aws_access_key_id": "a", "aws_secret_access_key": "s"}, "region"),
        # No keys: the AWS chain finds them; a key id without its secret is a mistake.
        (
            {"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "a"},
            "aws_secret_access_key",
        ),
        ({"type": "vertex", "project": "p", "region": "global"}, "credentials_file"),
        ({"type": "azure", "base_url": "https://x.openai.azure.com"}, "api_key"),
    ],
)
def test_a_cloud_provider_without_what_it_needs_stops_the_start(
    fields: dict[str, Any], missing: str
) -> None:
    with pytest.raises(
        ConfigError, match=f"providers\\[0\\]: a {fields['type']} provider needs {missing}"
    ):
        _provider(**fields)


def test_cloud_urls_from_region() -> None:
    bedrock = _provider(
        type="bedrock", region="eu-west-3", aws_access_key_id="a", aws_secret_access_key="s"
    )
    assert bedrock.url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert bedrock.dialects == frozenset({"anthropic"})
    vertex = _provider(type="vertex", project="p", region="us-east5", credentials_file="f")
    assert vertex.url == "https://us-east5-aiplatform.googleapis.com"
    assert _provider(type="vertex", project="p", region="global", credentials_file="f").url == (
        "https://aiplatform.googleapis.com"
    )
    with pytest.raises(ConfigError, match="deployments"):
        _provider(type="azure", base_url="https://x", api_key="k", deployments={"m": "a/b"})


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5-20251001"),
        ("apac.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),
        ("us-gov.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        ),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-haiku-4-5-20251001-v1:0",
            "claude-haiku-4-5-20251001",
        ),
        ("arn:aws:bedrock:us-east-1:1:application-inference-profile/abc", None),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5-20251001"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("gpt-4o", "gpt-4o"),
        ("meta.llama3-70b-instruct-v1:0", "meta.llama3-70b-instruct"),  # Converse's vendors
        ("us.amazon.nova-pro-v1:0", "amazon.nova-pro"),
        ("mistral.mistral-large-2407-v1:0", "mistral.mistral-large-2407"),
    ],
)
def test_cloud_model_ids_name_their_model(model: str, named: str | None) -> None:
    assert cloud_model_name(model) == (named or model)  # None: an opaque id, left as it is


def test_cloud_ids_are_priced_as_their_model_and_overrides_win() -> None:
    table = PricingTable.load(
        {"us.anthropic.claude-sonnet-4-5-20250929-v1:0": {"input": "3.30", "output": "16.50"}}
    )
    sonnet = table.lookup("claude-sonnet-4-5")
    assert sonnet is not None
    assert table.lookup("anthropic.claude-sonnet-4-5-20250929-v1:0") == sonnet
    assert table.lookup("claude-haiku-4-5@20251001") == table.lookup("claude-haiku-4-5")
    regional = table.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert regional is not None and regional != sonnet  # the admin's price for the id
    assert table.lookup("anthropic.unknown-model-v1:0") is None  # refused as today


def test_bedrock_body_has_its_version_and_no_model_or_stream() -> None:
    provider = BedrockProvider(
        _provider(
            type="bedrock", region="us-east-1", aws_access_key_id="a", aws_secret_access_key="s"
        )
    )
    body = orjson.dumps(
        {"model": "anthropic.claude-x-v1:0", "stream": True, "max_tokens": 5, "messages": []}
    )
    path, sent, stream = provider.request(body, {"anthropic-beta": "a-1, b-2"})
    assert (path, stream) == ("/model/anthropic.claude-x-v1%3A0/invoke-with-response-stream", True)
    assert orjson.loads(sent) == {
        "max_tokens": 5, "messages": [], "anthropic_version": "bedrock-2023-05-31",
        "anthropic_beta": ["a-1", "b-2"],
    }  # fmt: skip


def _account(tmp: Path, token_uri: str) -> Path:
    pem = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp / "sa.json"
    path.write_bytes(
        orjson.dumps(
            {
                "client_email": EMAIL,
                "private_key_id": "k",
                "private_key": pem,
                "token_uri": token_uri,
            }
        )
    )
    return path


def test_the_jwt_is_signed_with_the_account_key(tmp_path: Path) -> None:
    uri = "http://127.0.0.1:1/token"
    account = ServiceAccount.load(str(_account(tmp_path, uri)), "here")
    assert "BEGIN" not in repr(account)
    state = VertexState(EMAIL, KEY.public_key())
    assertion = jwt_assertion(account, time.time())
    assert check_assertion(state, assertion, uri) is None
    head, claims, signature = assertion.split(".")
    assert (
        check_assertion(state, f"{head}.{claims}.{signature[:-4]}AAAA", uri) == "invalid signature"
    )
    assert "audience" in (check_assertion(state, assertion, "http://elsewhere/token") or "")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (
        check_assertion(VertexState(EMAIL, other.public_key()), assertion, uri)
        == "invalid signature"
    )
    old = jwt_assertion(account, time.time() - 7200)
    assert check_assertion(state, old, uri) == "expired or too long-lived"


def test_a_bad_service_account_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ServiceAccount.load(str(tmp_path / "none.json"), "where")
    (tmp_path / "bad.json").write_text('{"client_email": "x", "private_key": "nope"}')
    with pytest.raises(ConfigError, match="not a service-account JSON file"):
        ServiceAccount.load(str(tmp_path / "bad.json"), "where")


def test_the_token_is_cached_until_shortly_before_it_expires(tmp_path: Path) -> None:
    state = VertexState(EMAIL, KEY.public_key(), expires_in=600)
    with CloudMock(create_vertex_app(state)) as mock:
        path = _account(tmp_path, f"{mock.url}/token")
        config = _provider(
            type="vertex",
            project="p",
            region="global",
            credentials_file=str(path),
            base_url=mock.url,
        )
        now = [time.time() - 550]  # the JWTs' times must hold against the mock's real clock
        tokens = TokenSource(config, ServiceAccount.load(str(path), "x"), clock=lambda: now[0])

        async def run() -> list[str]:
            got = list(await asyncio.gather(*(tokens.token() for _ in range(5))))  # one exchange
            now[0] += 500  # within 600 - 60 s
            got.append(await tokens.token())
            now[0] += 50  # past it: a new one
            got.append(await tokens.token())
            await tokens.close()
            return got

        got = asyncio.run(run())
    assert state.exchanges == 2 and tokens.exchanges == 2
    assert len(set(got[:6])) == 1 and got[6] != got[0]
    assert VertexProvider(config, tokens).request(
        orjson.dumps({"model": "claude-x@20250101", "stream": True})
    )[0] == (
        "/v1/projects/p/locations/global/publishers/anthropic/models/claude-x@20250101:streamRawPredict"
    )
