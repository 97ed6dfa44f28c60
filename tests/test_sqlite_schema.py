"""Migrations: an existing database moves to the newest schema and keeps its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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
