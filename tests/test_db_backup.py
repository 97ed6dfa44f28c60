"""`capgate db backup` / `capgate db restore`: a copy taken from a server under load is
one consistent moment (counters equal the ledger it holds), owner-only, and serves again
with the same keys once restored; a restore refuses what it must not do and changes
nothing then."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from capgate.store.backup import BackupError, backup
from capgate.store.sqlite_schema import MIGRATIONS, migrate
from conftest import ADMIN_KEY, ROOT, Capgate, Upstream, gateway_config, start_capgate

SCHEMA = len(MIGRATIONS)


def db_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capgate", "db", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )  # fmt: skip


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def ask(server: Capgate, key: str, words: int = 5) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": f"hi mock:words={words} mock:delay_ms=30"}],
        },
        timeout=30,
    )


def check_consistent(path: Path, key_name: str) -> int:
    """The copy opens, passes integrity_check, and its counters are exactly what its
    ledger and reservations say. Returns how many ledger entries it holds."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        (key_id,) = conn.execute(
            "SELECT id FROM scopes WHERE kind='key' AND name=?", (key_name,)
        ).fetchone()
        counter = f"key:{key_id}:cost_usd:day:"
        settled, reserved = conn.execute(
            "SELECT coalesce(sum(settled), 0), coalesce(sum(reserved), 0) FROM counters "
            "WHERE counter LIKE ? || '%'",
            (counter,),
        ).fetchone()
        spent, entries = conn.execute(
            "SELECT coalesce(sum(cost_nano), 0), count(*) FROM requests WHERE key_name=?",
            (key_name,),
        ).fetchone()
        held = 0
        for (charges,) in conn.execute("SELECT charges FROM reservations"):
            held += sum(a for c, _, _, a in json.loads(charges) if c.startswith(counter))
        assert settled == spent, (settled, spent)
        assert reserved == held, (reserved, held)
        return int(entries)
    finally:
        conn.close()


def ledger_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT id, request_id, key_name, cost_nano, outcome FROM requests ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_backup_under_load_is_consistent_and_restores_with_the_same_keys(
    upstream: Upstream, tmp_path: Path
) -> None:
    live = start_capgate(tmp_path, gateway_config(upstream))
    try:
        key = live.create_key("load", [{"metric": "cost_usd", "window": "day", "max": 100}])
        statuses: list[int] = []

        def load() -> None:
            for i in range(30):  # bounded: 4 threads x 30 requests
                statuses.append(ask(live, key, words=5 + i % 7).status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        copies = []
        while any(t.is_alive() for t in threads) or not copies:
            copy = tmp_path / f"backup-{len(copies)}.db"
            done = db_cli("backup", str(copy), "--database-url", url(live.db))
            assert done.returncode == 0, done.stderr
            assert f"to {copy} (owner-only)" in done.stdout
            copies.append(copy)
        for thread in threads:
            thread.join()
        assert statuses == [200] * 120
        # A settlement is queued before an answer's last bytes and commits a moment later
        # (with the next group of writes): wait for the last ones to reach the file.
        deadline = time.monotonic() + 10
        while len(final := ledger_rows(live.db)) < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(final) == 120
        # Taken under load: some copy holds part of the traffic (each request takes 30 ms+).
        assert any(0 < len(ledger_rows(c)) < 120 for c in copies), copies
        for copy in copies:
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            held = check_consistent(copy, "load")
            rows = ledger_rows(copy)
            assert len(rows) == held
            assert rows == final[: len(rows)]  # a prefix of what the server went on to write
    finally:
        live.close()

    # Restored into a fresh place, it serves: the key works and its ledger is there.
    fresh = tmp_path / "fresh" / "capgate.db"
    fresh.parent.mkdir()
    done = db_cli("restore", str(copies[-1]), env={"CAPGATE_DATABASE_URL": url(fresh)})
    assert done.returncode == 0, done.stderr
    assert "kept at" not in done.stdout  # nothing was replaced
    before = len(ledger_rows(fresh))
    restored = start_capgate(tmp_path, gateway_config(upstream), db=fresh)
    try:
        assert ask(restored, key).status_code == 200
        assert len(restored.ledger(key="load")) == before + 1
        bad = ask(restored, key[:-4] + "abcd")
        assert bad.status_code == 401
    finally:
        restored.close()


def test_the_copy_is_one_moment_even_when_writes_land_between_its_steps(
    tmp_path: Path,
) -> None:
    db = tmp_path / "capgate.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.executemany("INSERT INTO filler VALUES (randomblob(4000))", [()] * 200)
    writes = []

    def write_between_steps(copied: int, total: int) -> None:
        if len(writes) < 5:  # a server committing while the copy runs
            conn.execute(
                "INSERT INTO requests (request_id, created_at, status, outcome) "
                "VALUES (?, 0, 200, 'ok')",
                (f"during-{len(writes)}",),
            )
            writes.append(copied)

    result = backup(db, tmp_path / "copy.db", pages_per_step=20, progress=write_between_steps)
    assert len(writes) == 5 and result.requests == 0  # none of the later writes
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 5  # source usable
    conn.close()


def test_backup_refuses_to_overwrite_and_needs_a_database(tmp_path: Path) -> None:
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(BackupError, match="no database at"):
        backup(tmp_path / "missing.db", tmp_path / "x.db")
    source = tmp_path / "capgate.db"
    conn = sqlite3.connect(source)
    migrate(conn)
    conn.close()
    done = db_cli("backup", str(existing), "--database-url", url(source))
    assert done.returncode == 1
    assert "already exists" in done.stderr
    assert existing.read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".*tmp*"))


