"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temp dir, `postgres` on a
loopback port, run as an unprivileged user (PostgreSQL refuses root), removed at the end.

The server binaries must be on PATH (`initdb`, `pg_ctl`, `postgres`; Debian keeps them in
/usr/lib/postgresql/N/bin, which is searched too). Each test that needs a database asks
`new_database()` for one of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "capgate"


def _find(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True):
        return candidate
    return None


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres", "psql"):
        if _find(tool) is None:
            return f"PostgreSQL's {tool} is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root and no unprivileged user (postgres or nobody) to run PostgreSQL"
    return None


def _run_as() -> str | None:
    """The user to run the server as when we are root (PostgreSQL refuses root)."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="capgate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = _run_as() if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self._pg_ctl = _find("pg_ctl") or "pg_ctl"
        self._psql = _find("psql") or "psql"
        self._bin(
            [
                _find("initdb") or "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )

    @property
    def url(self) -> str:
        """The maintenance database (`postgres`) as the superuser."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _bin(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            user=self._user,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=300",
                "-c fsync=off",  # a throwaway cluster: speed over crash safety
                "-c full_page_writes=off",
                "-c shared_buffers=64MB",
            ]
        )
        self._bin(
            [
                self._pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        self._bin([self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def running(self) -> bool:
        result = self._bin([self._pg_ctl, "-D", str(self.data), "status"], check=False)
        return result.returncode == 0

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output, unaligned and without headers."""
        result = subprocess.run(
            [self._psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.url_of(database)],
            input=statement,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip()

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def terminate_backends(self, database: str) -> int:
        """pg_terminate_backend every connection to `database` (not our own); how many."""
        out = self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        return int(out or 0)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    started = Cluster()
    try:
        started.start()
        deadline = time.monotonic() + 30
        while not started.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield started
    finally:
        started.remove()
