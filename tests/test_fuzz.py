"""A standing fuzz test (issue #18, part 6), with Hypothesis against a real server:

- every operation of `/admin/openapi.json` (on a server of its own), with path, query and
  header parameters and bodies drawn from the document (its property names, with values
  of any JSON type and numbers at and past every edge): never a 5xx, every error in the
  admin JSON shape, and a refused request changes nothing (no audit entry);
- `/v1/messages` and `/v1/chat/completions` with generated bodies and headers: never a
  5xx, every error in the endpoint's dialect, and a refused input moves no counter and
  writes no ledger entry.

Bounded for the default run (about `CAPGATE_FUZZ_EXAMPLES`, default 400, examples per
test; well under a minute together). Run more with e.g. `CAPGATE_FUZZ_EXAMPLES=5000`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate

EXAMPLES = int(os.environ.get("CAPGATE_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Text without ':' so that no prompt is ever a mock upstream directive (`mock:status=500`).
TEXT = st.text(st.characters(blacklist_characters=":", blacklist_categories=["Cs"]), max_size=30)
# What a client can put in a header value at all (visible ASCII, no edge spaces).
HEADER_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
CURSORS = ["18446744073709551616-0", "1-1", "9223372036854775807-0", "-1-1", "0"]
EDGE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
     1e20, -1e20, 1e308, -1e308, 1e-320, 0.5, -0.0]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), EDGE_NUMBERS, TEXT,
    st.sampled_from(["1e999", "-1e15", "nan", "inf", "2099-01-01", "9999-12-31T23:59:59Z",
                     "0.000000001", "99999-01-01", "ci{prod}", "a/b", "\x00", "é"]),
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
QUERY_VALUES = st.one_of(
    TEXT, EDGE_NUMBERS.map(str), st.integers().map(str), st.floats().map(str),
    st.sampled_from(["all", "json", "csv", "ndjson", "-5", "1e400", "key", "day"]),
)  # fmt: skip


# -- the admin API ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server of its own: a drawn request the API accepts changes what it says (e.g.
    `PATCH /admin/settings {"credit_weights": {}}`: every model weighs 1), which the
    shared server's later tests must not see."""
    server = start_capgate(tmp_path_factory.mktemp("fuzz-admin"), gateway_config(upstream))
    try:
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ) as http:
            yield http
    finally:
        server.close()


@pytest.fixture(scope="module")
def operations(admin: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    doc = admin.get("/admin/openapi.json").json()
    ops = [
        (method.upper(), path, op)
        for path, methods in doc["paths"].items()
        for method, op in methods.items()
    ]
    assert len(ops) > 30
    return ops


def _properties(op: dict[str, Any], doc_schemas: dict[str, Any]) -> list[str]:
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = body.get("schema", {}).get("$ref", "")
    schema = doc_schemas.get(ref.rsplit("/", 1)[-1], body.get("schema", {}))
    return sorted(schema.get("properties", {}))


@st.composite
def admin_requests(
    draw: st.DrawFn, ops: list[tuple[str, str, dict[str, Any]]], schemas: Any
) -> Any:
    method, path, op = draw(st.sampled_from(ops))
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            name = draw(st.one_of(st.sampled_from(["fuzz-key", "fuzz-team", "x"]), TEXT))
            path = path.replace("{" + param["name"] + "}", quote(name, safe="") or "x")
        elif draw(st.booleans()):
            value = draw(QUERY_VALUES)
            if param["in"] == "query":
                query[param["name"]] = value
            else:
                headers[param["name"]] = draw(HEADER_TEXT | st.sampled_from(CURSORS))
    if draw(st.integers(0, 9)) == 0:  # now and then, a parameter the route does not take
        query[draw(TEXT)] = draw(QUERY_VALUES)
    body = None
    if "requestBody" in op:
        names = _properties(op, schemas)
        keys = st.sampled_from(names) if names else TEXT
        body = draw(st.dictionaries(keys, JSON, max_size=4))
        if draw(st.booleans()) and "name" in names:
            body["name"] = draw(st.one_of(TEXT, st.text("abc._@-", min_size=1, max_size=12)))
    return method, path, query, headers, body


def _admin_error(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    data = response.json()
    assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}, data


def _last_audit(admin: httpx.Client) -> Any:
    items = admin.get("/admin/audit", params={"limit": 1}).json()["items"]
    return items[0] if items else None


def test_the_admin_api_never_fails_on_what_its_document_allows(
    admin: httpx.Client, operations: list[tuple[str, str, dict[str, Any]]]
) -> None:
    schemas = admin.get("/admin/openapi.json").json().get("components", {}).get("schemas", {})
    for plural, name in (("keys", "fuzz-key"), ("teams", "fuzz-team")):
        admin.post(f"/admin/{plural}", json={"name": name})

    @FUZZ
    @given(admin_requests(operations, schemas))
    def check(drawn: Any) -> None:
        method, path, query, headers, body = drawn
        before = _last_audit(admin)
        if path == "/admin/events":  # a stream: its status and headers are the answer
            with admin.stream(method, path, params=query, headers=headers, timeout=5) as live:
                assert live.status_code < 500
                if live.status_code >= 400:
                    live.read()
                    _admin_error(live)
            return
        response = admin.request(method, path, params=query, headers=headers, json=body)
        assert response.status_code < 500, (method, path, query, body, response.text)
        if response.status_code >= 400:
            _admin_error(response)
            assert _last_audit(admin) == before, "a refused request changed something"

    check()


# -- the gateway ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_key(capgate: Capgate) -> tuple[str, str]:
    name = "fuzz-gateway"
    limits = [
        {"metric": "requests", "window": "day", "max": 10**9},
        {"metric": "cost_usd", "window": "day", "max": "1000000"},
    ]
    response = capgate.admin("POST", "/admin/keys", json={"name": name, "limits": limits})
    assert response.status_code == 201, response.text
    return name, str(response.json()["key"])


MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
         "content": st.one_of(TEXT, JSON)},
    ),
    max_size=3,
)  # fmt: skip
# Models the endpoint's own provider serves (and some no route serves). A body sent to the
# other dialect's provider is translated after it is admitted, and one that cannot be is
# counted as a request (docs/security.md, "Known gaps"): not fuzzed here yet.
MODELS = {
    "/v1/messages": st.sampled_from(["claude-haiku-4-5", "nope-model", "", "claude-*"]),
    "/v1/chat/completions": st.sampled_from(["gpt-5-mini", "nope-model", "", "gpt-*"]),
}


