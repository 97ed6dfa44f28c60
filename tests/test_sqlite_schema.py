"""The SQLite file: migrations move an existing database to the newest schema and keep its
rows; checkpoints keep the WAL from growing without end under steady load."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from capgate.store import sqlite as sqlite_store
from capgate.store import sqlite_schema
from capgate.store.sqlite_schema import MIGRATIONS, migrate


def test_a_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)  # again: nothing to do


def test_reservations_in_flight_survive_the_move_to_a_table_without_rowid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS[:5])
    migrate(conn)  # a database as version 5 left it, with two requests in flight
    rows = [
        ("r1", "proc-a", 1.5, '[["key:a:requests:day",0,1]]', '{"request_id":"r1"}'),
        ("r2", "proc-b", 2.5, "[]", '{"request_id":"r2"}'),
    ]
    conn.executemany("INSERT INTO reservations VALUES (?,?,?,?,?)", rows)
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT * FROM reservations ORDER BY id").fetchall() == rows
    table_sql = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='table' AND name='reservations'"
    ).fetchone()[0]
    assert "WITHOUT ROWID" in table_sql
    indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='reservations'"
    ).fetchall()
    assert indexes == []  # no owner index, no automatic index on id beside the table
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO reservations VALUES ('r1', 'x', 0, '[]', '{}')")


def _wal_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA journal_size_limit=65536")
    conn.execute("CREATE TABLE IF NOT EXISTS t (v BLOB)")
    return conn


def test_a_long_wal_starts_over_and_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 100)
    writer, checkpointer = _wal_db(tmp_path / "db"), _wal_db(tmp_path / "db")
    wal = tmp_path / "db-wal"
    for _ in range(300):
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
    assert wal.stat().st_size > 1_000_000
    assert sqlite_store.checkpoint(checkpointer) == ("restart", 0)
    writer.execute("INSERT INTO t VALUES (randomblob(3000))")  # the WAL starts over ...
    assert wal.stat().st_size <= 65536  # ... cut back to journal_size_limit
    for _ in range(20):  # a short WAL: PASSIVE only
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
    assert sqlite_store.checkpoint(checkpointer) == ("passive", 0)


def test_a_restart_checkpoint_gives_up_quickly_while_a_writer_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 100)
    writer, checkpointer = _wal_db(tmp_path / "db"), _wal_db(tmp_path / "db")
    for _ in range(300):
        writer.execute("INSERT INTO t VALUES (randomblob(3000))")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    mode, _ = sqlite_store.checkpoint(checkpointer)
    assert mode == "restart-busy"
    assert time.monotonic() - started < 5  # waited WAL_RESTART_WAIT_MS, not 10 s
    writer.execute("COMMIT")
