"""`capgate db copy`: a SQLite database with real traffic moved into PostgreSQL, verified,
and served from there with the same keys, usage and budgets (they continue exactly)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

import pgcluster
from conftest import ROOT, Capgate, Upstream, gateway_config, kill_during_stream, start_capgate
from test_nodes import start_node

TABLES = (
    "meta", "scopes", "counters", "reservations", "requests", "audit", "sessions", "hook_codes",
    "hook_machines",
)  # fmt: skip


def copy(source: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capgate", "db", "copy", "--from", f"sqlite:///{source}",
         "--to", target],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip


def ask(server: Capgate, key: str, text: str = "mock:words=7") -> httpx.Response:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    }
    return httpx.post(server.url + "/v1/messages", json=body, headers={"x-api-key": key})


def traffic(server: Capgate) -> dict[str, str]:
    """A team with a dollar budget, keys in it, a user, ok and refused requests, a paused
    key, a lowered limit (audit entries): what a team that has run a while has."""
    team = server.admin(
        "POST", "/admin/teams", json={"name": "core", "limits": [{"metric": "cost_usd", "window": "month", "max": 5}]}
    )  # fmt: skip
    assert team.status_code == 201, team.text
    assert server.admin("POST", "/admin/users", json={"name": "ada"}).status_code == 201
    keys = {
        "five": server.create_key(
            "five", [{"metric": "requests", "window": "day", "max": 5}], team="core", user="ada"
        ),
        "dollars": server.create_key(
            "dollars", [{"metric": "cost_usd", "window": "day", "max": "0.005"}], team="core"
        ),
        "paused": server.create_key("paused", []),
    }
    for _ in range(3):
        assert ask(server, keys["five"]).status_code == 200
    statuses = [ask(server, keys["dollars"], "mock:words=300").status_code for _ in range(12)]
    assert 200 in statuses and 402 in statuses  # the budget ran out on the way
    assert server.admin("POST", "/admin/keys/paused/pause").status_code == 200
    assert ask(server, keys["paused"]).status_code == 403
    hook_mode(server)
    return keys


def hook_mode(server: Capgate) -> None:
    """A machine of ada's enrolled with an install code (another code left open), a
    prompt gated and its call reported: hook rows and ledger entries with a session."""
    code = server.admin("POST", "/admin/hook/codes", json={"user": "ada"}).json()["code"]
    server.admin("POST", "/admin/hook/codes", json={"user": "ada"})
    body = {"code": code, "hostname": "box", "os": "linux", "os_user": "ada", "agents": ["claude"]}
    token = httpx.post(server.url + "/hook/v1/enrol", json=body).json()["token"]
    auth = {"authorization": f"Bearer {token}"}
    gate = {"agent": "claude", "session_id": "s", "prompt_id": "p", "model": "claude-sonnet-4-6"}
    assert (
        httpx.post(server.url + "/hook/v1/gate", json=gate, headers=auth).json()["decision"]
        == "allow"
    )
    calls = [{"id": "r1", "prompt_id": "p", "model": "claude-sonnet-4-6", "input": 5, "output": 7}]
    report = {"agent": "claude", "session_id": "s", "calls": calls}
    assert (
        httpx.post(server.url + "/hook/v1/report", json=report, headers=auth).json()["recorded"]
        == 1
    )


def sqlite_facts(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        return {
            "rows": {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES},
            "cost": conn.execute("SELECT sum(cost_nano) FROM requests").fetchone()[0],
            "counters": conn.execute("SELECT sum(settled), sum(reserved) FROM counters").fetchone(),
            "max_id": conn.execute("SELECT max(id) FROM requests").fetchone()[0],
            "ledger": conn.execute(
                "SELECT id, request_id, key_name, outcome, cost_nano, flags, session, prompt "
                "FROM requests ORDER BY id"
            ).fetchall(),
            "hashes": conn.execute(
                "SELECT name, hex(secret_hash) FROM scopes WHERE kind = 'key' ORDER BY name"
            ).fetchall(),
            "meta": conn.execute("SELECT k, v FROM meta ORDER BY k").fetchall(),
        }
    finally:
        conn.close()


# What only PostgreSQL has, left out of the comparison (plan_version: checked on its own)
PG_ONLY = {t: "" for t in TABLES} | {"meta": " WHERE k <> 'plan_version'"}


def pg_facts(cluster: pgcluster.Cluster, db: str) -> dict[str, Any]:
    def one(sql: str) -> str:
        return cluster.sql(sql, db)

    def rows(sql: str) -> list[tuple[str, ...]]:
        return [tuple(line.split("|")) for line in one(sql).splitlines()]

    return {
        "rows": {t: int(one(f"SELECT count(*) FROM {t}{PG_ONLY[t]}")) for t in TABLES},
        "cost": int(one("SELECT sum(cost_nano) FROM requests")),
        "counters": tuple(int(v) for v in one("SELECT sum(settled), sum(reserved) FROM counters").split("|")),
        "max_id": int(one("SELECT max(id) FROM requests")),
        "ledger": rows("SELECT id, request_id, key_name, outcome, cost_nano, coalesce(flags, ''), coalesce(session, ''), coalesce(prompt, '') FROM requests ORDER BY id"),
        "hashes": rows("SELECT name, upper(encode(secret_hash, 'hex')) FROM scopes WHERE kind = 'key' ORDER BY name"),
        "meta": rows(f"SELECT k, v FROM meta{PG_ONLY['meta']} ORDER BY k"),
    }  # fmt: skip


def as_text(facts: dict[str, Any]) -> dict[str, Any]:
    """SQLite's facts as psql prints them (to compare the two)."""
    return {
        **facts,
        "counters": tuple(facts["counters"]),
        "ledger": [tuple("" if v is None else str(v) for v in row) for row in facts["ledger"]],
        "hashes": [tuple(row) for row in facts["hashes"]],
        "meta": [tuple(row) for row in facts["meta"]],
    }


