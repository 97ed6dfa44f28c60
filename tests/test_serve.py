"""`capgate serve`: a start that cannot listen changes nothing; `--demo` keeps its admin
key, demo key and dashboard sessions across restarts, and says what it had to replace."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, _drain, _stop

HELLO = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi"}],
}


@dataclass
class Demo:
    url: str
    admin_key: str
    demo_key: str
    banner: str


def _serve(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "capgate", "serve", "--demo", "--database-url",
            f"sqlite:///{db}", *args]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    return {**env, "CAPGATE_LOG_LEVEL": "warning"}


@pytest.fixture
def demos() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        _stop(proc)


def start_demo(db: Path, procs: list[subprocess.Popen[str]], port: int = 0) -> Demo:
    """A demo server; its whole banner (up to the curl example's last line)."""
    proc = subprocess.Popen(
        _serve(db, "--port", str(port)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=_env(), cwd=ROOT,
    )  # fmt: skip
    procs.append(proc)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.lstrip().startswith("-d '"):
            break
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    banner = "".join(lines)
    found = {
        name: re.search(rf"export {name}=(\S+)", banner)
        for name in ("CAPGATE_URL", "CAPGATE_ADMIN_KEY", "CAPGATE_KEY")
    }
    assert all(found.values()), banner
    url, admin, key = (m.group(1) for m in found.values() if m is not None)
    return Demo(url, admin, key, banner)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        _stop(proc)
    procs.clear()


def works(demo: Demo, admin_key: str, demo_key: str, cookie: str | None = None) -> None:
    """The keys (and the dashboard session) of an earlier start work on `demo`."""
    with httpx.Client(base_url=demo.url, timeout=30) as http:
        answer = http.post("/v1/messages", json=HELLO, headers={"x-api-key": demo_key})
        assert answer.status_code == 200, answer.text
        keys = http.get("/admin/keys", headers={"authorization": f"Bearer {admin_key}"})
        assert keys.status_code == 200, keys.text
        if cookie is not None:
            session = http.get(
                "/dashboard/session", headers={"cookie": f"capgate_session={cookie}"}
            )
            assert session.status_code == 200 and session.json()["authenticated"], session.text


def login(demo: Demo) -> str:
    with httpx.Client(base_url=demo.url, timeout=30) as http:
        response = http.post("/dashboard/login", json={"password": demo.admin_key})
        assert response.status_code == 200, response.text
        return next(iter(http.cookies.values()))


def test_a_demo_restart_keeps_its_keys_and_sessions(
    tmp_path: Path, demos: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "capgate.db"
    first = start_demo(db, demos)
    secrets_file = Path(f"{db}.secrets")
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert str(secrets_file) in first.banner
    cookie = login(first)
    works(first, first.admin_key, first.demo_key, cookie)
    stop(demos)

    second = start_demo(db, demos)
    assert (second.admin_key, second.demo_key) == (first.admin_key, first.demo_key)
    assert "REPLACED" not in second.banner
    works(second, first.admin_key, first.demo_key, cookie)


def test_a_lost_secrets_file_replaces_the_keys_loudly(
    tmp_path: Path, demos: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "capgate.db"
    first = start_demo(db, demos)
    stop(demos)
    Path(f"{db}.secrets").unlink()
    second = start_demo(db, demos)
    assert second.admin_key != first.admin_key and second.demo_key != first.demo_key
    assert "WARNING: The admin key was REPLACED" in second.banner
    assert "Export the new CAPGATE_ADMIN_KEY" in second.banner
    assert "Export the new CAPGATE_KEY" in second.banner
    assert "WARNING: The demo key was REPLACED" in second.banner
    works(second, second.admin_key, second.demo_key)
    with httpx.Client(base_url=second.url, timeout=30) as http:
        old = http.post("/v1/messages", json=HELLO, headers={"x-api-key": first.demo_key})
        assert old.status_code == 401


def test_a_start_that_cannot_listen_changes_nothing(
    tmp_path: Path, demos: list[subprocess.Popen[str]]
) -> None:
    running = start_demo(tmp_path / "running.db", demos)
    port = int(running.url.rsplit(":", 1)[1])
    # Another database on the taken port: not even created. The same one: keys kept.
    fresh = tmp_path / "fresh.db"
    for db in (fresh, tmp_path / "running.db"):
        before = Path(f"{db}.secrets").read_bytes() if db.exists() else None
        done = subprocess.run(
            _serve(db, "--port", str(port)), capture_output=True, text=True, env=_env(),
            cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "export" not in done.stdout
        after = Path(f"{db}.secrets").read_bytes() if db.exists() else None
        assert before == after
    assert not fresh.exists() and not Path(f"{fresh}.secrets").exists()
    works(running, running.admin_key, running.demo_key)


def test_banner_leads_with_the_auth_token_and_help_names_the_dashboard(
    tmp_path: Path, demos: list[subprocess.Popen[str]]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = start_demo(tmp_path / "c.db", demos, port)
    assert f"export CAPGATE_URL=http://127.0.0.1:{port}" in demo.banner
    assert (
        f"ANTHROPIC_BASE_URL=http://127.0.0.1:{port} ANTHROPIC_AUTH_TOKEN=$CAPGATE_KEY claude"
        in demo.banner
    )
    assert "ANTHROPIC_API_KEY" not in demo.banner
    helped = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--help"], capture_output=True, text=True,
        cwd=ROOT, timeout=60, env={**_env(), "COLUMNS": "200"},
    )  # fmt: skip
    assert "admin API and dashboard on one port" in helped.stdout and "(later)" not in helped.stdout


def test_a_new_database_beside_a_kept_secrets_file_gets_the_same_keys(
    tmp_path: Path, demos: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "capgate.db"
    first = start_demo(db, demos)
    stop(demos)
    for path in tmp_path.glob("capgate.db*"):
        if not path.name.endswith(".secrets"):
            path.unlink()
    second = start_demo(db, demos)
    assert (second.admin_key, second.demo_key) == (first.admin_key, first.demo_key)
    assert "REPLACED" not in second.banner
    works(second, first.admin_key, first.demo_key)
