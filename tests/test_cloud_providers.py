"""AWS Bedrock, Google Vertex AI and Azure OpenAI through a real capgate server, each
against a mock that speaks its wire format (capgate.mock.bedrock, vertex, azure): the
Bedrock mock checks every SigV4 signature with botocore, the Vertex mock checks the JWT
with the service account's public key, the Azure mock the api-key and api-version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from capgate.mock.azure import create_azure_app
from capgate.mock.bedrock import create_bedrock_app
from capgate.mock.runner import MockUpstream
from capgate.mock.vertex import VertexState, create_vertex_app
from cloudmocks import CloudMock, sigv4_verifier
from conftest import Capgate, start_capgate

AWS = ("AKIAMOCKEXAMPLE", "mock/secret+KEY0123456789", "session-token-xyz")
REGION = "us-east-1"
BEDROCK_SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
VERTEX_HAIKU = "claude-haiku-4-5@20251001"
AZURE_KEY = "azure-key-0123456789"
EMAIL = "capgate@mock-project.iam.gserviceaccount.com"


@dataclass
class Cloud:
    gw: Capgate
    anthropic: MockUpstream
    bedrock: CloudMock
    vertex: CloudMock
    vertex_state: VertexState
    azure: CloudMock
    log: Path


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("cloud")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    state = VertexState(EMAIL, key.public_key())
    with (
        MockUpstream() as main,
        CloudMock(create_bedrock_app(sigv4_verifier(*AWS, REGION))) as bedrock,
        CloudMock(create_vertex_app(state)) as vertex,
        CloudMock(create_azure_app(AZURE_KEY, {"prod-gpt4o": "gpt-4o-2024-11-20"})) as azure,
    ):
        account = tmp / "sa.json"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        account.write_bytes(
            orjson.dumps({
                "type": "service_account", "project_id": "mock-project",
                "private_key_id": "k1", "private_key": pem, "client_email": EMAIL,
                "token_uri": f"{vertex.url}/token",
            })
        )  # fmt: skip
        stranger = tmp / "stranger.json"  # the same account, signed with another key
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        stranger.write_bytes(
            account.read_bytes().replace(
                pem.encode().replace(b"\n", b"\\n"),
                other.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).replace(b"\n", b"\\n"),
            )
        )
        bedrock_fields = {
            "type": "bedrock", "region": REGION, "base_url": bedrock.url,
            "aws_access_key_id": AWS[0], "aws_secret_access_key": AWS[1],
            "aws_session_token": AWS[2], "headers": {"X-Team": "blue  team"},
        }  # fmt: skip
        config: dict[str, Any] = {
            "providers": [
                {"name": "anthropic", "type": "anthropic", "base_url": main.url, "api_key": "a"},
                {"name": "bedrock", **bedrock_fields},
                {"name": "bedrock-bad", **bedrock_fields, "aws_secret_access_key": "wrong"},
                {"name": "vertex", "type": "vertex", "project": "mock-project",
                 "region": "us-east5", "base_url": vertex.url, "credentials_file": str(account)},
                {"name": "vertex-bad", "type": "vertex", "project": "mock-project",
                 "region": "us-east5", "base_url": vertex.url, "credentials_file": str(stranger)},
                {"name": "azure", "type": "azure", "base_url": azure.url, "api_key": AZURE_KEY,
                 "deployments": {"gpt-4o": "prod-gpt4o"}},
            ],
            "models": [
                {"match": "bedrock-sonnet", "retries": 0,
                 "targets": [{"provider": "bedrock", "model": BEDROCK_SONNET}]},
                {"match": "bedrock-bad", "retries": 0,
                 "targets": [{"provider": "bedrock-bad", "model": BEDROCK_SONNET}]},
                {"match": "vertex-haiku", "retries": 0,
                 "targets": [{"provider": "vertex", "model": VERTEX_HAIKU}]},
                {"match": "vertex-bad", "retries": 0,
                 "targets": [{"provider": "vertex-bad", "model": VERTEX_HAIKU}]},
                {"match": "gpt-4o", "retries": 0, "targets": [{"provider": "azure"}]},
                {"match": "claude-sonnet-4-5", "retries": 0,
                 "targets": [{"provider": "anthropic"}],
                 "fallbacks": [{"provider": "bedrock",
                                "model": "anthropic.claude-sonnet-4-5-20250929-v1:0"}]},
            ],
        }  # fmt: skip
        log = tmp / "capgate.log"
        gw = start_capgate(tmp, config, log=log)
        try:
            yield Cloud(gw, main, bedrock, vertex, state, azure, log)
        finally:
            gw.close()


def _entry(gw: Capgate, key_name: str) -> dict[str, Any]:
    (entry,) = gw.ledger(key=key_name)
    return entry


def _cost(entry: dict[str, Any], per_million_in: str, per_million_out: str) -> Decimal:
    return (
        Decimal(per_million_in) * entry["input_tokens"]
        + Decimal(per_million_out) * entry["output_tokens"]
    ) / 1_000_000


# -- Bedrock ------------------------------------------------------------------------------


def test_bedrock_answers_an_anthropic_client(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client:
        message = client.messages.create(
            model="bedrock-sonnet", max_tokens=100,
            messages=[{"role": "user", "content": "hello mock:words=6"}],
        )  # fmt: skip
    assert message.usage.output_tokens == 6 and message.content[0].type == "text"
    sent = cloud.bedrock.last_request()
    # The model id is in the path, encoded (`:` as %3A), signed as AWS expects (the mock
    # checked the signature with botocore); the body has Bedrock's version and no model.
    assert sent.path.endswith("/invoke") and "claude-sonnet-4-5-20250929-v1:0" in sent.path
    assert sent.body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in sent.body and "stream" not in sent.body
    assert sent.headers["x-amz-security-token"] == AWS[2]
    assert sent.headers["x-team"] == "blue  team"  # the config's headers, signed too
    entry = _entry(cloud.gw, key_name)
    assert (entry["provider"], entry["upstream_model"]) == ("bedrock", BEDROCK_SONNET)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 6
    assert Decimal(entry["cost_usd"]) == _cost(entry, "3", "15")  # Sonnet 4.5's price


def test_bedrock_streams_to_an_anthropic_client(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with (
        anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client,
        client.messages.stream(
            model="bedrock-sonnet",
            max_tokens=100,
            messages=[{"role": "user", "content": "stream it mock:words=9"}],
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 9 and final.usage.output_tokens == 9
    assert cloud.bedrock.last_request().path.endswith("/invoke-with-response-stream")
    entry = _entry(cloud.gw, key_name)
    assert entry["outcome"] == "ok" and entry["output_tokens"] == 9 and entry["input_tokens"] > 0
    assert Decimal(entry["cost_usd"]) == _cost(entry, "3", "15")


def test_an_exception_inside_a_bedrock_stream_ends_it_charged_for_what_came(
    cloud: Cloud, key_name: str
) -> None:
    key = cloud.gw.create_key(key_name)
    with httpx.stream(
        "POST", cloud.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "bedrock-sonnet", "max_tokens": 100, "stream": True,
              "messages": [{"role": "user", "content": "hi mock:words=20 mock:cut_stream"}]},
    ) as response:  # fmt: skip
        body = response.read()
    assert response.status_code == 200
    assert body.count(b"event: content_block_delta") > 0 and b"event: message_stop" not in body
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\n")
    assert b"modelStreamErrorException: cut by mock" in last
    entry = _entry(cloud.gw, key_name)
    assert (
        entry["outcome"] == "error" and 0 < entry["output_tokens"] <= 100
    )  # bounded, as any cut stream
    assert Decimal(entry["cost_usd"]) == _cost(entry, "3", "15")


def test_bedrock_answers_an_openai_client_through_translation(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with openai.OpenAI(base_url=cloud.gw.url + "/v1", api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(
            model="bedrock-sonnet", max_tokens=50,
            messages=[{"role": "user", "content": "hi mock:words=4"}],
        )  # fmt: skip
        chunks = list(
            client.chat.completions.create(
                model="bedrock-sonnet",
                max_tokens=50,
                stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi mock:words=5"}],
            )
        )
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert [e["provider"] for e in cloud.gw.ledger(key=key_name)] == ["bedrock", "bedrock"]


def test_bedrock_throttling_reaches_each_client_in_its_dialect(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with (
        anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client,
        pytest.raises(anthropic.RateLimitError) as caught,
    ):
        client.messages.create(
            model="bedrock-sonnet", max_tokens=50,
            messages=[{"role": "user", "content": "hi mock:status=429"}],
        )  # fmt: skip
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "rate_limit_error" and "mock:status=429" in error["message"]
    with openai.OpenAI(base_url=cloud.gw.url + "/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="bedrock-sonnet", max_tokens=50,
                messages=[{"role": "user", "content": "hi mock:status=429"}],
            )  # fmt: skip
        with pytest.raises(openai.BadRequestError):  # ValidationException: 400
            client.chat.completions.create(
                model="bedrock-sonnet", max_tokens=50,
                messages=[{"role": "user", "content": "hi mock:status=400"}],
            )  # fmt: skip
    entries = cloud.gw.ledger(key=key_name)
    assert sorted(e["status"] for e in entries) == [400, 429, 429]
    assert all(Decimal(e["cost_usd"]) == 0 for e in entries)


def test_a_wrong_secret_is_refused_by_the_signature_check(cloud: Cloud, key_name: str) -> None:
    """The mock's botocore check is real: the same request signed with another secret is
    refused (403, passed on in the client's dialect)."""
    key = cloud.gw.create_key(key_name)
    response = httpx.post(
        cloud.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "bedrock-bad", "max_tokens": 20,
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_error" and "signature" in error["message"]


def test_anthropic_429_falls_over_to_bedrock(cloud: Cloud, key_name: str) -> None:
    faults = cloud.anthropic.url + "/mock/faults"
    httpx.post(faults, json={"status": 429, "count": -1}, timeout=10).raise_for_status()
    try:
        key = cloud.gw.create_key(key_name)
        with anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client:
            message = client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100,
                messages=[{"role": "user", "content": "fall over mock:words=8"}],
            )  # fmt: skip
    finally:
        httpx.post(faults, json={}, timeout=10).raise_for_status()
    assert message.usage.output_tokens == 8
    assert "v1:0" in cloud.bedrock.last_request().path
    entry = _entry(cloud.gw, key_name)
    assert entry["provider"] == "bedrock" and entry["attempts"] == 2
    assert entry["upstream_model"] == "anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert Decimal(entry["cost_usd"]) == _cost(entry, "3", "15") > 0


def test_no_aws_secret_in_the_log(cloud: Cloud) -> None:
    text = cloud.log.read_text()
    assert AWS[1] not in text and AWS[2] not in text and AZURE_KEY not in text


# -- Vertex AI ----------------------------------------------------------------------------


def test_vertex_answers_and_streams_with_one_token(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    before = cloud.vertex_state.exchanges
    with anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client:
        message = client.messages.create(
            model="vertex-haiku", max_tokens=100,
            messages=[{"role": "user", "content": "hello mock:words=5"}],
        )  # fmt: skip
        with client.messages.stream(
            model="vertex-haiku",
            max_tokens=100,
            messages=[{"role": "user", "content": "stream mock:words=7"}],
        ) as stream:
            text = "".join(stream.text_stream)
    assert message.usage.output_tokens == 5 and len(text.split()) == 7
    sent = cloud.vertex.last_request()
    assert sent.path == (
        "/v1/projects/mock-project/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_HAIKU}:streamRawPredict"
    )
    assert sent.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.body
    assert cloud.vertex_state.exchanges - before <= 1  # the token is cached
    entries = cloud.gw.ledger(key=key_name)
    assert [e["output_tokens"] for e in entries] == [7, 5]
    for entry in entries:
        assert entry["provider"] == "vertex" and entry["upstream_model"] == VERTEX_HAIKU
        assert Decimal(entry["cost_usd"]) == _cost(entry, "1", "5")  # Haiku 4.5's price


def test_vertex_errors_reach_each_client_in_its_dialect(cloud: Cloud, key_name: str) -> None:
    """Google's error body (`{"error": {"code", "message", "status"}}`) becomes
    Anthropic's, then each client's."""
    key = cloud.gw.create_key(key_name)
    response = httpx.post(
        cloud.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "vertex-haiku", "max_tokens": 20,
              "messages": [{"role": "user", "content": "hi mock:status=429"}]},
    )  # fmt: skip
    assert response.status_code == 429
    assert response.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Injected by mock:status=429."},
    }
    with (
        openai.OpenAI(base_url=cloud.gw.url + "/v1", api_key=key, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(
            model="vertex-haiku", max_tokens=50,
            messages=[{"role": "user", "content": "hi mock:status=429"}],
        )  # fmt: skip
    assert "mock:status=429" in str(caught.value)
    assert [e["status"] for e in cloud.gw.ledger(key=key_name)] == [429, 429]


def test_a_jwt_signed_with_another_key_gets_no_token(cloud: Cloud, key_name: str) -> None:
    """The mock checks the JWT with the account's public key: signed with another key, the
    exchange is refused, the client gets 502 and nothing reached Vertex (not charged)."""
    key = cloud.gw.create_key(key_name)
    before = len(cloud.vertex.requests())
    response = httpx.post(
        cloud.gw.url + "/v1/messages", headers={"x-api-key": key}, timeout=30,
        json={"model": "vertex-bad", "max_tokens": 20,
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "token exchange" in message and "invalid signature" in message
    assert len(cloud.vertex.requests()) == before  # no prediction was asked
    entry = _entry(cloud.gw, key_name)
    assert entry["status"] == 502 and Decimal(entry["cost_usd"]) == 0


# -- Azure OpenAI -------------------------------------------------------------------------


def test_azure_answers_and_streams_an_openai_client(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with openai.OpenAI(base_url=cloud.gw.url + "/v1", api_key=key, max_retries=0) as client:
        completion = client.chat.completions.create(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "hi mock:words=3"}]
        )
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o",
                max_tokens=50,
                stream=True,
                messages=[{"role": "user", "content": "hi mock:words=6"}],
            )
        )
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert all(c.usage is None for c in chunks)  # it did not ask for usage: not shown
    sent = cloud.azure.last_request()
    assert sent.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"} and sent.headers["api-key"] == AZURE_KEY
    assert sent.body["stream_options"] == {"include_usage": True}  # capgate asked for usage
    entries = cloud.gw.ledger(key=key_name)
    assert [e["output_tokens"] for e in entries] == [6, 3]
    for entry in entries:
        assert entry["provider"] == "azure" and entry["outcome"] == "ok"
        assert Decimal(entry["cost_usd"]) == _cost(entry, "2.50", "10")  # gpt-4o's price


def test_azure_answers_an_anthropic_client_through_translation(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    with anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client:
        message = client.messages.create(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "hi mock:words=4"}]
        )
        with client.messages.stream(
            model="gpt-4o",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi mock:words=5"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert message.usage.output_tokens == 4
    assert len(text.split()) == 5 and final.usage.output_tokens == 5
    sent = cloud.azure.last_request().body  # the port's chat_output_field: Azure's reasoning
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent  # models need it
    assert [e["output_tokens"] for e in cloud.gw.ledger(key=key_name)] == [5, 4]


def test_azure_errors_get_openai_shape(cloud: Cloud, key_name: str) -> None:
    key = cloud.gw.create_key(key_name)
    response = httpx.post(
        cloud.gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x mock:status=429"}]},
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "429"
    assert "exceeded" in error["message"]
    with (
        anthropic.Anthropic(base_url=cloud.gw.url, api_key=key, max_retries=0) as client,
        pytest.raises(anthropic.RateLimitError),
    ):
        client.messages.create(
            model="gpt-4o", max_tokens=50,
            messages=[{"role": "user", "content": "x mock:status=429"}],
        )  # fmt: skip
