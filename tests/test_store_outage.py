"""Nothing lost at the edges: a store outage longer than a lease and than any retry
schedule, a process killed while its settlements wait, a live process stalled past its
lease, a database that cannot be written at start.

Real servers and the real mock upstream; the outage is another program holding SQLite's
write lock on the file (`BEGIN IMMEDIATE`) for as long as the test wants.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml

from conftest import Capgate, Upstream, gateway_config, start_capgate

# A short lease and lock wait, so an outage of a few seconds outlasts both (and the five
# tries the gateway used to make: ~9 s of waits with a 0.5 s lock wait).
SERVER = {"lease_seconds": 2, "store_busy_timeout_s": 0.5}
# A total window: a test that spans midnight UTC would read the next day's counters
# (empty) while its requests count in the day they were admitted.
BUDGET = [{"metric": "cost_usd", "window": "total", "max": 10}]


class WriteLock:
    """Another program holding the database's write lock until `release`."""

    def __init__(self, db: Path) -> None:
        code = (
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
            "conn.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "conn.execute('ROLLBACK')\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


class Stream(threading.Thread):
    """One streamed Messages request; remembers its status and the usage it was told."""

    def __init__(self, url: str, key: str, words: int = 40, delay_ms: int = 50) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.prompt = f"outage mock:words={words} mock:stream_delay_ms={delay_ms}"
        self.started = threading.Event()
        self.status = 0
        self.request_id = ""
        self.body = b""
        self.start()

    def run(self) -> None:
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 1000,
            "stream": True,
            "messages": [{"role": "user", "content": self.prompt}],
        }
        with httpx.stream(
            "POST", self.url + "/v1/messages", json=body, headers={"x-api-key": self.key},
            timeout=60,
        ) as response:  # fmt: skip
            self.status = response.status_code
            self.request_id = response.headers.get("x-capgate-request-id", "")
            for chunk in response.iter_bytes():
                self.started.set()
                self.body += chunk

    def usage(self) -> tuple[int, int]:
        """(input, output) tokens, as the answer told the client."""
        text = self.body.decode()
        input_tokens = int(re.findall(r'"input_tokens":\s*(\d+)', text)[0])
        output_tokens = int(re.findall(r'"output_tokens":\s*(\d+)', text)[-1])
        return input_tokens, output_tokens


def _start_streams(server: Capgate, key: str, n: int) -> list[Stream]:
    streams = [Stream(server.url, key) for _ in range(n)]
    for stream in streams:
        assert stream.started.wait(15)
    return streams


def _ready(server: Capgate) -> httpx.Response:
    return httpx.get(server.url + "/health/ready", timeout=10)


