"""Guessing the admin key (issue #18, part 5): wrong admin keys over the API are throttled
per client address like dashboard logins (counted in the store, so across processes); a
short or repetitive admin key is refused at start; behind a trusted reverse proxy the
throttles count the forwarded client, never a forwarded address from anyone else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ADMIN_KEY, ROOT, Capgate, Upstream, gateway_config, start_capgate


def _from(server: Capgate, address: str, **headers: str) -> httpx.Client:
    """A client whose requests come from `address` (any 127.x.y.z is this machine)."""
    return httpx.Client(
        base_url=server.url, transport=httpx.HTTPTransport(local_address=address),
        headers=headers, timeout=30, trust_env=False,
    )  # fmt: skip


@pytest.fixture
def pair(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[Capgate, Capgate]]:
    first = start_capgate(tmp_path, gateway_config(upstream))
    try:
        second = start_capgate(tmp_path, gateway_config(upstream), db=first.db)
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


def test_wrong_admin_keys_are_throttled_per_address_across_processes(
    pair: tuple[Capgate, Capgate],
) -> None:
    first, second = pair
    with (
        _from(first, "127.0.3.1") as one,
        _from(second, "127.0.3.1") as two,
        _from(first, "127.0.3.2") as elsewhere,
    ):
        for n in range(10):  # half through each process: they share the count
            http = one if n % 2 else two
            wrong = http.get("/admin/keys", headers={"authorization": f"Bearer guess-{n}"})
            assert wrong.status_code == 401, wrong.text
        for http in (one, two):
            for key in ("guess-x", ADMIN_KEY):  # once blocked, not even the right key is tried
                blocked = http.get("/admin/keys", headers={"authorization": f"Bearer {key}"})
                assert blocked.status_code == 429, blocked.text
                assert int(blocked.headers["retry-after"]) > 0
                error = blocked.json()["error"]
                assert set(error) == {"type", "message"} and "too many" in error["message"]
        right = elsewhere.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert right.status_code == 200  # another address is not blocked
        # Nor is the dashboard login of the blocked address (a throttle of its own).
        login = one.post("/dashboard/login", json={"password": ADMIN_KEY})
        assert login.status_code == 200, login.text


@pytest.mark.parametrize(
    ("admin_key", "reason"),
    [
        ("admin", "at least 32"),
        ("sk-cg-admin-0123456789abcdef", "at least 32"),  # 28 characters
        ("a" * 64, "different characters"),
        ("abab" * 10, "different characters"),
    ],
)
def test_a_weak_admin_key_refuses_to_start(tmp_path: Path, admin_key: str, reason: str) -> None:
    db = tmp_path / "weak.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--port", "0",
         "--database-url", f"sqlite:///{db}"],
        env={**env, "CAPGATE_ADMIN_KEY": admin_key}, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "CAPGATE_ADMIN_KEY" in done.stderr and reason in done.stderr, done.stderr
    assert admin_key == "admin" or admin_key not in done.stderr  # never echoed
    assert not db.exists()  # refused before the database was touched


def test_the_test_admin_key_is_strong_enough(capgate: Capgate) -> None:
    """The suite's own key passes the check it must pass (conftest.ADMIN_KEY)."""
    assert capgate.admin("GET", "/admin/keys").status_code == 200


@pytest.fixture
def behind_proxy(upstream: Upstream, tmp_path: Path) -> Iterator[Capgate]:
    # 127.0.4.1 is the proxy (and so is the whole 127.0.5.0/24): their X-Forwarded-For
    # is believed; any other peer's is not.
    config = gateway_config(upstream, server={"trusted_proxies": ["127.0.4.1", "127.0.5.0/24"]})
    server = start_capgate(tmp_path, config)
    try:
        yield server
    finally:
        server.close()


def _fail_logins(http: httpx.Client, **headers: str) -> None:
    for _ in range(10):
        response = http.post("/dashboard/login", json={"password": "guess"}, headers=headers)
        assert response.status_code == 401, response.text


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled(behind_proxy: Capgate) -> None:
    login = {"password": ADMIN_KEY}
    with _from(behind_proxy, "127.0.4.1") as proxy, _from(behind_proxy, "127.0.5.9") as inner:
        # The client wrote a left part of its own: only the right-most untrusted hop counts.
        _fail_logins(proxy, **{"x-forwarded-for": "9.9.9.9, 203.0.113.7"})
        blocked = proxy.post(
            "/dashboard/login", json=login, headers={"x-forwarded-for": "203.0.113.7"}
        )
        assert blocked.status_code == 429
        # Through two trusted proxies, the same client is still the one blocked.
        chained = {"x-forwarded-for": "203.0.113.7, 127.0.4.1"}
        assert inner.post("/dashboard/login", json=login, headers=chained).status_code == 429
        # Everyone else behind the proxy may still log in.
        other = proxy.post(
            "/dashboard/login", json=login, headers={"x-forwarded-for": "198.51.100.1"}
        )
        assert other.status_code == 200, other.text
        # Wrong admin keys through the proxy too.
        for n in range(10):
            guess = {"authorization": f"Bearer guess-{n}", "x-forwarded-for": "203.0.113.9"}
            assert proxy.get("/admin/keys", headers=guess).status_code == 401
        right = {"authorization": f"Bearer {ADMIN_KEY}"}
        assert (
            proxy.get(
                "/admin/keys", headers={**right, "x-forwarded-for": "203.0.113.9"}
            ).status_code
            == 429
        )
        assert (
            proxy.get(
                "/admin/keys", headers={**right, "x-forwarded-for": "203.0.113.10"}
            ).status_code
            == 200
        )


def test_an_untrusted_peer_cannot_pick_its_address(behind_proxy: Capgate) -> None:
    """A client that is not a trusted proxy is throttled by its own address, whatever
    X-Forwarded-For it sends."""
    with _from(behind_proxy, "127.0.6.1") as direct:
        for n in range(10):
            forged = {"x-forwarded-for": f"198.51.100.{n}"}
            response = direct.post("/dashboard/login", json={"password": "guess"}, headers=forged)
            assert response.status_code == 401
        fresh = {"x-forwarded-for": "198.51.100.200"}
        blocked = direct.post("/dashboard/login", json={"password": ADMIN_KEY}, headers=fresh)
        assert blocked.status_code == 429


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.lan"]}}))
    env = {**os.environ, "CAPGATE_ADMIN_KEY": ADMIN_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(path), "--port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "trusted_proxies" in done.stderr and "proxy.lan" in done.stderr, done.stderr
