"""capgate serving HTTPS itself (`--tls-cert/--tls-key`, `server.tls_*`, `CAPGATE_TLS_*`):
the official SDK connects trusting a certificate made here, every answer carries HSTS, and
a client that does not trust the certificate, or speaks plain HTTP, gets nowhere."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest

from conftest import (
    ADMIN_KEY,
    ROOT,
    Capgate,
    Upstream,
    gateway_config,
    self_signed,
    start_capgate,
)


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def make_key(server: Capgate, cert: Path, name: str) -> str:
    with httpx.Client(verify=trusting(cert), timeout=30) as http:
        response = http.post(
            server.url + "/admin/keys",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            json={"name": name, "limits": [{"metric": "cost_usd", "window": "day", "max": 5}]},
        )
    assert response.status_code == 201, response.text
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    return str(response.json()["key"])


def test_the_sdk_talks_https_with_the_certificate_it_trusts(
    upstream: Upstream, tmp_path: Path
) -> None:
    cert, key_file = self_signed(tmp_path)
    server = start_capgate(
        tmp_path,
        gateway_config(upstream),
        args=("--tls-cert", str(cert), "--tls-key", str(key_file)),
    )
    try:
        assert server.url.startswith("https://127.0.0.1:")
        key = make_key(server, cert, "tls")
        http = anthropic.DefaultHttpxClient(verify=trusting(cert))
        with anthropic.Anthropic(
            base_url=server.url, api_key=key, max_retries=0, http_client=http
        ) as client:
            raw = client.messages.with_raw_response.create(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": "hi mock:words=5"}],
            )
            message = raw.parse()
        assert len(message.content[0].text.split()) == 5  # type: ignore[union-attr]
        assert raw.headers["strict-transport-security"] == "max-age=31536000"
        with httpx.Client(verify=trusting(cert)) as probe:
            health = probe.get(server.url + "/health")
        assert health.status_code == 200
        assert health.headers["strict-transport-security"] == "max-age=31536000"

        # A client that does not trust the certificate stops at the handshake.
        with (
            anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0) as untrusting,
            pytest.raises(anthropic.APIConnectionError),
        ):
            untrusting.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": "hi"}],
            )
        # Plain HTTP on the TLS port gets no answer from the gateway.
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https://", "http://") + "/health", timeout=5)
    finally:
        server.close()


def test_plain_http_has_no_hsts(capgate: Capgate) -> None:
    response = httpx.get(capgate.url + "/health")
    assert response.status_code == 200
    assert "strict-transport-security" not in response.headers


@pytest.mark.parametrize("where", ["environment", "config file"])
def test_tls_from_the_environment_or_the_config_file(
    upstream: Upstream, tmp_path: Path, where: str
) -> None:
    cert, key_file = self_signed(tmp_path)
    config = gateway_config(upstream)
    env = {}
    if where == "environment":
        env = {"CAPGATE_TLS_CERT": str(cert), "CAPGATE_TLS_KEY": str(key_file)}
    else:
        config["server"] = {"tls_cert": str(cert), "tls_key": str(key_file)}
    server = start_capgate(tmp_path, config, env=env)
    try:
        assert server.url.startswith("https://")
        make_key(server, cert, f"tls-{where}".replace(" ", "-"))  # the names' alphabet
    finally:
        server.close()


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'c.db'}", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CAPGATE_ADMIN_KEY": ADMIN_KEY},
    )  # fmt: skip


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    done = serve(tmp_path, "--tls-cert", str(cert))
    assert done.returncode == 2
    assert "server: tls_cert and tls_key must be given together" in done.stderr
    assert not (tmp_path / "c.db").exists()


def test_a_bad_certificate_stops_the_start_and_changes_nothing(tmp_path: Path) -> None:
    cert, key_file = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")  # a key that is not the certificate's
    done = serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert done.returncode == 1
    assert "cannot load" in done.stderr and str(cert) in done.stderr
    assert not (tmp_path / "c.db").exists()
    done = serve(tmp_path, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key_file))
    assert done.returncode == 1
    assert "No such file or directory" in done.stderr
    assert not (tmp_path / "c.db").exists()