def _wait_ready(server: Capgate, status: int, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        response = _ready(server)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return dict(response.json())
        time.sleep(0.2)


def _journal_lines(db: Path) -> int:
    folder = Path(str(db) + "-settlements")
    if not folder.is_dir():
        return 0
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl"))


def _check_books(server: Capgate, name: str, streams: list[Stream]) -> None:
    """One ledger entry per answered request, with the usage the client was told and
    its exact price; nothing held; the counter equals the ledger, under the budget."""
    assert all(s.status == 200 for s in streams)
    entries = {e["request_id"]: e for e in server.ledger(key=name)}
    assert set(entries) == {s.request_id for s in streams}, entries
    for stream in streams:
        entry = entries[stream.request_id]
        assert (entry["outcome"], entry["status"], entry["flags"]) == ("ok", 200, [])
        input_tokens, output_tokens = stream.usage()
        assert (entry["input_tokens"], entry["output_tokens"]) == (input_tokens, output_tokens)
        # claude-sonnet-4-6: $3 and $15 per million tokens
        exact = Decimal(input_tokens * 3 + output_tokens * 15) / 10**6
        assert Decimal(entry["cost_usd"]) == exact
    cost = {u["metric"]: u for u in server.key_usage(name)}["cost_usd"]
    assert Decimal(cost["reserved"]) == 0
    assert Decimal(cost["used"]) == sum(Decimal(e["cost_usd"]) for e in entries.values())
    assert Decimal(cost["used"]) <= 10


def test_answers_given_during_a_store_outage_are_all_settled(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = gateway_config(upstream, server=SERVER)
    first = start_capgate(tmp_path, config)
    other = start_capgate(tmp_path, config, db=first.db)  # would sweep a process taken for dead
    try:
        key = first.create_key("outage", BUDGET)
        assert _ready(first).json()["status"] == "ready"
        streams = _start_streams(first, key, 3)
        lock = WriteLock(first.db)
        try:
            for stream in streams:
                stream.join(30)
            assert [s.status for s in streams] == [200, 200, 200]  # answered in the outage
            assert _journal_lines(first.db) == 3  # kept on disk beside the database
            ready = _wait_ready(first, 503, within=5)
            assert ready["status"] == "not_ready"
            assert any("cannot be written" in reason for reason in ready["reasons"]), ready
            assert ready["settlements_waiting"] == 3
            live = httpx.get(first.url + "/health", timeout=10)
            assert live.status_code == 200 and live.json()["status"] == "ok"
            time.sleep(16)  # longer than the lease, and than any fixed number of tries
            assert _ready(first).json()["settlements_waiting"] == 3
        finally:
            lock.release()
        ready = _wait_ready(first, 200, within=20)
        assert ready["settlements_waiting"] == 0 and ready["reasons"] == []
        _check_books(first, "outage", streams)
    finally:
        other.close()
        first.close()
    assert _journal_lines(first.db) == 0  # nothing waits: the journal went with the process


def test_settlements_journaled_by_a_killed_process_are_replayed_once(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = gateway_config(upstream, server=SERVER)
    first = start_capgate(tmp_path, config)
    key = first.create_key("killed", BUDGET)
    streams = _start_streams(first, key, 3)
    lock = WriteLock(first.db)
    try:
        for stream in streams:
            stream.join(30)
        assert _journal_lines(first.db) == 3
        first.proc.send_signal(signal.SIGKILL)  # its settlements were never written
        first.proc.wait(10)
        first.close()
    finally:
        lock.release()
    for _ in range(2):  # a restart replays the journal; the next finds nothing left to do
        server = start_capgate(tmp_path, config, db=first.db)
        try:
            _check_books(server, "killed", streams)
            assert _journal_lines(first.db) == 0
        finally:
            server.close()


def test_a_live_process_stalled_past_its_lease_is_not_swept(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = gateway_config(upstream, server=SERVER)
    first = start_capgate(tmp_path, config)
    other = start_capgate(tmp_path, config, db=first.db)  # renews every 1/3 s, sweeps
    try:
        key = first.create_key("stalled", BUDGET)
        (stream,) = _start_streams(first, key, 1)
        first.proc.send_signal(signal.SIGSTOP)  # alive, silent for more than a lease
        time.sleep(5)
        first.proc.send_signal(signal.SIGCONT)
        stream.join(30)
        _check_books(first, "stalled", [stream])
    finally:
        first.proc.send_signal(signal.SIGCONT)
        other.close()
        first.close()


def test_a_database_that_cannot_be_written_stops_serve_with_one_line(
    upstream: Upstream, tmp_path: Path
) -> None:
    config_path = tmp_path / "capgate.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(upstream)))
    (tmp_path / "not-a-dir").write_text("")
    db = tmp_path / "not-a-dir" / "capgate.db"
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config_path), "--port", "0",
         "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CAPGATE_ADMIN_KEY": "sk-cg-admin-test-0123456789abcdef"},
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"capgate: cannot start: cannot open the database {db}"), lines
    assert "permissions" in lines[0] and "Traceback" not in done.stdout + done.stderr
    json.dumps(lines)  # printable as it is
