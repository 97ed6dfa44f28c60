"""Numbers and bytes out of every range the admin API can take (issue #18, part 5): each
is a 400 or 401 in the admin JSON error shape, and nothing changes. Before, they were
plain-text 500s (overflows in the store, the clock or the hash) or wrongly accepted."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import Capgate


def admin_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error"} and set(data["error"]) == {"type", "message"}, data
    return str(data["error"]["message"])


def _limit(metric: str, max_: Any) -> dict[str, Any]:
    return {"limits": [{"metric": metric, "window": "day", "max": max_}]}


BAD_BODIES = [
    pytest.param({"expires_at": 1e20}, "expires_at", id="expires-1e20"),
    pytest.param({"expires_at": -1e20}, "expires_at", id="expires-minus-1e20"),
    pytest.param({"expires_at": 1e308}, "expires_at", id="expires-1e308"),
    pytest.param({"expires_at": True}, "expires_at", id="expires-true"),
    pytest.param({"expires_at": "99999-01-01"}, "expires_at", id="expires-year-99999"),
    pytest.param(_limit("tokens", 10**30), "limits", id="tokens-1e30"),
    pytest.param(_limit("cost_usd", "1e999"), "limits", id="cost-1e999"),
    pytest.param(_limit("requests", 2**63), "limits", id="requests-2-63"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_BODIES)
def test_out_of_range_bodies_are_400_and_change_nothing(
    capgate: Capgate, key_name: str, fields: dict[str, Any], named: str
) -> None:
    created = capgate.admin("POST", "/admin/keys", json={"name": key_name, **fields})
    message = admin_error(created, 400)
    assert named in message and "in the past" not in message  # true is no time at all
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    capgate.create_key(key_name)
    before = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    patched = capgate.admin("PATCH", f"/admin/keys/{key_name}", json=fields)
    assert named in admin_error(patched, 400)
    after = capgate.admin("GET", f"/admin/keys/{key_name}").json()
    assert after["limits"] == before["limits"] and after["expires_at"] == before["expires_at"]


@pytest.mark.parametrize(
    "path",
    [
        "/admin/requests?cursor=9223372036854775808",
        "/admin/requests?status=9223372036854775808",
        "/admin/requests?status=1000",
        "/admin/requests?limit=-1",
        "/admin/requests?from=1e400",
        "/admin/audit?limit=-1",
        "/admin/audit?limit=-5",
        "/admin/audit?limit=" + "9" * 5000,
        "/admin/summary?from=-1e15",
        "/admin/summary?to=1e300",
        "/admin/usage?from=nan",
        "/admin/timeseries?from=-1e15",
    ],
)
def test_out_of_range_query_parameters_are_400(capgate: Capgate, path: str) -> None:
    name = path.split("?")[1].split("=")[0]
    assert name in admin_error(capgate.admin("GET", path), 400)


def test_a_last_event_id_past_64_bits_is_400(capgate: Capgate) -> None:
    headers = {"last-event-id": "18446744073709551616-0"}
    response = capgate.admin("GET", "/admin/events", headers=headers)
    assert "Last-Event-ID" in admin_error(response, 400)


def _raw(capgate: Capgate, header: bytes, path: bytes = b"/admin/keys") -> tuple[int, bytes]:
    """A request with `header` as sent (bytes no HTTP client library would send)."""
    url = urlsplit(capgate.url)
    # From an address of its own: wrong admin keys are throttled per address.
    source = ("127.0.2.1", 0)
    with socket.create_connection((url.hostname, url.port), 10, source) as sock:
        sock.sendall(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe",
        b"Authorization: Bearer sk-cg-admin-\xe9",
        b"x-api-key: \xff",
        b"Cookie: capgate_session=\xff\xfe",
    ],
)
def test_non_utf8_credentials_are_401_without_credentials(capgate: Capgate, header: bytes) -> None:
    status, body = _raw(capgate, header)
    assert status == 401, body
    assert set(httpx.Response(401, content=body).json()["error"]) == {"type", "message"}


def test_a_non_utf8_gateway_key_is_401(capgate: Capgate) -> None:
    """A key with a valid-looking id and an undecodable secret byte."""
    status, body = _raw(capgate, b"x-api-key: sk-cg-abcdefghijkl-\xff\xfe", b"/v1/models")
    assert status == 401, body
