"""capgate's SigV4 signer (providers/sigv4.py) against botocore's, an independent
implementation, on many requests; and AWS's published test vector."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.providers import sigv4
from cloudmocks import botocore_signature, sigv4_verifier

WHEN = datetime(2026, 12, 5, 7, 8, 9, tzinfo=UTC)
CREDS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def _signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rsplit("Signature=", 1)[1]


def test_aws_published_vector_get_vanilla() -> None:
    """AWS's Signature Version 4 test suite, `get-vanilla`."""
    when = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
    added = sigv4.sign(
        CREDS, "us-east-1", "service", "GET", "example.amazonaws.com", "/", b"", when
    )
    assert added["x-amz-date"] == "20150830T123600Z"
    assert added["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_a_bedrock_model_path_is_encoded_twice() -> None:
    path = "/model/" + quote("us.anthropic.claude-sonnet-4-5-20250929-v1:0", safe="") + "/invoke"
    assert sigv4.canonical_uri(path).endswith("v1%253A0/invoke")


segment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12)
header_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=30
).map(lambda v: v.replace(":", ""))


@settings(max_examples=300, deadline=None)
@given(
    segments=st.lists(segment, min_size=1, max_size=4),
    query=st.dictionaries(segment.filter(bool), segment, max_size=3),
    headers=st.dictionaries(
        st.sampled_from(["content-type", "accept", "x-amz-target", "x-custom", "x-amz-meta-a"]),
        header_value,
        max_size=4,
    ),
    body=st.binary(max_size=200),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    region=st.sampled_from(["us-east-1", "eu-west-3", "ap-northeast-1"]),
    service=st.sampled_from(["bedrock", "service", "execute-api"]),
    token=st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    host=st.sampled_from(["bedrock-runtime.us-east-1.amazonaws.com", "127.0.0.1:8123"]),
)
def test_same_signature_as_botocore(
    segments: list[str],
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    method: str,
    region: str,
    service: str,
    token: str | None,
    host: str,
) -> None:
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    creds = sigv4.Credentials(CREDS.access_key_id, CREDS.secret_access_key, token)
    added = sigv4.sign(creds, region, service, method, host, path, body, WHEN, headers, query)
    sent = {**headers, "x-amz-date": added["x-amz-date"]}
    if token is not None:
        sent["x-amz-security-token"] = token
    boto = BotoCredentials(creds.access_key_id, creds.secret_access_key, token)
    expected = botocore_signature(
        boto, region, service, method, f"https://{host}{path}", sent, body,
        added["x-amz-date"], params=query,
    )  # fmt: skip
    assert _signature(added) == expected


def test_the_verifier_refuses_a_changed_request() -> None:
    """The mock's check (botocore) refuses a body or header changed after signing, a
    wrong secret and a wrong region: it is a real check."""
    path = "/model/" + quote("anthropic.claude-haiku-4-5-20251001-v1:0", safe="") + "/invoke"
    host = "127.0.0.1:9000"
    now = datetime.now(UTC)
    added = sigv4.sign(
        CREDS, "us-east-1", "bedrock", "POST", host, path, b"{}", now, {"content-type": "x/y"}
    )
    headers = {"host": host, "content-type": "x/y", **added}
    url = f"http://{host}{path}"
    good = sigv4_verifier(CREDS.access_key_id, CREDS.secret_access_key, None, "us-east-1")
    assert good("POST", url, headers, b"{}") is None
    assert good("POST", url, headers, b"{ }") == "signature mismatch"
    assert good("POST", url, {**headers, "content-type": "x/z"}, b"{}") == "signature mismatch"
    assert good("POST", url.replace("%3A", "%3B"), headers, b"{}") == "signature mismatch"
    wrong_secret = sigv4_verifier(CREDS.access_key_id, "other", None, "us-east-1")
    assert wrong_secret("POST", url, headers, b"{}") == "signature mismatch"
    wrong_region = sigv4_verifier(CREDS.access_key_id, CREDS.secret_access_key, None, "eu-west-1")
    assert "scope" in (wrong_region("POST", url, headers, b"{}") or "")


def test_credentials_never_show_the_secret() -> None:
    assert CREDS.secret_access_key not in repr(CREDS)
    assert CREDS.secret_access_key not in str(CREDS)


@pytest.mark.parametrize("value", ["  a   b  ", "a\tb"])
def test_header_values_are_trimmed_and_folded(value: str) -> None:
    request, _ = sigv4.canonical_request("POST", "/", {}, {"X-A": value, "host": "h"}, "0")
    assert "x-a:a b\n" in request
