"""Fail open per key: while the store cannot be reached, a key an admin set `fail_open`
is forwarded un-reserved and its usage recorded exactly once when the store is back
(flagged `fail_open`, counters moved, also through the journal of a killed process);
every other key is refused at once in its client's dialect.

Both engines, real servers, the real mock upstream: SQLite made unwritable by another
program holding its write lock (as tests/test_store_outage.py does), PostgreSQL stopped
with the `postgres` fixture.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

import pgcluster
from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_cli import run_cli
from test_nodes import start_node
from test_store_outage import WriteLock

SERVER = {"lease_seconds": 2, "store_busy_timeout_s": 0.5, "pg_statement_timeout_s": 2}
# Less than one request at its worst case (1000 output tokens of claude-sonnet-4-6 cost
# $0.015): only a fail-open request can get past it.
TINY = [
    {"metric": "cost_usd", "window": "day", "max": "0.001"},
    {"metric": "requests", "window": "day", "max": 1000},
]
BUDGET = [{"metric": "cost_usd", "window": "day", "max": 10}]
ENGINES = ["sqlite", "postgres"]


def ask(server: Capgate, key: str, words: int = 40) -> httpx.Response:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": f"fail open mock:words={words}"}],
    }
    return httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    )


def ask_chat(server: Capgate, key: str) -> httpx.Response:
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "fail closed mock:words=5"}],
    }
    return httpx.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def check_refused_at_once(server: Capgate, key: str, within: float) -> None:
    """A fail-closed key while the store is down: 503 at once (`within` seconds: on
    SQLite, the write lock's busy timeout and the writer's retries), in each dialect."""
    began = time.monotonic()
    answer = ask(server, key)
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["message"]
    assert "x-capgate-fail-open" not in answer.headers
    chat = ask_chat(server, key)
    assert chat.status_code == 503, chat.text
    assert chat.json()["error"]["message"]
    assert time.monotonic() - began < 2 * within


def check_books(server: Capgate, name: str, answers: list[httpx.Response]) -> None:
    """One ledger entry per fail-open answer, flagged, with the usage the client was
    told at its exact price; the counters moved by exactly that, nothing reserved."""
    entries = [e for e in server.ledger(key=name) if e["outcome"] != "refused"]
    ids = [a.headers["x-capgate-request-id"] for a in answers]
    assert sorted(e["request_id"] for e in entries) == sorted(ids), entries
    total = Decimal(0)
    for answer in answers:
        (entry,) = [e for e in entries if e["request_id"] == answer.headers["x-capgate-request-id"]]
        assert (entry["outcome"], entry["status"], entry["flags"]) == ("ok", 200, ["fail_open"])
        usage = answer.json()["usage"]
        assert (entry["input_tokens"], entry["output_tokens"]) == (
            usage["input_tokens"],
            usage["output_tokens"],
        )
        exact = Decimal(usage["input_tokens"] * 3 + usage["output_tokens"] * 15) / 10**6
        assert Decimal(entry["cost_usd"]) == exact
        total += exact
    usage_of = {u["metric"]: u for u in server.key_usage(name)}
    assert Decimal(usage_of["cost_usd"]["reserved"]) == 0
    assert Decimal(usage_of["cost_usd"]["used"]) == total
    assert Decimal(usage_of["cost_usd"]["used"]) > Decimal("0.001")  # past the limit: by design
    assert Decimal(usage_of["requests"]["used"]) == len(answers)
    assert Decimal(usage_of["requests"]["reserved"]) == 0


def journals_lines(journals: dict[Path, bytes]) -> int:
    return sum(len(data.splitlines()) for data in journals.values())


def wait_for(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Engine:
    """One engine's server and its outage."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp: Path, upstream: Upstream):
        self.kind, self.tmp = kind, tmp
        self.config = gateway_config(upstream, server={**SERVER, "state_dir": str(tmp / "state")})
        self.cluster: pgcluster.Cluster | None = None
        self.lock: WriteLock | None = None
        if kind == "postgres":
            self.cluster = request.getfixturevalue("postgres")
            self.url = self.cluster.new_database("failopen")
        else:
            self.url = f"sqlite:///{tmp / 'capgate.db'}"

    def start(self) -> Capgate:
        if self.kind == "sqlite":
            return start_capgate(self.tmp, self.config, db=self.tmp / "capgate.db")
        return start_node(self.tmp, self.config, self.url)

    def down(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.lock = WriteLock(self.tmp / "capgate.db")

    def up(self) -> None:
        if self.cluster is not None:
            if not self.cluster.running():
                self.cluster.start()
        elif self.lock is not None:
            self.lock.release()
            self.lock = None


@contextmanager
def engine(
    kind: str, request: pytest.FixtureRequest, tmp: Path, upstream: Upstream
) -> Iterator[Engine]:
    found = Engine(kind, request, tmp, upstream)
    try:
        yield found
    finally:
        found.up()


def setup_keys(server: Capgate) -> tuple[str, str]:
    """A fail-open key (set on update: the change is audited) and a fail-closed one."""
    open_key = server.create_key("open", TINY)
    changed = server.admin("PATCH", "/admin/keys/open", json={"fail_open": True})
    assert changed.status_code == 200 and changed.json()["fail_open"] is True, changed.text
    audit = server.admin("GET", "/admin/audit").json()["items"][0]
    assert (audit["action"], audit["target"]) == ("update", "key:open")
    assert (audit["before"]["fail_open"], audit["after"]["fail_open"]) == (False, True)
    closed_key = server.create_key("closed", BUDGET)
    assert server.admin("GET", "/admin/keys/closed").json()["fail_open"] is False
    return open_key, closed_key


@pytest.mark.parametrize("kind", ENGINES)
def test_a_fail_open_key_answers_while_the_store_is_down_and_is_charged_once(
    kind: str, request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> None:
    with engine(kind, request, tmp_path, upstream) as store:
        server = store.start()
        try:
            open_key, closed_key = setup_keys(server)
            before = ask(server, open_key)  # its worst case is over the budget: refused
            assert before.status_code in (402, 429) and "x-capgate-fail-open" not in before.headers
            store.down()
            answers = [ask(server, open_key) for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
            assert all(a.headers["x-capgate-fail-open"] == "true" for a in answers)
            check_refused_at_once(server, closed_key, 4.0 if kind == "sqlite" else 1.0)
            store.up()
            wait_for(lambda: len(server.ledger(key="open")) >= 4, within=30)
            refused = [e for e in server.ledger(key="open") if e["outcome"] == "refused"]
            assert len(refused) == 1  # the 402 before the outage
            check_books(server, "open", answers)
            scraped = httpx.get(server.url + "/metrics", timeout=10).text
            assert 'capgate_fail_open_requests_total{endpoint="messages"} 3.0' in scraped
        finally:
            server.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_fail_open_settlements_of_a_killed_process_are_replayed_once(
    kind: str, request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> None:
    with engine(kind, request, tmp_path, upstream) as store:
        first = store.start()
        open_key, _ = setup_keys(first)
        store.down()
        try:
            answers = [ask(first, open_key) for _ in range(2)]
            assert [a.status_code for a in answers] == [200, 200], answers[0].text
            first.proc.send_signal(signal.SIGKILL)  # its settlements were never written
            first.proc.wait(10)
        finally:
            first.close()
            store.up()
        journals = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")}
        assert len(journals) == 1 and journals_lines(journals) == 2, journals
        for _ in range(2):  # a restart replays the journal; the same journal again: no change
            for path, data in journals.items():
                path.write_bytes(data)
            server = store.start()
            try:
                wait_for(lambda: not any(p.exists() for p in journals), within=30)
                check_books(server, "open", answers)
            finally:
                server.close()


def test_the_cli_sets_and_clears_fail_open_and_each_change_is_audited(
    capgate: Capgate, key_name: str
) -> None:
    created = run_cli(capgate, "keys", "create", key_name, "--fail-open", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["fail_open"] is True
    shown = run_cli(capgate, "keys", "show", key_name)
    assert "fail open: yes" in shown.stdout, shown.stdout
    updated = run_cli(capgate, "keys", "update", key_name, "--no-fail-open", "--json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["fail_open"] is False
    audit = [
        e for e in capgate.admin("GET", "/admin/audit").json()["items"]
        if e["target"] == f"key:{key_name}"
    ]  # fmt: skip
    assert [(e["action"], e["after"]["fail_open"]) for e in audit] == [
        ("update", False),
        ("create", True),
    ]
    assert audit[0]["before"]["fail_open"] is True
    bad = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"fail_open": "maybe"})
    assert bad.status_code == 400 and "fail_open" in bad.text, bad.text
