"""Structured logs of a real server: one JSON line per request (refusals too), per admin
action, per upstream failure and breaker change — and never a key, cookie or prompt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from logging.handlers import QueueListener
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, cast

import anthropic
import httpx
import orjson
import pytest
import yaml

from capgate.config import ConfigError, load_config, with_overrides
from capgate.logs import AccessLog, Line, configure, scrub
from conftest import ADMIN_KEY, ROOT, Upstream, _stop, gateway_config

SONNET = "claude-sonnet-4-5"
PROMPT_SECRET = "PROMPT-SECRET-7f3a91"  # in every prompt: must never reach a log line


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log
        self.admin = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def text(self) -> str:
        return self.log.read_text("utf-8")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {event} line with {fields} in:\n{self.text()}")


def serve(tmp_path: Path, config: dict[str, Any], *args: str, **env: str) -> Server:
    """A capgate subprocess whose stderr (its logs) goes to a file the test reads."""
    config_path = tmp_path / "capgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "capgate", "serve", "--config", str(config_path), "--port", "0",
             "--database-url", f"sqlite:///{tmp_path / 'capgate.db'}", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
            env={**_environ(), "CAPGATE_ADMIN_KEY": ADMIN_KEY, **env},
        )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("capgate listening on "):
            return Server(line.split()[-1], proc, log)
    _stop(proc)
    raise AssertionError("capgate did not start:\n" + log.read_text())


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_LOG")}


@pytest.fixture
def json_server(upstream: Upstream, tmp_path: Path) -> Iterator[Server]:
    config = gateway_config(upstream)
    config["server"] = {"retries": 0}
    config["providers"][0].update(cooldown_after=2, cooldown_s=60)
    server = serve(tmp_path, config, "--log-format", "json")
    try:
        yield server
    finally:
        server.admin.close()
        _stop(server.proc)


def test_json_lines_for_requests_refusals_admin_actions_and_upstream_failures(
    json_server: Server, request: pytest.FixtureRequest
) -> None:
    server = json_server
    created = server.admin.post(
        "/admin/keys",
        json={"name": "logged", "limits": [{"metric": "requests", "window": "day", "max": 5}]},
    )
    assert created.status_code == 201, created.text
    raw_key = created.json()["key"]
    admin_line = server.wait_for("admin", method="POST", route="/admin/keys")
    assert admin_line["actor"] == "admin" and admin_line["status"] == 201
    assert admin_line["level"] == "info" and admin_line["logger"] == "capgate.admin"

    client = anthropic.Anthropic(base_url=server.url, api_key=raw_key, max_retries=0)
    request.addfinalizer(client.close)
    prompt = [{"role": "user", "content": f"hello {PROMPT_SECRET}"}]
    answer = client.messages.with_raw_response.create(model=SONNET, max_tokens=50, messages=prompt)
    request_id = answer.headers["x-capgate-request-id"]
    line = server.wait_for("request", request_id=request_id)
    assert line["key"] == "logged" and line["model"] == SONNET and line["provider"] == "anthropic"
    assert line["status"] == 200 and line["outcome"] == "ok" and line["stream"] is False
    assert line["endpoint"] == "messages" and line["logger"] == "capgate.access"
    ledger = server.admin.get("/admin/requests", params={"key": "logged"}).json()
    entry = next(e for e in ledger["items"] if e["request_id"] == request_id)
    assert line["cost_usd"] == entry["cost_usd"]  # exact, the ledger's own figure
    assert line["input_tokens"] > 0 and 0 < line["ttft_ms"] <= line["latency_ms"]

    with client.messages.stream(model=SONNET, max_tokens=50, messages=prompt) as stream:
        streamed_id = stream.response.headers["x-capgate-request-id"]
        stream.until_done()
    line = server.wait_for("request", request_id=streamed_id)
    assert line["stream"] is True and line["ttft_ms"] > 0 and line["outcome"] == "ok"

    # Upstream failures: a warning each, the breaker opens after two, closes on a success.
    failing = [{"role": "user", "content": f"{PROMPT_SECRET} mock:status=503"}]
    for _ in range(2):
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(model=SONNET, max_tokens=50, messages=failing)
    failed = server.wait_for("upstream_failed", provider="anthropic", failures_in_a_row=2)
    assert failed["level"] == "warning" and failed["error"] == "upstream 503"
    assert server.wait_for("breaker_open", provider="anthropic")["cooldown_s"] == 60
    error_line = server.wait_for("request", status=503)
    assert error_line["outcome"] == "error" and error_line["error"] == "upstream 503"
    client.messages.create(model=SONNET, max_tokens=50, messages=prompt)
    assert server.wait_for("breaker_closed", provider="anthropic")["level"] == "warning"

    # The sixth request of the day is refused: its line says why.
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model=SONNET, max_tokens=50, messages=prompt)
    refused_id = refused.value.response.headers["x-capgate-request-id"]
    line = server.wait_for("request", request_id=refused_id)
    assert line["outcome"] == "refused" and line["reason"] == "limit_exceeded"
    assert line["status"] == refused.value.status_code and line["key"] == "logged"

    # A wrong key: refused before any key is known.
    bad_key = "sk-cg-aaaaaaaaaaaa-WRONG-SECRET-123456"
    bad = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": bad_key, "anthropic-version": "2023-06-01"},
        json={"model": SONNET, "max_tokens": 5, "messages": prompt},
    )
    assert bad.status_code == 401
    server.wait_for("request", status=401, reason="authentication_error")

    # A dashboard session changes a key: the admin line names the actor and the target.
    session = httpx.Client(base_url=server.url, timeout=30)
    login = session.post("/dashboard/login", json={"password": ADMIN_KEY})
    assert login.status_code == 200, login.text
    csrf = login.json()
    cookie = next(iter(session.cookies.values()))
    paused = session.post(
        "/admin/keys/logged/pause", headers={csrf["csrf_header"]: csrf["csrf_token"]}
    )
    assert paused.status_code == 200, paused.text
    line = server.wait_for("admin", route="/admin/keys/{name}/pause")
    assert line["target"] == "logged" and line["actor"] == csrf["actor"] and line["status"] == 200
    session.close()

    text = server.text()
    for secret in (raw_key, ADMIN_KEY, bad_key, cookie, csrf["csrf_token"], PROMPT_SECRET,
                   "up-key-a", "up-key-o"):  # fmt: skip
        assert secret not in text, f"{secret[:12]}... leaked into the logs"
    assert all(line["ts"].endswith("Z") for line in server.lines())


def test_text_format_and_level_from_the_environment(upstream: Upstream, tmp_path: Path) -> None:
    server = serve(tmp_path, gateway_config(upstream), CAPGATE_LOG_LEVEL="warning")
    try:
        created = server.admin.post("/admin/keys", json={"name": "quiet", "limits": []})
        with anthropic.Anthropic(
            base_url=server.url, api_key=created.json()["key"], max_retries=0
        ) as client:
            client.messages.create(
                model=SONNET, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
            with pytest.raises(anthropic.InternalServerError):
                failing = [{"role": "user", "content": "mock:status=500"}]
                client.messages.create(model=SONNET, max_tokens=5, messages=failing)
        deadline = time.monotonic() + 10
        while "upstream_failed" not in server.text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.admin.close()
        _stop(server.proc)
    text = server.text()
    assert " WARNING capgate.upstream: upstream_failed provider=anthropic " in text, text
    assert "capgate.access" not in text and "capgate.admin" not in text  # info: off


def test_log_settings_precedence_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  log_level: error\n  log_format: json\n")
    from_file = with_overrides(load_config(str(path), {}), {}, {})
    assert (from_file.server.log_level, from_file.server.log_format) == ("error", "json")
    env = {"CAPGATE_LOG_LEVEL": "DEBUG", "CAPGATE_LOG_FORMAT": "text"}
    from_env = with_overrides(load_config(str(path), {}), env, {})
    assert (from_env.server.log_level, from_env.server.log_format) == ("debug", "text")
    flags = with_overrides(load_config(str(path), {}), env, {"log_level": "warning"})
    assert flags.server.log_level == "warning"
    with pytest.raises(ConfigError, match="log_format"):
        with_overrides(load_config(None, {}), {"CAPGATE_LOG_FORMAT": "xml"}, {})


def test_a_line_renders_as_text_and_hides_what_follows_an_error_colon() -> None:
    line = Line("request", {"key": "a b", "status": 200, "ttft_ms": None, "model": "m"})
    assert str(line) == 'request key="a b" status=200 model=m'
    assert scrub("upstream 400: your prompt hello was bad") == "upstream 400"
    assert scrub("auth failed for sk-cg-abcdefghijkl-SECRET") == "auth failed for sk-cg-…"
    assert scrub("Bearer abcdef123 refused") == "Bearer … refused"


def test_a_flagged_entry_is_a_warning_line(json_server: Server) -> None:
    """Usage above the reservation is charged as reported and flagged; its request line is
    a warning, so an operator hears of it without opening the dashboard."""
    created = json_server.admin.post("/admin/keys", json={"name": "over", "limits": []})
    with anthropic.Anthropic(
        base_url=json_server.url, api_key=created.json()["key"], max_retries=0
    ) as client:
        message = client.messages.create(
            model=SONNET, max_tokens=5,
            messages=[{"role": "user", "content": "mock:input_tokens=5000000"}],
        )  # fmt: skip
    assert message.usage.input_tokens == 5_000_000
    line = json_server.wait_for("request", outcome="ok", key="over")
    assert line["level"] == "warning"
    assert line["flags"] == ["over_reservation"]


class _CountingStream:
    """A stream that keeps what is written and counts the writes."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _configured(stream: _CountingStream) -> Iterator[QueueListener]:
    """`configure` writing to `stream` (its writer thread), and logging as it was after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    listener = configure("info", "text", stream=cast(IO[str], stream))
    try:
        yield listener
    finally:
        listener.stop()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = (
            flags
        )


def test_queued_lines_are_written_together_in_order_and_none_is_lost() -> None:
    """The writer thread writes every line queued while it was busy in one write (one
    system call for many lines under load), keeps their order, writes a line whose
    formatting fails as logging's error report and goes on, and writes everything queued
    when it is stopped."""
    stream = _CountingStream()
    with _configured(stream) as listener:
        handler = listener.handlers[0]
        log = logging.getLogger("capgate.test_batches")
        assert handler.lock is not None
        with handler.lock:  # the thread is busy: the lines queue up meanwhile
            for i in range(50):
                log.info("line %d", i)
            log.info("broken %d", "not a number")  # its formatting fails
            for i in range(50, 100):
                log.info("line %d", i)
            time.sleep(0.05)
    text = "".join(stream.parts)
    numbers = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if " line " in line]
    assert numbers == list(range(100))
    assert len(stream.parts) <= 3, len(stream.parts)  # one write per line before


def test_a_request_line_is_logged_after_the_current_step() -> None:
    """The access lines of the requests that end in one loop turn are logged at the next
    turn, after their answers have been written in this one, in order, by one callback
    (not one each)."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = logging.getLogger("capgate.test_access_after")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(Keep())
    access = AccessLog(log)
    outcomes = [SimpleNamespace(flags=(), n=n) for n in range(3)]  # what finished() reads
    callbacks = 0

    async def finish() -> int:
        nonlocal callbacks
        loop = asyncio.get_running_loop()
        call_soon = loop.call_soon

        def counted(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
            nonlocal callbacks
            callbacks += getattr(callback, "__self__", None) in (access, log)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counted  # type: ignore[method-assign]
        for outcome in outcomes:  # three requests end in one loop turn
            access.finished(cast(Any, None), cast(Any, outcome))
        during = len(seen)
        await asyncio.sleep(0)
        return during

    assert asyncio.run(finish()) == 0
    assert [record.msg.outcome.n for record in seen] == [0, 1, 2]
    assert {record.levelno for record in seen} == {logging.INFO}
    assert callbacks == 1, "one callback logs the lines of a loop turn"


def test_lines_arriving_one_by_one_are_written_in_batches() -> None:
    """A line put while the writer thread rests between batches does not wake it: lines
    arriving one at a time (one request after the other) are written a few dozen at a
    time, not one write (and one thread wake-up) each; the first line after a quiet spell
    is written at once, and none is lost or reordered."""
    stream = _CountingStream()
    with _configured(stream):
        log = logging.getLogger("capgate.test_rest")
        log.info("first")
        deadline = time.monotonic() + 5
        while not stream.parts and time.monotonic() < deadline:
            time.sleep(0.001)
        assert stream.parts, "the first line after a quiet spell waits for nothing"
        began = time.monotonic()
        for i in range(200):  # ~0.2 s, a line each millisecond
            log.info("line %d", i)
            time.sleep(0.001)
        spent = time.monotonic() - began
    text = "".join(stream.parts)
    numbers = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if " line " in line]
    assert numbers == list(range(200))
    # one write per rest (20 ms) at most, plus the first and the last: ~12 for 0.2 s;
    # a thread woken per line wrote ~200 times
    assert len(stream.parts) <= 3 + spent / 0.02 * 1.5, (len(stream.parts), spent)


