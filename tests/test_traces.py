"""OpenTelemetry traces (docs/operations.md#traces): a real capgate with tracing on exports
to a real OTLP/HTTP receiver (aiohttp, in this test, on a loopback port), which decodes
each export with opentelemetry-proto. And with tracing off, the server never imports
OpenTelemetry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from capgate.keys import key_id_of
from conftest import Capgate, Upstream, gateway_config, start_capgate

PROMPT = "zebra-prompt-4711 never in a span"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver on a loopback port, in its own thread and loop."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.resources: list[dict[str, Any]] = []
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._ready.set()
        self._loop.run_forever()

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        export = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            self.bodies.append(body)
            for resource_spans in export.resource_spans:
                self.resources.append(_attributes(resource_spans.resource.attributes))
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def wait_for(self, request_ids: list[str], timeout: float = 15) -> list[Span]:
        """The spans once every request's server span and settlement have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            servers = _servers(spans)
            settled = sum(s.name == "capgate.settlement" for s in spans)
            if all(rid in servers for rid in request_ids) and settled >= len(request_ids) - 1:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"spans missing: {[s.name for s in self.spans]}")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _servers(spans: list[Span]) -> dict[str, Span]:
    """Server spans by capgate request id."""
    return {
        _attributes(s.attributes).get("capgate.request_id"): s
        for s in spans
        if s.kind == Span.SPAN_KIND_SERVER
    }


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def traced(
    receiver: Receiver, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Capgate]:
    config = gateway_config(upstream)
    config["server"] = {"retry_backoff_s": 0.01}
    config["providers"].append(
        {"name": "dead", "type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "d"}
    )
    config["models"].insert(
        0,
        {"match": "fall", "targets": [{"provider": "dead", "model": "claude-haiku-4-5"}],
         "fallbacks": [{"provider": "anthropic", "model": "claude-haiku-4-5"}], "retries": 0},
    )  # fmt: skip
    server = start_capgate(
        tmp_path_factory.mktemp("traces"),
        config,
        env={"CAPGATE_OTEL_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    yield server
    server.close()


def _messages(model: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": f"{PROMPT} mock:words=5"}],
    }


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return sorted(
        (s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id),
        key=lambda s: s.start_time_unix_nano,
    )


def test_a_request_is_a_server_span_with_its_admission_attempts_and_settlement(
    traced: Capgate, receiver: Receiver
) -> None:
    key = traced.create_key("traced", [{"metric": "cost_usd", "window": "day", "max": 5}])
    poor = traced.create_key("poor", [{"metric": "cost_usd", "window": "day", "max": 0.000001}])
    parent = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    with httpx.Client(base_url=traced.url, timeout=30) as http:
        plain = http.post(
            "/v1/messages",
            json=_messages("claude-haiku-4-5"),
            headers={"x-api-key": key, **parent},
        )
        assert plain.status_code == 200, plain.text
        chat = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": f"{PROMPT} mock:words=6"}],
        }
        with http.stream(
            "POST", "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"}
        ) as streamed:
            assert streamed.status_code == 200
            assert b"[DONE]" in streamed.read()
        fallback = http.post("/v1/messages", json=_messages("fall"), headers={"x-api-key": key})
        assert fallback.status_code == 200, fallback.text
        refused = http.post(
            "/v1/messages", json=_messages("claude-haiku-4-5"), headers={"x-api-key": poor}
        )
        assert refused.status_code in (402, 403, 429), refused.text
    ids = [r.headers["x-capgate-request-id"] for r in (plain, streamed, fallback, refused)]
    spans = receiver.wait_for(ids)
    assert {"service.name": "capgate"}.items() <= receiver.resources[0].items()
    servers = _servers(spans)
    ledger = {e["request_id"]: e for e in traced.ledger(key="traced")}

    for request_id, model, provider, upstream_model in (
        (ids[0], "claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
        (ids[1], "gpt-4o-mini", "openai", "gpt-4o-mini"),
        (ids[2], "fall", "anthropic", "claude-haiku-4-5"),
    ):
        server = servers[request_id]
        attrs = _attributes(server.attributes)
        entry = ledger[request_id]
        assert server.kind == Span.SPAN_KIND_SERVER
        assert attrs["capgate.key_id"] == key_id_of(key)
        assert attrs["gen_ai.request.model"] == model
        assert attrs["capgate.upstream_model"] == upstream_model == entry["upstream_model"]
        assert attrs["capgate.provider"] == entry["provider"] == provider
        assert attrs["http.response.status_code"] == 200
        assert attrs["capgate.outcome"] == "ok"
        assert attrs["gen_ai.usage.output_tokens"] == entry["output_tokens"] > 0
        assert attrs["gen_ai.usage.input_tokens"] == entry["input_tokens"]
        assert attrs["capgate.cost_usd"] == entry["cost_usd"]
        children = _children(spans, server)
        names = [c.name for c in children]
        attempts = [c for c in children if c.name == "capgate.attempt"]
        assert names[0] == "capgate.admission" and names.count("capgate.settlement") == 1
        assert len(attempts) == (2 if model == "fall" else 1)
        assert all(server.start_time_unix_nano <= c.start_time_unix_nano for c in children)
        last = _attributes(attempts[-1].attributes)
        assert last["http.response.status_code"] == 200
        assert last["capgate.upstream_model"] == upstream_model
        assert attempts[-1].end_time_unix_nano > attempts[-1].start_time_unix_nano

    # The client's traceparent is continued: same trace, the client's span as parent.
    assert servers[ids[0]].trace_id.hex() == TRACE_ID
    assert servers[ids[0]].parent_span_id.hex() == CLIENT_SPAN
    assert servers[ids[1]].trace_id.hex() != TRACE_ID
    assert servers[ids[1]].name == "POST /v1/chat/completions"
    assert _attributes(servers[ids[1]].attributes)["capgate.stream"] is True

    # The fallback: the dead target's attempt failed (502), then the fallback answered.
    first, second = [c for c in _children(spans, servers[ids[2]]) if c.name == "capgate.attempt"]
    assert _attributes(first.attributes)["capgate.provider"] == "dead"
    assert _attributes(first.attributes)["http.response.status_code"] == 502
    assert first.status.code == Status.STATUS_CODE_ERROR
    assert _attributes(second.attributes)["capgate.provider"] == "anthropic"
    assert first.end_time_unix_nano <= second.start_time_unix_nano
    assert _attributes(servers[ids[2]].attributes)["capgate.attempts"] == 2

    # The refusal: its admission failed, nothing went upstream, nothing to settle.
    refusal = servers[ids[3]]
    attrs = _attributes(refusal.attributes)
    assert attrs["capgate.outcome"] == "refused"
    assert attrs["capgate.refusal"] == refused.headers["x-capgate-refusal"]
    assert attrs["capgate.key_id"] == key_id_of(poor)
    assert attrs["http.response.status_code"] == refused.status_code
    (admission,) = _children(spans, refusal)
    assert admission.name == "capgate.admission"
    assert admission.status.code == Status.STATUS_CODE_ERROR

    # Never a prompt, an answer's text, a key or an upstream's key in the export.
    everything = b"".join(receiver.bodies)
    for secret in (PROMPT, key, poor, "up-key-a", "up-key-o", traced.admin_key):
        assert secret.encode() not in everything
    assert b"zebra" not in everything


_PROBE = """
import asyncio, json, sys
from capgate.bootstrap import build
from capgate.config import parse_config

async def main() -> None:
    server = {"database_url": "sqlite:///" + sys.argv[1], "admin_key": "sk-cg-admin-probe-0000"}
    if sys.argv[2]:
        server["otel_endpoint"] = sys.argv[2]
    built = await build(parse_config({"server": server}, {}), demo=True)
    from aiohttp.test_utils import TestClient, TestServer
    async with TestClient(TestServer(built.app)) as client:
        body = {"model": "claude-haiku-4-5", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]}
        answer = await client.post("/v1/messages", json=body,
                                   headers={"x-api-key": built.keys.demo_key})
        assert answer.status == 200, await answer.text()
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry") or m == "capgate.traces")
    print(json.dumps(loaded))

asyncio.run(main())
"""


@pytest.mark.parametrize("on", [False, True])
def test_with_tracing_off_opentelemetry_is_never_imported(tmp_path: Path, on: bool) -> None:
    """A server built and answering a request with tracing off has not loaded
    OpenTelemetry (nor capgate.traces); on, it has (the probe can see it)."""
    endpoint = "http://127.0.0.1:9" if on else ""
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "probe.db"), endpoint],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    if on:
        assert "capgate.traces" in loaded and "opentelemetry.sdk.trace" in loaded
    else:
        assert loaded == []


def test_tracing_on_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """OpenTelemetry missing (made unimportable here): the start stops with the pip line."""
    blocked = "import sys; sys.modules['opentelemetry'] = None\n" + _PROBE
    run = subprocess.run(
        [sys.executable, "-c", blocked, str(tmp_path / "probe.db"), "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "pip install 'capgate[otel]'" in run.stderr