@pytest.fixture
def used_sqlite(upstream: Upstream, tmp_path: Path) -> tuple[Path, dict[str, str], Capgate]:
    """A SQLite database after real traffic, its server stopped; and that server's last
    view of the keys (usage) for comparison."""
    server = start_capgate(tmp_path, gateway_config(upstream))
    try:
        keys = traffic(server)
        server.admin("GET", "/admin/keys")  # its queued settlements are written
    finally:
        server.close()
    return server.db, keys, server


def test_copy_is_complete_and_checked(
    used_sqlite: tuple[Path, dict[str, str], Capgate], postgres: pgcluster.Cluster
) -> None:
    db, _, _ = used_sqlite
    target = postgres.new_database("copy")
    done = copy(db, target)
    assert done.returncode == 0, done.stderr
    assert "checked" in done.stdout and "requests" in done.stdout
    name = target.rsplit("/", 1)[1]
    source, copied = as_text(sqlite_facts(db)), pg_facts(postgres, name)
    assert copied == source
    assert copied["rows"]["requests"] >= 16 and copied["rows"]["audit"] >= 5
    assert (copied["rows"]["hook_codes"], copied["rows"]["hook_machines"]) == (2, 1)
    assert ("p", "s") in {(row[-1], row[-2]) for row in copied["ledger"]}  # session, prompt
    # The identity goes on past the copied ids.
    assert (
        int(postgres.sql("SELECT nextval(pg_get_serial_sequence('requests', 'id'))", name))
        > copied["max_id"]
    )
    # The processes of the source are not copied: the target's nodes write their own.
    assert postgres.sql("SELECT count(*) FROM processes", name) == "0"
    # Reservations are checked against plan_version: the copied configuration's.
    versions = "SELECT v FROM meta WHERE k IN ('config_version', 'plan_version') ORDER BY k"
    assert postgres.sql(versions, name).split() == [dict(source["meta"])["config_version"]] * 2

    # A second copy into the same database is refused and changes nothing.
    again = copy(db, target)
    assert again.returncode == 1
    assert "not empty" in again.stderr and "Traceback" not in again.stderr
    assert pg_facts(postgres, name) == copied


