"""`/v1/me`, `/v1/models` and `/v1/messages/count_tokens` reserve nothing, yet a revoked,
paused or expired key is refused there as on the gateway's endpoints (same dialect,
status and refusal header), and read fresh: a revoke through one process is seen by
another (issue #18, part 5). Before, they answered 200 with the key's and team's spend."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

ROUTES = [("GET", "/v1/me"), ("GET", "/v1/models")]


def _ask(server: Capgate, key: str, method: str, path: str, dialect: str) -> httpx.Response:
    headers = {"x-api-key": key}
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    return httpx.request(method, server.url + path, headers=headers, timeout=30)


def _refused(response: httpx.Response, dialect: str, reason: str) -> None:
    assert response.status_code == 403, response.text
    data = response.json()
    if dialect == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "permission_error"
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}
    assert reason in data["error"]["message"]
    assert response.headers["x-capgate-refusal"] == reason
    assert "limits" not in data and "data" not in data  # nothing about the key's spend


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
@pytest.mark.parametrize("how", ["revoke", "pause", "expire"])
def test_a_key_that_may_not_be_used_is_refused_everywhere(
    capgate: Capgate, key_name: str, how: str, dialect: str
) -> None:
    key = capgate.create_key(key_name)
    for method, path in ROUTES:
        assert _ask(capgate, key, method, path, dialect).status_code == 200
    if how == "expire":
        patch = {"expires_at": time.time() + 1}
        assert capgate.admin("PATCH", f"/admin/keys/{key_name}", json=patch).status_code == 200
        time.sleep(1.2)
    else:
        assert capgate.admin("POST", f"/admin/keys/{key_name}/{how}").status_code == 200
    reason = {"revoke": "revoked", "pause": "paused", "expire": "expired"}[how]
    for method, path in ROUTES:
        _refused(_ask(capgate, key, method, path, dialect), dialect, reason)
    counted = httpx.post(
        capgate.url + "/v1/messages/count_tokens",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    _refused(counted, "anthropic", reason)
    if how == "pause":  # and resumed, it answers again
        assert capgate.admin("POST", f"/admin/keys/{key_name}/resume").status_code == 200
        assert _ask(capgate, key, "GET", "/v1/me", dialect).json()["status"] == "active"


@pytest.fixture
def two_processes(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[Capgate, Capgate]]:
    first = start_capgate(tmp_path, gateway_config(upstream))
    try:
        second = start_capgate(tmp_path, gateway_config(upstream), db=first.db)
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


def test_a_revoke_through_one_process_is_seen_by_another(
    two_processes: tuple[Capgate, Capgate],
) -> None:
    first, second = two_processes
    key = first.create_key("shared-key")
    for method, path in ROUTES:  # the second process has the key in its cache now
        assert _ask(second, key, method, path, "openai").status_code == 200
    assert _ask(second, key, "GET", "/v1/me", "openai").json()["status"] == "active"
    assert first.admin("POST", "/admin/keys/shared-key/revoke").status_code == 200
    time.sleep(0.1)  # past the refresh interval (50 ms)
    for method, path in ROUTES:
        _refused(_ask(second, key, method, path, "openai"), "openai", "revoked")


class _ErrorPage(http.server.BaseHTTPRequestHandler):
    """An upstream behind a proxy that fails: an HTML 502 page for any request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
        self.send_response(502)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def error_page() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErrorPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_count_tokens_answers_an_upstream_error_page_in_anthropics_shape(
    tmp_path: Path, error_page: str
) -> None:
    """The SDKs parse only their own error shape: a proxy's HTML page is rewritten (the
    status passes on, the page's text is the message), not relayed as text/html."""
    config = {
        "providers": [{"name": "anthropic", "type": "anthropic", "base_url": error_page,
                       "api_key": "up-key-a"}],
        "models": [{"match": "claude-*", "targets": [{"provider": "anthropic"}]}],
    }  # fmt: skip
    server = start_capgate(tmp_path, config)
    try:
        key = server.create_key("counting")
        answer = httpx.post(
            server.url + "/v1/messages/count_tokens",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 502
        assert answer.headers["content-type"].startswith("application/json")
        data = answer.json()
        assert data["type"] == "error" and data["error"]["type"] == "api_error"
        assert "502 Bad Gateway" in data["error"]["message"]
        assert answer.headers["x-capgate-request-id"]
    finally:
        server.close()
