"""The pure parts of Bedrock's Converse support and AWS credentials, without a server:
request and answer translation (`providers/converse.py`), the stream converter
(`converse_stream.py`), the credential chain and the refresher (`aws_credentials.py`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from capgate.config import ConfigError
from capgate.errors import UpstreamFailed
from capgate.mock.bedrock_converse import converse_events
from capgate.mock.generation import complete
from capgate.provider_config import ProviderConfig
from capgate.providers.aws_credentials import RefreshingCredentials, resolve
from capgate.providers.aws_sources import (
    ContainerSource,
    CredentialError,
    Fetched,
    IMDSSource,
    ProcessSource,
    StaticSource,
    WebIdentitySource,
    parse_sts,
)
from capgate.providers.converse import Untranslatable, converse_to_message, messages_to_converse
from capgate.providers.converse_stream import ConverseToSSE
from capgate.providers.eventstream import encode
from capgate.providers.sigv4 import Credentials
from capgate.wire.sse import EventSplitter

# -- requests -------------------------------------------------------------------------------

TOOL = {"name": "f", "description": "d", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (  # a string becomes one text block; the config fields move to inferenceConfig
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "top_k": 3},
            {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
             "inferenceConfig": {"maxTokens": 5}, "additionalModelRequestFields": {"top_k": 3}},
        ),
        (  # tool use and results, tool_choice by name, an error result
            {"messages": [
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                     "content": [{"type": "text", "text": "boom"}]}]}],
             "tools": [TOOL], "tool_choice": {"type": "tool", "name": "f"}},
            {"messages": [
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "boom"}],
                                    "status": "error"}}]}],
             "toolConfig": {"tools": [{"toolSpec": {"name": "f", "description": "d",
                                                    "inputSchema": {"json": {"type": "object"}}}}],
                            "toolChoice": {"tool": {"name": "f"}}}},
        ),
        (  # thinking blocks and the thinking setting, empty text dropped, cache points
            {"messages": [{"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": ""},
                {"type": "text", "text": "ok", "cache_control": {"type": "ephemeral"}}]}],
             "thinking": {"type": "enabled", "budget_tokens": 1024}},
            {"messages": [{"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "hm", "signature": "sig"}}},
                {"text": "ok"}, {"cachePoint": {"type": "default"}}]}],
             "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}}},
        ),
    ],
)  # fmt: skip
def test_requests_become_converse_bodies(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert messages_to_converse(given, "anthropic.claude-sonnet-4-5-20250929-v1:0") == expected


# What Claude Code sends besides a plain request (CLIENTS.md): the whole of it.
CLAUDE_CODE = {
    "model": "claude-sonnet-4-6", "stream": True, "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code."},
               {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ],
    "tools": [TOOL], "metadata": {"user_id": '{"device_id":"d","session_id":"s"}'},
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
}  # fmt: skip
CLAUDE_CODE_SENT = {
    "messages": [{"role": "user", "content": [{"text": "hi"}]},
                 {"role": "assistant", "content": [{"text": "hello"}]},
                 {"role": "user", "content": [{"text": "again"}]}],
    "system": [{"text": "You are Claude Code."}, {"text": "Rules."},
               {"cachePoint": {"type": "default"}}, {"text": "Be terse."}],
    "inferenceConfig": {"maxTokens": 32000},
    "toolConfig": {"tools": [{"toolSpec": {"name": "f", "description": "d",
                                           "inputSchema": {"json": {"type": "object"}}}}]},
}  # fmt: skip


def test_what_claude_code_sends_goes_to_an_anthropic_model() -> None:
    """`context_management`, `output_config.effort` and `metadata` dropped; the system
    turn joins the system prompt; `thinking` and the betas to the Anthropic model."""
    betas = ["interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
    sent = messages_to_converse(CLAUDE_CODE, "us.anthropic.claude-sonnet-4-6", betas)
    assert sent == CLAUDE_CODE_SENT | {
        "additionalModelRequestFields": {
            "thinking": {"type": "adaptive", "display": "omitted"}, "anthropic_beta": betas,
        }
    }  # fmt: skip


def test_what_claude_code_sends_goes_to_amazon_nova() -> None:
    """Nova has no `thinking` switch and reads no Anthropic beta: both left out."""
    sent = messages_to_converse(CLAUDE_CODE, "us.amazon.nova-lite-v1:0", ["interleaved-x"])
    assert sent == CLAUDE_CODE_SENT


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"messages": [], "container": "c"}, "container"),
        ({"messages": [], "tools": [TOOL], "tool_choice": {"type": "none"}}, "tool_choice"),
        ({"messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]}, "tools.0"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/bmp", "data": ""}}]}]}, "media_type"),
        ({"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "tools"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"messages": [{"role": "system", "content": [{"type": "image"}]}]},
         "messages.0.content.0: only text"),
        ({"messages": [{"role": "system", "content": 3}]}, "messages.0.content"),
        # structured output would change the answer: refused, not dropped
        ({"messages": [], "output_config": {"effort": "low", "format": {"type": "json_schema"}}},
         "output_config.format"),
        ({"messages": [], "output_config": "high"}, "output_config"),
    ],
)  # fmt: skip
def test_what_converse_cannot_carry_is_named(given: dict[str, Any], named: str) -> None:
    with pytest.raises(Untranslatable, match=named):
        messages_to_converse(given)


# -- answers ----------------------------------------------------------------------------------


def test_an_answer_becomes_an_anthropic_message() -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hm", "signature": "s"}}},
            {"text": "Calling."},
            {"toolUse": {"toolUseId": "tu1", "name": "f", "input": {"a": 1}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 44,
                  "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10},
    }  # fmt: skip
    message = converse_to_message(answer, "m", "req-1")
    assert message["id"] == "msg_bdrk_req1" and message["model"] == "m"
    assert message["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": "s"},
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 10, "output_tokens": 4,
        "cache_read_input_tokens": 20, "cache_creation_input_tokens": 10,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("max_tokens", "max_tokens"), ("guardrail_intervened", "refusal"),
     ("content_filtered", "refusal"), ("stop_sequence", "stop_sequence"), ("new", "end_turn")],
)  # fmt: skip
def test_stop_reasons(reason: str, expected: str) -> None:
    assert converse_to_message({"stopReason": reason}, "m")["stop_reason"] == expected


# -- streams ----------------------------------------------------------------------------------


def _events(sse: bytes) -> list[dict[str, Any]]:
    blocks = EventSplitter().feed(sse).split(b"\n\n")
    return [orjson.loads(b.split(b"data: ", 1)[1]) for b in blocks if b.strip()]


@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_a_stream_becomes_anthropic_events_in_any_pieces(piece: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi mock:words=3"}]}
    data = b"".join(converse_events(complete(body, None)))
    converter = ConverseToSSE("m")
    out = b"".join(converter.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    out += converter.finish()
    events = _events(out)
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(e["delta"]["text"] for e in events[2:5]) == "lorem ipsum dolor"
    assert events[6]["delta"]["stop_reason"] == "end_turn"
    assert events[6]["usage"]["output_tokens"] == 3 and events[6]["usage"]["input_tokens"] > 0


def test_a_tool_call_and_reasoning_stream() -> None:
    def event(name: str, payload: dict[str, Any]) -> bytes:
        return encode({":event-type": name, ":message-type": "event"}, orjson.dumps(payload))

    data = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"reasoningContent": {"text": "hm"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"reasoningContent": {"signature": "sig"}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockStart", {"contentBlockIndex": 1,
                                    "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a"'}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ":1}"}}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 2}}),
    ])  # fmt: skip
    events = _events(ConverseToSSE("m").feed(data))
    assert events[1]["content_block"]["type"] == "thinking"
    assert events[2]["delta"] == {"type": "thinking_delta", "thinking": "hm"}
    assert events[3]["delta"] == {"type": "signature_delta", "signature": "sig"}
    assert events[5]["content_block"] == {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    partial = "".join(e["delta"]["partial_json"] for e in events if e.get("index") == 1
                      and e["type"] == "content_block_delta")  # fmt: skip
    assert orjson.loads(partial) == {"a": 1}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_an_exception_in_the_stream_and_a_broken_frame() -> None:
    error = encode(
        {":exception-type": "throttlingException", ":message-type": "exception"},
        b'{"message":"slow down"}',
    )
    events = _events(ConverseToSSE("m").feed(error))
    assert events[0]["error"] == {
        "type": "rate_limit_error",
        "message": "throttlingException: slow down",
    }
    with pytest.raises(UpstreamFailed, match="broken stream"):
        ConverseToSSE("m").feed(b"\x00\x00\x00\x20" + b"\x00" * 40)
    converter = ConverseToSSE("m")
    converter.feed(error[:10])
    with pytest.raises(UpstreamFailed, match="inside a message"):
        converter.finish()


# -- the chain ------------------------------------------------------------------------------


def _config(**fields: Any) -> ProviderConfig:
    return ProviderConfig(name="b", type="bedrock", region="us-east-1", **fields)


def test_the_chain_order(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    env_keys = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s"}
    web = {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
    container = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws/credentials").write_text(
        "[default]\naws_access_key_id=AKIAFILE\naws_secret_access_key=s\n"
    )
    both = {**home, **env_keys, **web, **container}
    config_keys = _config(aws_access_key_id="AKIACONF", aws_secret_access_key="s")
    assert resolve(config_keys, both).name == "the config's keys"
    assert resolve(_config(), both).name == "the environment"
    assert isinstance(resolve(_config(), {**home, **web, **container}), WebIdentitySource)
    assert resolve(_config(), {**home, **container}).name == "profile 'default'"
    (tmp_path / ".aws/credentials").unlink()
    assert isinstance(resolve(_config(), {**home, **container}), ContainerSource)
    assert isinstance(resolve(_config(), home), IMDSSource)
    with pytest.raises(ConfigError, match="no AWS credentials"):
        resolve(_config(), {**home, "AWS_EC2_METADATA_DISABLED": "true"})


def test_profiles(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[profile proc]\ncredential_process = /bin/echo {}\n"
        "[profile web]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = /t\n"
        "[profile sso]\nsso_session = corp\n"
    )
    env = {"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(config)}
    assert isinstance(resolve(_config(aws_profile="proc"), env), ProcessSource)
    assert isinstance(resolve(_config(aws_profile="web"), env), WebIdentitySource)
    with pytest.raises(ConfigError, match="SSO"):
        resolve(_config(aws_profile="sso"), env)
    with pytest.raises(ConfigError, match="'nobody' has no credentials"):
        resolve(_config(aws_profile="nobody"), env)
    with pytest.raises(ConfigError, match="AWS_PROFILE 'nobody'"):
        resolve(_config(), {**env, "AWS_PROFILE": "nobody"})


def test_a_plain_http_container_endpoint_must_be_local() -> None:
    with pytest.raises(ConfigError, match="neither https nor a loopback"):
        resolve(_config(), {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://example.com/creds"})
    ContainerSource("https://example.com/creds", None, None)  # https: fine


def test_config_needs_both_keys_or_neither() -> None:
    with pytest.raises(ValueError, match="aws_secret_access_key"):
        _config(aws_access_key_id="AKIA")
    _config()  # the chain finds them
    with pytest.raises(ValueError, match="api: converse is for bedrock providers only"):
        ProviderConfig(name="a", type="anthropic", api="converse")


def test_sts_answers() -> None:
    body = (
        b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>"
        b"<SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>"
        b"<Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>"
        b"</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
    )
    fetched = parse_sts(body, "sts")
    assert fetched.credentials == Credentials("ASIA1", "s", "t")
    assert fetched.expires == 1893456000.0
    with pytest.raises(CredentialError, match="DTD"):
        parse_sts(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "sts")
    with pytest.raises(CredentialError, match="no credentials"):
        parse_sts(b"<x/>", "sts")


# -- refreshing -----------------------------------------------------------------------------


class FakeSource:
    """Hands out numbered credentials living `life` s of a fake clock; can fail."""

    name = "the fake source"

    def __init__(self, clock: list[float], life: float) -> None:
        self.clock = clock
        self.life = life
        self.fetches = 0
        self.failing = False
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> Fetched:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise CredentialError("the fake source: down")
        self.fetches += 1
        return Fetched(Credentials(f"K{self.fetches}", "s"), self.clock[0] + self.life)

    async def close(self) -> None:
        return None


def test_refresh_ahead_in_the_background_single_flight(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        now = [1000.0]
        source = FakeSource(now, 3600.0)
        creds = RefreshingCredentials("b", source, clock=lambda: now[0])
        first = await asyncio.gather(*(creds.get() for _ in range(5)))
        assert {c.access_key_id for c in first} == {"K1"} and source.fetches == 1  # one fetch
        now[0] += 3600 - 299  # inside the 5 minutes before expiry
        source.gate = asyncio.Event()
        assert (await creds.get()).access_key_id == "K1"  # not blocked by the refresh
        assert (await creds.get()).access_key_id == "K1"  # nor a second refresh started
        source.gate.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert (await creds.get()).access_key_id == "K2" and source.fetches == 2
        # A refresh that fails keeps valid credentials, with a warning; expired: a 503.
        now[0] += 3600 - 299
        source.failing = True
        with caplog.at_level(logging.WARNING):
            assert (await creds.get()).access_key_id == "K2"
            await asyncio.sleep(0)
        assert "the current ones are kept" in caplog.text
        assert (await creds.get()).access_key_id == "K2"  # kept, not retried at once
        assert source.fetches == 2
        now[0] += 300
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(UpstreamFailed, match='unavailable for provider "b"') as caught,
        ):
            await creds.get()
        assert caught.value.status == 503 and caught.value.sent is False
        assert "expired and could not be refreshed" in caplog.text  # the details: logged
        source.failing = False
        with pytest.raises(UpstreamFailed):  # within the retry backoff: not asked again
            await creds.get()
        now[0] += 10
        assert (await creds.get()).access_key_id == "K3"

    asyncio.run(run())


def test_static_keys_are_never_refreshed() -> None:
    async def run() -> None:
        source = StaticSource("the config's keys", Credentials("AKIA", "s"))
        creds = RefreshingCredentials("b", source, clock=lambda: 1e12)
        assert (await creds.get()).access_key_id == "AKIA"
        assert (await creds.get()).access_key_id == "AKIA" and creds.fetches == 1

    asyncio.run(run())