def test_backup_and_restore_of_a_postgresql_database_point_to_pg_dump(tmp_path: Path) -> None:
    for command in ("backup", "restore"):
        target = tmp_path / f"{command}.db"
        done = db_cli(command, str(target), "--database-url", "postgresql://u@127.0.0.1/capgate")
        assert done.returncode == 2, done.stderr
        assert "PostgreSQL" in done.stderr and "pg_dump" in done.stderr
        assert not target.exists() and list(tmp_path.iterdir()) == []


def make_db(path: Path, version: int) -> None:
    """A capgate database at an older schema version, with a key-shaped row in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO scopes (kind, id, name, created_at, updated_at) VALUES ('key','k1','old',0,0)"
    )
    conn.close()


def test_restore_migrates_an_older_backup_and_keeps_the_replaced_file(tmp_path: Path) -> None:
    old, target = tmp_path / "old-backup.db", tmp_path / "capgate.db"
    make_db(old, 5)
    make_db(target, SCHEMA)
    replaced = target.read_bytes()
    done = db_cli("restore", str(old), "--database-url", url(target))
    assert done.returncode == 0, done.stderr
    assert f"schema version {SCHEMA}, migrated from schema version 5" in done.stdout
    (aside,) = tmp_path.glob("capgate.db.before-restore-*")
    assert f"kept at {aside}" in done.stdout
    assert aside.read_bytes() == replaced
    conn = sqlite3.connect(target)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA
    assert conn.execute("SELECT name FROM scopes").fetchall() == [("old",)]
    conn.close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_restore_refuses_what_is_not_a_good_capgate_database(tmp_path: Path) -> None:
    target = tmp_path / "capgate.db"
    make_db(target, SCHEMA)
    before = target.read_bytes()
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    newer = tmp_path / "newer.db"
    make_db(newer, SCHEMA)
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {SCHEMA + 1}").connection.close()
    damaged = tmp_path / "damaged.db"
    make_db(damaged, SCHEMA)
    conn = sqlite3.connect(damaged)
    conn.executemany(
        "INSERT INTO requests (request_id, created_at, status, outcome) VALUES (?, 0, 200, 'ok')",
        [(f"r{i}",) for i in range(2000)],
    )
    conn.commit()
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name='requests_created'"
    ).fetchone()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with damaged.open("r+b") as f:  # scribble over the index's root page
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)
    for source, message in [
        (text, "is not a SQLite database"),
        (other, "is not a capgate database"),
        (newer, f"schema version {SCHEMA + 1}, newer than this capgate knows"),
        (damaged, "integrity_check"),
        (tmp_path / "missing.db", "no backup at"),
    ]:
        done = db_cli("restore", str(source), "--database-url", url(target))
        assert done.returncode == 1, (source, done.stdout)
        assert message in done.stderr, (source, done.stderr)
        assert target.read_bytes() == before
        assert not list(tmp_path.glob("capgate.db.before-restore-*"))
        assert not list(tmp_path.glob(".*tmp*"))


def test_restore_refuses_while_a_server_holds_the_database(
    capgate: Capgate, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.db"
    done = db_cli("backup", str(copy), "--database-url", url(capgate.db))
    assert done.returncode == 0, done.stderr
    before = ledger_rows(capgate.db)
    done = db_cli("restore", str(copy), "--database-url", url(capgate.db))
    assert done.returncode == 1
    assert "a capgate server (process" in done.stderr and "stop every server" in done.stderr
    assert not list(capgate.db.parent.glob("capgate.db.before-restore-*"))
    assert capgate.admin("GET", "/health/ready").status_code == 200
    assert ledger_rows(capgate.db) == before
    assert ADMIN_KEY not in done.stderr
