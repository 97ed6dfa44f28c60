"""Requests capgate must refuse before anything is reserved or forwarded, and errors from
the provider: each answered in the dialect of the endpoint that was called, with the
status the official SDKs map to their typed exceptions, and with the key's counters and
ledger left exactly as they were (or, for upstream errors, one zero-cost error entry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

NOT_A_KEY = "sk-cg-zzzzzzzzzzzz-" + "x" * 43  # well-formed, but no such key id


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str
    model: str
    unpriced_model: str

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi mock:words=3"}],
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not _DROP}

    def check_error(self, response: httpx.Response, status: int) -> str:
        """Assert the error shape of this dialect and return its message."""
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        data = response.json()
        if self.name == "anthropic":
            assert set(data) == {"type", "error"}, data
            assert data["type"] == "error"
            assert isinstance(data["error"]["type"], str) and data["error"]["type"]
            message = data["error"]["message"]
        else:
            assert set(data) == {"error"}, data
            assert {"message", "type", "code"} <= set(data["error"]), data
            assert isinstance(data["error"]["type"], str) and data["error"]["type"]
            message = data["error"]["message"]
        assert isinstance(message, str) and message
        return message


_DROP = object()
ANTHROPIC = Dialect("anthropic", "/v1/messages", "claude-haiku-4-5", "claude-unpriced-x")
OPENAI = Dialect("openai", "/v1/chat/completions", "gpt-5-mini", "gpt-unpriced-x")
DIALECTS = [pytest.param(ANTHROPIC, id="anthropic"), pytest.param(OPENAI, id="openai")]

LIMITS = [
    {"metric": "requests", "window": "day", "max": 1000},
    {"metric": "cost_usd", "window": "day", "max": "5"},
    {"metric": "tokens", "window": "total", "max": 10_000_000},
]


def snapshot(capgate: Capgate, name: str) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    usage = [(u["metric"], u["window"], u["used"], u["reserved"]) for u in capgate.key_usage(name)]
    return usage, capgate.ledger(key=name)


@pytest.fixture
def http(capgate: Capgate) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=capgate.url, timeout=30, trust_env=False) as client:
        yield client


@pytest.fixture
def used_key(capgate: Capgate, key_name: str, http: httpx.Client) -> str:
    """A key with limits and some usage already settled, so "unchanged" means something."""
    key = capgate.create_key(key_name, LIMITS)
    for dialect in (ANTHROPIC, OPENAI):
        response = http.post(dialect.path, json=dialect.body(), headers={"x-api-key": key})
        assert response.status_code == 200, response.text
    usage, ledger = snapshot(capgate, key_name)
    assert len(ledger) == 2 and all(u[2] not in (0, "0") for u in usage), (usage, ledger)
    return key


def post(http: httpx.Client, dialect: Dialect, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return http.post(dialect.path, headers=headers, **kwargs)


# -- malformed bodies ----------------------------------------------------------------------

# (case id, request kwargs, status, words the message must contain)
BODY_CASES: list[tuple[str, Callable[[Dialect], dict[str, Any]], int, tuple[str, ...]]] = [
    (
        "malformed-json",
        lambda d: {"content": b'{"model": "x", ', "headers": {"content-type": "application/json"}},
        400,
        ("json",),
    ),
    (
        "not-an-object",
        lambda d: {
            "content": b'["model", "messages"]',
            "headers": {"content-type": "application/json"},
        },
        400,
        ("object",),
    ),
    (
        "json-null",
        lambda d: {"content": b"null", "headers": {"content-type": "application/json"}},
        400,
        ("object",),
    ),
    ("json-string", lambda d: {"json": "model"}, 400, ("object",)),
    ("missing-model", lambda d: {"json": d.body(model=_DROP)}, 400, ("model",)),
    ("empty-model", lambda d: {"json": d.body(model="")}, 400, ("model",)),
    ("model-not-a-string", lambda d: {"json": d.body(model=42)}, 400, ("model",)),
    ("missing-messages", lambda d: {"json": d.body(messages=_DROP)}, 400, ("messages",)),
    ("messages-not-a-list", lambda d: {"json": d.body(messages="hi")}, 400, ("messages",)),
    ("max-tokens-zero", lambda d: {"json": d.body(max_tokens=0)}, 400, ("max_tokens",)),
    ("max-tokens-negative", lambda d: {"json": d.body(max_tokens=-5)}, 400, ("max_tokens",)),
    ("max-tokens-string", lambda d: {"json": d.body(max_tokens="100")}, 400, ("max_tokens",)),
    ("max-tokens-float", lambda d: {"json": d.body(max_tokens=10.5)}, 400, ("max_tokens",)),
    ("max-tokens-bool", lambda d: {"json": d.body(max_tokens=True)}, 400, ("max_tokens",)),
    ("stream-not-bool", lambda d: {"json": d.body(stream="yes")}, 400, ("stream",)),
    (
        "text-plain",
        lambda d: {
            "content": json.dumps(d.body()).encode(),
            "headers": {"content-type": "text/plain"},
        },
        415,
        ("content-type", "application/json"),
    ),
    (
        "form",
        lambda d: {"data": {"model": d.model, "max_tokens": "5"}},
        415,
        ("content-type", "application/json"),
    ),
    (
        "no-content-type",
        lambda d: {"content": json.dumps(d.body()).encode()},
        415,
        ("content-type",),
    ),
    (
        "unpriced-model",
        lambda d: {"json": d.body(model=d.unpriced_model)},
        400,
        ("no known price",),
    ),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("case", "make", "status", "words"), BODY_CASES, ids=[c[0] for c in BODY_CASES]
)
def test_bad_body_refused_and_nothing_counted(
    capgate: Capgate,
    key_name: str,
    used_key: str,
    http: httpx.Client,
    dialect: Dialect,
    case: str,
    make: Callable[[Dialect], dict[str, Any]],
    status: int,
    words: tuple[str, ...],
) -> None:
    before = snapshot(capgate, key_name)
    response = post(http, dialect, used_key, **make(dialect))
    message = dialect.check_error(response, status)
    for word in words:
        assert word.lower() in message.lower(), message
    if case == "unpriced-model":
        assert dialect.unpriced_model in message
    assert snapshot(capgate, key_name) == before


def test_openai_max_completion_tokens_checked_too(
    capgate: Capgate, key_name: str, used_key: str, http: httpx.Client
) -> None:
    before = snapshot(capgate, key_name)
    for bad in (0, -1, "9", 2.5):
        response = post(http, OPENAI, used_key, json=OPENAI.body(max_completion_tokens=bad))
        assert "max_completion_tokens" in OPENAI.check_error(response, 400)
    response = post(http, OPENAI, used_key, json=OPENAI.body(n=0))
    assert OPENAI.check_error(response, 400).startswith("n:")
    assert snapshot(capgate, key_name) == before


# -- authentication ------------------------------------------------------------------------

AUTH_CASES = [
    pytest.param({}, id="no-key"),
    pytest.param({"x-api-key": NOT_A_KEY}, id="unknown-key-x-api-key"),
    pytest.param({"authorization": f"Bearer {NOT_A_KEY}"}, id="unknown-key-bearer"),
    pytest.param({"x-api-key": "sk-ant-api03-notacapgatekey"}, id="not-a-capgate-key"),
    pytest.param({"authorization": "Bearer sk-proj-abc123"}, id="openai-style-key"),
    pytest.param({"authorization": "Basic dXNlcjpwYXNz"}, id="basic-auth"),
    pytest.param({"authorization": "Bearer"}, id="empty-bearer"),
    pytest.param({"x-api-key": ""}, id="empty-x-api-key"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("headers", AUTH_CASES)
def test_bad_key_is_401(
    capgate: Capgate,
    key_name: str,
    used_key: str,
    http: httpx.Client,
    dialect: Dialect,
    headers: dict[str, str],
) -> None:
    before = snapshot(capgate, key_name)
    everything = capgate.ledger()
    response = http.post(dialect.path, json=dialect.body(), headers=headers)
    message = dialect.check_error(response, 401)
    assert "key" in message.lower()
    if dialect is ANTHROPIC:
        assert response.json()["error"]["type"] == "authentication_error"
    else:
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert snapshot(capgate, key_name) == before
    assert capgate.ledger() == everything  # no entry for anyone


def test_wrong_secret_for_existing_key_id_is_401(
    capgate: Capgate, key_name: str, used_key: str, http: httpx.Client
) -> None:
    """The key id exists but the secret is wrong: the id alone must not authenticate."""
    forged = used_key[: len("sk-cg-") + 13] + "A" * (len(used_key) - len("sk-cg-") - 13)
    assert forged != used_key
    before = snapshot(capgate, key_name)
    for dialect in (ANTHROPIC, OPENAI):
        response = http.post(dialect.path, json=dialect.body(), headers={"x-api-key": forged})
        dialect.check_error(response, 401)
    assert snapshot(capgate, key_name) == before


def test_auth_checked_before_body(capgate: Capgate, http: httpx.Client) -> None:
    """A request with no key gets 401 even when its body is also broken."""
    for dialect in (ANTHROPIC, OPENAI):
        response = http.post(
            dialect.path, content=b"{not json", headers={"content-type": "application/json"}
        )
        dialect.check_error(response, 401)


def test_sdks_raise_authentication_error(capgate: Capgate) -> None:
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=NOT_A_KEY, max_retries=0) as claude,
        pytest.raises(anthropic.AuthenticationError) as a_err,
    ):
        claude.messages.create(
            model=ANTHROPIC.model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert a_err.value.status_code == 401
    with (
        openai.OpenAI(base_url=capgate.url + "/v1", api_key="sk-not-capgate", max_retries=0) as gpt,
        pytest.raises(openai.AuthenticationError) as o_err,
    ):
        gpt.chat.completions.create(
            model=OPENAI.model, messages=[{"role": "user", "content": "hi"}]
        )
    assert o_err.value.status_code == 401


def test_sdks_raise_bad_request_for_unpriced_model(
    capgate: Capgate, key_name: str, used_key: str
) -> None:
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=used_key, max_retries=0) as claude,
        pytest.raises(anthropic.BadRequestError, match="no known price"),
    ):
        claude.messages.create(
            model="claude-unpriced-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with (
        openai.OpenAI(base_url=capgate.url + "/v1", api_key=used_key, max_retries=0) as gpt,
        pytest.raises(openai.BadRequestError, match="no known price"),
    ):
        gpt.chat.completions.create(
            model="gpt-unpriced-x", messages=[{"role": "user", "content": "hi"}]
        )


# -- size limit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_capgate(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Capgate]:
    config = gateway_config(upstream, server={"max_request_mb": 0.01})  # 10,485 bytes
    server = start_capgate(tmp_path_factory.mktemp("small"), config)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversize_body_is_413(
    small_capgate: Capgate, key_name: str, dialect: Dialect, chunked: bool
) -> None:
    key = small_capgate.create_key(key_name, LIMITS)
    big = json.dumps(dialect.body(messages=[{"role": "user", "content": "x" * 20_000}])).encode()
    content: bytes | Iterator[bytes] = big
    if chunked:  # no content-length: the limit must hold while reading, too
        content = iter([big[i : i + 4096] for i in range(0, len(big), 4096)])
    with httpx.Client(base_url=small_capgate.url, timeout=30, trust_env=False) as http:
        response = http.post(
            dialect.path,
            content=content,
            headers={"content-type": "application/json", "x-api-key": key},
        )
        message = dialect.check_error(response, 413)
        assert "0.01 MB" in message
        # A body under the limit still goes through on the same server.
        ok = http.post(dialect.path, json=dialect.body(), headers={"x-api-key": key})
        assert ok.status_code == 200, ok.text
    entries = small_capgate.ledger(key=key_name)
    assert len(entries) == 1 and entries[0]["outcome"] == "ok"
    requests = {u["metric"]: u for u in small_capgate.key_usage(key_name)}["requests"]
    assert requests["used"] == 1 and requests["reserved"] == 0


# -- errors from the provider --------------------------------------------------------------

UPSTREAM_ERRORS = [
    pytest.param(429, anthropic.RateLimitError, openai.RateLimitError, id="429"),
    pytest.param(500, anthropic.InternalServerError, openai.InternalServerError, id="500"),
    pytest.param(400, anthropic.BadRequestError, openai.BadRequestError, id="400"),
    pytest.param(529, anthropic.InternalServerError, openai.InternalServerError, id="529"),
]


def _assert_error_entry(capgate: Capgate, name: str, status: int) -> None:
    entries = capgate.ledger(key=name)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["outcome"] == "error" and entry["status"] == status
    assert entry["cost_usd"] == "0"
    assert entry["output_tokens"] == 0
    assert entry["error"] and str(status) in entry["error"]
    usage = {u["metric"]: u for u in capgate.key_usage(name)}
    assert all(u["reserved"] in (0, "0") for u in usage.values()), usage
    assert usage["cost_usd"]["used"] == "0"
    assert usage["tokens"]["used"] == 0
    assert usage["requests"]["used"] == 1  # the attempt counts as a request


@pytest.mark.parametrize(("status", "anthropic_error", "openai_error"), UPSTREAM_ERRORS)
def test_upstream_error_reaches_anthropic_client(
    capgate: Capgate,
    key_name: str,
    status: int,
    anthropic_error: type[anthropic.APIStatusError],
    openai_error: type[openai.APIStatusError],
) -> None:
    key = capgate.create_key(key_name, LIMITS)
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=key, max_retries=0) as claude,
        pytest.raises(anthropic_error) as err,
    ):
        claude.messages.create(
            model=ANTHROPIC.model,
            max_tokens=100,
            messages=[{"role": "user", "content": f"fail please mock:status={status}"}],
        )
    assert err.value.status_code == status
    assert f"mock:status={status}" in str(err.value)
    _assert_error_entry(capgate, key_name, status)


@pytest.mark.parametrize(("status", "anthropic_error", "openai_error"), UPSTREAM_ERRORS)
def test_upstream_error_reaches_openai_client(
    capgate: Capgate,
    key_name: str,
    status: int,
    anthropic_error: type[anthropic.APIStatusError],
    openai_error: type[openai.APIStatusError],
) -> None:
    key = capgate.create_key(key_name, LIMITS)
    with (
        openai.OpenAI(base_url=capgate.url + "/v1", api_key=key, max_retries=0) as gpt,
        pytest.raises(openai_error) as err,
    ):
        gpt.chat.completions.create(
            model=OPENAI.model,
            max_completion_tokens=100,
            messages=[{"role": "user", "content": f"fail please mock:status={status}"}],
        )
    assert err.value.status_code == status
    _assert_error_entry(capgate, key_name, status)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_upstream_error_shape_over_http(
    capgate: Capgate, key_name: str, http: httpx.Client, dialect: Dialect, stream: bool
) -> None:
    key = capgate.create_key(key_name, LIMITS)
    body = dialect.body(messages=[{"role": "user", "content": "x mock:status=429"}], stream=stream)
    response = post(http, dialect, key, json=body)
    message = dialect.check_error(response, 429)
    assert "mock:status=429" in message
    assert response.headers.get("x-capgate-request-id")
    entries = capgate.ledger(key=key_name)
    assert entries[0]["stream"] is stream
    _assert_error_entry(capgate, key_name, 429)


def test_upstream_unreachable_is_502_and_not_charged(
    upstream: Upstream, tmp_path: Path, key_name: str
) -> None:
    """A provider nobody listens on: 502 in the dialect, counted as an error, cost 0."""
    import socket

    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Upstream(f"http://127.0.0.1:{port}")
    server = start_capgate(tmp_path, gateway_config(dead))
    try:
        key = server.create_key(key_name, LIMITS)
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
            for dialect in (ANTHROPIC, OPENAI):
                response = post(http, dialect, key, json=dialect.body())
                assert "unreachable" in dialect.check_error(response, 502)
        entries = server.ledger(key=key_name)
        assert [e["outcome"] for e in entries] == ["error", "error"]
        assert all(e["cost_usd"] == "0" and e["status"] == 502 for e in entries)
        usage = {u["metric"]: u for u in server.key_usage(key_name)}
        assert all(u["reserved"] in (0, "0") for u in usage.values()), usage
    finally:
        server.close()


def _status_table() -> dict[int, tuple[str, str, str, str]]:
    """docs/clients.md's table of error statuses: status -> (Anthropic type, OpenAI type,
    OpenAI code, x-should-retry: false)."""
    text = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    table = text[text.index("| status | when | Anthropic `error.type` |") :].split("\n\n")[0]
    rows: dict[int, tuple[str, str, str, str]] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        openai_type, openai_code = (c.strip(" `") for c in cells[3].split("/"))
        rows[int(cells[0])] = (cells[2].strip("`"), openai_type, openai_code, cells[4])
    return rows


def test_status_table_matches_real_answers(
    capgate: Capgate, key_name: str, http: httpx.Client
) -> None:
    """Each documented status, provoked for real in both dialects: the error types, the
    `x-should-retry` header and the request id are what the table says."""
    table = _status_table()
    spent = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    hourly = capgate.create_key(
        key_name + "-h", [{"metric": "requests", "window": "hour", "max": 0}]
    )
    paused = capgate.create_key(key_name + "-p", LIMITS)
    assert capgate.admin("POST", f"/admin/keys/{key_name}-p/pause").status_code == 200
    good = capgate.create_key(key_name + "-g", LIMITS)
    for dialect in (ANTHROPIC, OPENAI):
        cases = {
            400: post(http, dialect, good, json=dialect.body(model=dialect.unpriced_model)),
            401: post(http, dialect, NOT_A_KEY, json=dialect.body()),
            402: post(http, dialect, spent, json=dialect.body()),
            403: post(http, dialect, paused, json=dialect.body()),
            415: http.post(
                dialect.path,
                content=b"{}",
                headers={"x-api-key": good, "content-type": "text/plain"},
            ),
            429: post(http, dialect, hourly, json=dialect.body()),
        }
        for status, response in cases.items():
            dialect.check_error(response, status)
            a_type, o_type, o_code, no_retry = table[status]
            error = response.json()["error"]
            if dialect is ANTHROPIC:
                assert error["type"] == a_type, (status, error)
            else:
                assert (error["type"], error["code"]) == (o_type, o_code), (status, error)
            assert response.headers.get("x-capgate-request-id"), status
            says_no_retry = response.headers.get("x-should-retry") == "false"
            if no_retry == "yes":
                assert says_no_retry, status
            elif no_retry == "no":
                assert not says_no_retry, status
            else:  # not worth retrying when the limit frees in more than 60 s (an hour
                # limit does, but in the last minute of the hour)
                assert no_retry.startswith("only when"), status
                frees_in = int(response.headers["retry-after"])
                assert says_no_retry == (frees_in > 60), (status, frees_in)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/me"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/generate"),
        ("POST", "/v1/responses"),
    ],
)
def test_every_gateway_answer_has_a_request_id(
    capgate: Capgate, used_key: str, http: httpx.Client, method: str, path: str
) -> None:
    body = {"model": ANTHROPIC.model, "messages": [{"role": "user", "content": "hi"}]}
    if path == "/generate":
        body = {"userPrompt": "hi"}
    elif path == "/v1/responses":
        body = {"model": OPENAI.model, "input": "hi"}
    kwargs: dict[str, Any] = {"json": body} if method == "POST" else {}
    wrong = http.request(method, path, headers={"x-api-key": NOT_A_KEY}, **kwargs)
    assert wrong.status_code == 401
    assert wrong.headers.get("x-capgate-request-id")
    assert wrong.headers.get("x-should-retry") == "false"
    right = http.request(method, path, headers={"x-api-key": used_key}, **kwargs)
    assert right.status_code == 200, right.text
    assert right.headers.get("x-capgate-request-id")