def _record(msg: Any, args: tuple[Any, ...] = (), **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("capgate.access", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_the_text_format_is_loggings_own() -> None:
    """The faster text formatter writes exactly what `logging.Formatter(TEXT_FORMAT)`
    writes: the local time with milliseconds, level, logger (with `[pid]` under
    `serve --workers`), message, and an exception's or stack's text on the lines after."""
    from capgate.logs import TEXT_FORMAT, TextFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    records = [_record("plain"), _record("with %s and %d", ("args", 3))]
    for created in (1_700_000_000.0, 1_700_000_000.9996, 1_700_000_001.0004, 1_733_412_345.5):
        records.append(_record("at a time", created=created, msecs=(created % 1) * 1000))
    records.append(_record("failed", exc_info=exc_info))
    records.append(_record("trace", stack_info="Stack (most recent call last):\n  here"))
    records.append(_record("ends with a break\n", exc_info=exc_info))
    for record in records:
        ours = TextFormatter().format(logging.makeLogRecord(record.__dict__))
        assert ours == logging.Formatter(TEXT_FORMAT).format(logging.makeLogRecord(record.__dict__))
        with_pid = TextFormatter(pid=4242).format(logging.makeLogRecord(record.__dict__))
        stdlib = logging.Formatter(TEXT_FORMAT.replace("%(name)s", "%(name)s[4242]"))
        assert with_pid == stdlib.format(logging.makeLogRecord(record.__dict__))


def test_a_text_value_that_could_break_the_line_is_quoted() -> None:
    """A value with a space, `=`, a quote, a backslash, a line break, a control character
    (a terminal escape in a model name) or a Unicode space is written as a JSON string:
    one line, and no value passes for another field."""
    for value in ("a b", "a=b", 'a"b', "a\\b", "a\nb", "a\x1b[31mb", "a\u00a0b", "a\u2028b", ""):
        text = str(Line("request", {"model": value, "status": 200}))
        assert text == f"request model={orjson.dumps(value).decode()} status=200", value
        assert "\n" not in text and "\x1b" not in text
    assert str(Line("request", {"model": "gpt-4o", "stream": False})) == (
        "request model=gpt-4o stream=false"
    )
