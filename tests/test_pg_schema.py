"""The PostgreSQL schema: migrations applied once, also when several nodes start at once,
and the tables SQLite has, column for column (so `capgate db copy` moves rows 1:1)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

import pgcluster
from capgate.store import pg_schema
from capgate.store.sqlite_schema import migrate as sqlite_migrate


async def _migrate_many(url: str, nodes: int) -> list[int]:
    conns = [await asyncpg.connect(url) for _ in range(nodes)]
    try:
        return list(await asyncio.gather(*(pg_schema.migrate(c) for c in conns)))
    finally:
        for conn in conns:
            await conn.close()


def test_migrations_apply_once_when_nodes_start_at_once(postgres: pgcluster.Cluster) -> None:
    url = postgres.new_database()
    newest = len(pg_schema.MIGRATIONS)
    assert asyncio.run(_migrate_many(url, 4)) == [newest] * 4
    assert asyncio.run(_migrate_many(url, 2)) == [newest] * 2  # again: nothing to do
    db = url.rsplit("/", 1)[1]
    versions = postgres.sql("SELECT string_agg(version::text, ',') FROM schema_version", db)
    assert versions == ",".join(str(n) for n in range(1, newest + 1))
    assert postgres.sql("SELECT v FROM meta WHERE k='config_version'", db) == "0"


def test_tables_mirror_sqlite_column_for_column(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    url = postgres.new_database()
    asyncio.run(_migrate_many(url, 1))
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    sqlite_migrate(conn)
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    db = url.rsplit("/", 1)[1]
    for table in tables:
        lite = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        pg = postgres.sql(
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) "
            f"FROM information_schema.columns WHERE table_name = '{table}'",
            db,
        ).split(",")
        assert pg == lite, table
    kinds = postgres.sql(
        "SELECT string_agg(DISTINCT data_type, ',') FROM information_schema.columns "
        "WHERE table_schema = 'public'",
        db,
    )
    assert "boolean" not in kinds and "integer" not in kinds.split(",")


def test_the_batch_function_plans_once_per_connection(postgres: pgcluster.Cluster) -> None:
    """capgate_batch's statements take array arguments: left to choose, PostgreSQL made
    custom plans for them again at every call, which cost more than running them
    (docs/performance.md)."""
    url = postgres.new_database()
    asyncio.run(_migrate_many(url, 1))
    db = url.rsplit("/", 1)[1]
    config = postgres.sql("SELECT proconfig FROM pg_proc WHERE proname = 'capgate_batch'", db)
    assert config == "{plan_cache_mode=force_generic_plan}"