@st.composite
def gateway_bodies(draw: st.DrawFn, path: str) -> Any:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(JSON)  # anything at all
    body = {
        "model": draw(st.one_of(MODELS[path], JSON)),
        "messages": draw(st.one_of(MESSAGES, JSON)),
    }
    for field in ("max_tokens", "max_completion_tokens", "n", "stream", "temperature",
                  "thinking", "tools", "system", "stop"):  # fmt: skip
        if draw(st.booleans()):
            body[field] = draw(JSON)
    if kind == 1 and draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 50))
    return body


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "anthropic-version": st.sampled_from(["2023-06-01", "", "x"]),
        "anthropic-beta": HEADER_TEXT,
        "user-agent": st.sampled_from(["claude-cli/2.1.0", "codex_cli_rs/0.1", "x"]),
        "content-type": st.sampled_from(
            ["application/json", "text/plain", "application/json; charset=latin-1", ""]
        ),
        "content-encoding": st.sampled_from(["gzip", "identity", "br"]),
    },
)


def _dialect_error(path: str, response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    data = response.json()
    if path == "/v1/messages":
        assert data["type"] == "error" and set(data["error"]) >= {"type", "message"}, data
    else:
        assert isinstance(data["error"], dict) and "message" in data["error"], data


def _state(capgate: Capgate, name: str) -> Any:
    usage = capgate.admin("GET", f"/admin/keys/{name}").json()["usage"]
    ledger = capgate.admin("GET", "/admin/requests", params={"key": name, "limit": 1}).json()
    return [(u["used"], u["reserved"]) for u in usage], [e["id"] for e in ledger["items"]]


def _settled_state(capgate: Capgate, name: str) -> Any:
    """The key's state once the previous example's request is settled: an answer goes
    out before its settlement is written, and under load that write could otherwise land
    between this example's two reads and look like a change made by bad input."""
    deadline = time.monotonic() + 10
    while True:
        state = _state(capgate, name)
        if all(Decimal(str(held)) == 0 for _, held in state[0]) or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


# Statuses of bad input (nothing may be recorded); a refusal by policy (402, 403, 429) is
# in the ledger on purpose.
BAD_INPUT = {400, 401, 404, 405, 413, 415, 422}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
def test_the_gateway_never_fails_on_generated_requests(
    capgate: Capgate, fuzz_key: tuple[str, str], path: str
) -> None:
    name, key = fuzz_key
    with httpx.Client(base_url=capgate.url, timeout=30) as http:

        @FUZZ
        @given(
            body=gateway_bodies(path),
            headers=HEADERS,
            auth=st.sampled_from(["x-api-key", "bearer", "none", "wrong"]),
            raw=st.none() | st.binary(max_size=40),
        )
        def check(body: Any, headers: dict[str, str], auth: str, raw: bytes | None) -> None:
            sent = dict(headers)
            if auth == "x-api-key":
                sent["x-api-key"] = key
            elif auth == "bearer":
                sent["authorization"] = f"Bearer {key}"
            elif auth == "wrong":
                sent["x-api-key"] = key[:-2] + "xx"
            sent.setdefault("content-type", "application/json")
            before = _settled_state(capgate, name)
            if raw is not None:
                response = http.post(path, content=raw, headers=sent)
            else:
                response = http.post(path, json=body, headers=sent)
            assert response.status_code < 500, (body, sent, response.text)
            if response.status_code >= 400:
                _dialect_error(path, response)
            if response.status_code in BAD_INPUT:
                assert _state(capgate, name) == before, (body, sent, response.text)

        check()
