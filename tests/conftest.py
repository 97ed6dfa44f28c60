"""Shared fixtures: a real mock upstream and real capgate servers, as subprocesses on
ephemeral loopback ports. Tests talk to them over HTTP with the official SDKs and httpx.

Tests that need something outside Python (the Claude Code CLI, ...) skip with a reason
locally; with CAPGATE_REQUIRE_ALL=1 (set by .ci/run) a missing tool fails instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

import pgcluster

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "sk-cg-admin-test-0123456789abcdef"
REQUIRE_ALL = os.environ.get("CAPGATE_REQUIRE_ALL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip locally when a tool is missing; fail in CI, where nothing may skip."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def _spawn(
    args: list[str],
    pattern: str,
    env: dict[str, str] | None = None,
    timeout: float = 20,
    stderr: IO[str] | int = subprocess.STDOUT,
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Start a process and wait for the line that says where it listens."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:  # keep reading its output (logs) so that a full pipe never blocks it
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, match
    proc.kill()
    raise RuntimeError("process did not start:\n" + "".join(seen))


def _drain(stream: IO[str]) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed by _stop meanwhile
        for _ in stream:
            pass


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Upstream:
    url: str  # http://127.0.0.1:PORT


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    proc, match = _spawn(
        [sys.executable, "-m", "capgate.mock", "--port", "0"], r"listening on (\S+)"
    )
    try:
        yield Upstream(f"http://{match.group(1)}")
    finally:
        _stop(proc)


def gateway_config(upstream: Upstream, **extra: Any) -> dict[str, Any]:
    """Anthropic- and OpenAI-type providers, both pointed at the mock upstream."""
    config: dict[str, Any] = {
        "providers": [
            {
                "name": "anthropic",
                "type": "anthropic",
                "base_url": upstream.url,
                "api_key": "up-key-a",
            },
            {
                "name": "openai",
                "type": "openai",
                "base_url": upstream.url + "/v1",
                "api_key": "up-key-o",
            },
        ],
        "models": [
            {"match": "claude-*", "targets": [{"provider": "anthropic"}]},
            {"match": "gpt-*", "targets": [{"provider": "openai"}]},
            {"match": "o*", "targets": [{"provider": "openai"}]},
        ],
        "pricing": {"house-model": {"input": "2", "output": "10"}},
    }
    config.update(extra)
    return config


@dataclass
class Capgate:
    url: str
    db: Path
    proc: subprocess.Popen[str]
    admin_key: str = ADMIN_KEY
    _http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.admin_key}"}, timeout=30
        )

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, path, **kwargs)

    def create_key(
        self, name: str, limits: list[dict[str, Any]] | None = None, **fields: Any
    ) -> str:
        response = self.admin(
            "POST", "/admin/keys", json={"name": name, "limits": limits or [], **fields}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def ledger(self, **params: Any) -> list[dict[str, Any]]:
        response = self.admin("GET", "/admin/requests", params={"limit": 10000, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    def key_usage(self, name: str) -> list[dict[str, Any]]:
        response = self.admin("GET", f"/admin/keys/{name}")
        assert response.status_code == 200, response.text
        return list(response.json()["usage"])

    def close(self) -> None:
        self._http.close()
        _stop(self.proc)


def log_with(log: Path, *texts: str, within: float = 10) -> str:
    """A running server's log once it holds every one of `texts` (its writer thread writes
    lines in batches, up to ~20 ms after their event), or as it is after `within` s."""
    deadline = time.monotonic() + within
    while True:
        text = log.read_text() if log.exists() else ""
        if all(t in text for t in texts) or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def start_capgate(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    db: Path | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Capgate:
    """A capgate server subprocess; with `log`, its log lines (stderr) go to that file."""
    config_path = tmp_path / f"capgate-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    db = db or tmp_path / "capgate.db"
    with contextlib.ExitStack() as files:  # the child keeps its own copy of the descriptor
        stderr = files.enter_context(log.open("w")) if log else subprocess.STDOUT
        proc, match = _spawn(
            [sys.executable, "-m", "capgate", "serve", "--config", str(config_path), "--port", "0",
             "--database-url", f"sqlite:///{db}", *args],
            r"capgate listening on (\S+)",
            env={"CAPGATE_ADMIN_KEY": ADMIN_KEY, **(env or {})},
            stderr=stderr,
        )  # fmt: skip
    return Capgate(match.group(1), db, proc)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with openssl."""
    need(shutil.which("openssl") is not None, "openssl (to make a test certificate)")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def kill_during_stream(server: Capgate, body: dict[str, Any], key: str) -> dict[str, str]:
    """Start a stream through `server` and `kill -9` it once the first bytes arrive (the
    reservation stays held by a dead process). Returns the answer's headers."""
    import signal

    started, headers = threading.Event(), {}

    def stream() -> None:
        try:
            with httpx.stream(
                "POST", server.url + "/v1/messages", json=body, headers={"x-api-key": key},
                timeout=30,
            ) as response:  # fmt: skip
                headers.update(response.headers)
                for _ in response.iter_bytes():
                    started.set()
        except httpx.HTTPError:
            pass  # the server is killed under it

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(10)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    thread.join(10)
    server.close()
    return headers


@pytest.fixture(scope="session")
def capgate(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    """One shared gateway; tests create their own keys with unique names."""
    server = start_capgate(tmp_path_factory.mktemp("capgate"), gateway_config(upstream))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _shared_settings_kept(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test may change the shared gateway's keys, never its runtime settings: every
    later test would see them (the admin fuzz once set `credit_weights: {}`, and a test
    of credit weights far down the run failed). A test that does fails here, at once."""
    yield
    if "capgate" in request.fixturenames:
        server: Capgate = request.getfixturevalue("capgate")
        shown = server.admin("GET", "/admin/settings").json()
        assert set(shown["sources"].values()) == {"config"}, f"settings changed: {shown}"


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def key_name(request: pytest.FixtureRequest) -> str:
    """A key name unique within the session."""
    name = f"{request.node.name[:40]}-{next(_counter)}"
    return re.sub(r"[^A-Za-z0-9._@-]", "-", name)  # the names' alphabet (docs/security.md)


def which(tool: str) -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / tool
    return str(local) if local.exists() else shutil.which(tool)


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and REQUIRE_ALL and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (CAPGATE_REQUIRE_ALL=1) a skipped test fails the run: nothing may skip there."""
    if _skipped:
        print("\nCAPGATE_REQUIRE_ALL=1 but these tests skipped:\n  " + "\n  ".join(_skipped))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgcluster.Cluster]:
    """A throwaway PostgreSQL cluster on a loopback port (tests/pgcluster.py). Skips
    locally when the server binaries are missing; CI installs them, so it never skips."""
    need(pgcluster.missing() is None, pgcluster.missing() or "")
    with pgcluster.cluster() as started:
        yield started