def test_refusals_change_nothing(tmp_path: Path, postgres: pgcluster.Cluster) -> None:
    target = postgres.new_database("refused")
    name = target.rsplit("/", 1)[1]
    missing = copy(tmp_path / "absent.db", target)
    assert missing.returncode == 1 and "no database at" in missing.stderr
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    foreign = copy(other, target)
    assert foreign.returncode == 1 and "not a capgate database" in foreign.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "capgate", "db", "copy", "--from", "postgresql://x/y", "--to", target],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1 and "sqlite:///PATH" in bad.stderr
    # Nothing was created in the target (not even the schema) by the refusals above.
    assert postgres.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", name) == "0"


def test_a_copied_database_serves_on_postgres(
    used_sqlite: tuple[Path, dict[str, str], Capgate],
    postgres: pgcluster.Cluster,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    """Keys work, usage is the same, budgets continue exactly where they were."""
    db, keys, _ = used_sqlite
    before = start_capgate(tmp_path, gateway_config(upstream), db=db)
    try:
        usage = {n: before.key_usage(n) for n in ("five", "dollars", "paused")}
        team = before.admin("GET", "/admin/teams/core").json()["usage"]
        ledger = before.ledger()
    finally:
        before.close()
    target = postgres.new_database("served")
    assert copy(db, target).returncode == 0
    node = start_node(tmp_path, gateway_config(upstream), target)
    try:
        assert {n: node.key_usage(n) for n in usage} == usage
        assert node.admin("GET", "/admin/teams/core").json()["usage"] == team
        assert node.ledger() == ledger
        # Budgets continue: 3 of 5 requests were used, so 2 more pass and the next is refused.
        assert [ask(node, keys["five"]).status_code for _ in range(3)] == [200, 200, 402]
        assert ask(node, keys["dollars"], "mock:words=300").status_code == 402  # spent
        assert ask(node, keys["paused"]).status_code == 403  # still paused
        five = {u["metric"]: u for u in node.key_usage("five")}["requests"]
        assert five["used"] == 5 and five["reserved"] == 0
        entries = node.ledger(key="five")
        assert len(entries) == 3 + 3
        assert max(e["id"] for e in entries) > max(e["id"] for e in ledger)  # new ids after
        cost = {u["metric"]: u for u in node.key_usage("dollars")}["cost_usd"]
        spent = sum(Decimal(e["cost_usd"]) for e in node.ledger(key="dollars"))
        assert Decimal(cost["used"]) == spent
    finally:
        node.close()


def test_reservations_of_a_dead_server_are_charged_on_postgres(
    upstream: Upstream, postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    """A SQLite server killed mid-stream leaves a reservation and the counters holding it;
    the copy keeps both, and the first PostgreSQL node charges it in full (lease_expired):
    the books balance there as they would have on SQLite."""
    server = start_capgate(tmp_path, gateway_config(upstream))
    key = server.create_key("cut", [{"metric": "cost_usd", "window": "day", "max": 10}])
    assert ask(server, key).status_code == 200
    slow = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "mock:words=200 mock:stream_delay_ms=100"}],
    }
    kill_during_stream(server, slow, key)
    assert sqlite_facts(server.db)["rows"]["reservations"] == 1
    target = postgres.new_database("dead")
    done = copy(server.db, target)
    assert done.returncode == 0, done.stderr
    assert "1 settlement journal file(s)" in done.stdout  # the dead server left its journal
    node = start_node(tmp_path, gateway_config(upstream), target)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            entries = node.ledger(key="cut")
            if any(e["outcome"] == "lease_expired" for e in entries):
                break
            time.sleep(0.3)
        assert sorted(e["outcome"] for e in entries) == ["lease_expired", "ok"]
        expired = next(e for e in entries if e["outcome"] == "lease_expired")
        assert expired["output_tokens"] == 1000  # the whole max_tokens
        cost = {u["metric"]: u for u in node.key_usage("cut")}["cost_usd"]
        assert Decimal(cost["reserved"]) == 0
        assert Decimal(cost["used"]) == sum(Decimal(e["cost_usd"]) for e in entries)
    finally:
        node.close()
