"""`capgate db copy`: a SQLite database into an empty PostgreSQL database, verified.

The source is read in one read transaction (WAL mode: servers may keep committing; the
copy is one consistent moment of the file and sees none of their later writes). The
target is migrated to the newest schema, then every table is copied in ONE PostgreSQL
transaction: it refuses a target that already holds scopes, counters or ledger entries,
copies each table column by column (the schemas mirror each other, see `pg_schema`), sets
the identity sequences past the copied ids, and checks counts and sums (rows per table,
the ledger's cost, the counters' settled and reserved amounts) against the source before
it commits. Anything that does not match rolls it all back: the target is left as empty
as it was.

Not copied: `processes` (each node's liveness row; the target's nodes write their own),
and `login_failures` when the target has no such table (recent failed dashboard logins).
Reservations are copied with the counters that hold them, so the books stay balanced: on
the target, the nodes sweep them like those of any dead process (charged in full). Stop
every server on the source before the final copy, so that none is in flight.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from capgate.store import pg_schema
from capgate.store.backup import server_holding
from capgate.store.sqlite_schema import MIGRATIONS

SKIPPED = frozenset({"processes"})
# Copied when the target has the table, else left out: the throttle's recent failed
# dashboard logins matter for minutes only.
OPTIONAL = frozenset({"login_failures"})
# The tables that must be empty on the target (meta holds defaults the migrations wrote).
MUST_BE_EMPTY = (
    "scopes", "counters", "reservations", "requests", "audit", "sessions", "hook_codes",
    "hook_machines", "alert_claims", "alert_deliveries", "runtime_providers", "runtime_routes",
    "request_bodies", "ledger_daily",
)  # fmt: skip
# meta rows only PostgreSQL has (migration 11): set from the copied config_version, and
# not counted against the source
PG_ONLY_META = ("plan_version",)
# id columns the target numbers itself after the copy
IDENTITY = ("requests", "audit", "alert_deliveries")
BATCH = 5000  # rows per COPY round trip
CONNECT_TIMEOUT_S = 10

_CONVERT: dict[str, Callable[[Any], Any]] = {
    "bigint": int,
    "integer": int,
    "smallint": int,
    "double precision": float,
    "real": float,
    "text": str,
    "bytea": bytes,
}


class CopyError(Exception):
    """The copy cannot be done; the message says why. The target is left unchanged."""


@dataclass(frozen=True, slots=True)
class Totals:
    """What both sides must agree on after the copy."""

    rows: dict[str, int]  # per table
    ledger_cost_nano: int
    counters_settled: int
    counters_reserved: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    totals: Totals
    schema_version: int  # of the target, after migration
    server_running: str | None  # the owner id of a server on the source during the copy
    journal_files: int  # settlement journals beside the source (settlements maybe not in it)


async def copy_to_postgres(source: str | Path, target_url: str) -> CopyResult:
    source = Path(source)
    if not source.is_file():
        raise CopyError(f"no database at {source}")
    running = server_holding(source)
    with _read_only(source) as db:
        db.execute("BEGIN")  # one read transaction: one moment of the file
        try:
            tables = _source_tables(db, source)
            try:
                conn = await asyncpg.connect(target_url, timeout=CONNECT_TIMEOUT_S)
            except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise CopyError(f"cannot connect to the target: {exc}") from None
            try:
                version = await pg_schema.migrate(conn)
                async with conn.transaction():
                    await _check_empty(conn)
                    tables = [t for t in tables if await _wanted(conn, t)]
                    expected = _totals(db, tables)
                    for table in tables:
                        await _copy_table(db, conn, table)
                    for table in IDENTITY:
                        await _past_copied_ids(conn, table)
                    copied = await _pg_totals(conn, tables)
                    if copied != expected:
                        raise CopyError(_mismatch(expected, copied))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise CopyError(f"the copy failed, nothing was committed: {exc}") from None
            finally:
                await conn.close()
        finally:
            db.execute("COMMIT")
    return CopyResult(expected, version, running, _journal_files(source))


# Table and column names come from the source file and go into SQL: plain names only.
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _plain(name: str) -> str:
    if not _NAME.match(name):
        raise CopyError(f"unexpected table or column name {name!r} in the source")
    return name


# -- the source -----------------------------------------------------------------------------


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise CopyError(f"cannot open {path}: {exc}") from None
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        yield db
    except sqlite3.DatabaseError as exc:
        raise CopyError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()


def _source_tables(db: sqlite3.Connection, path: Path) -> list[str]:
    """The tables to copy; refuses a file that is not a capgate database of this version."""
    names = {
        row[0]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    }
    if not {"meta", "scopes", "counters", "requests"} <= names:
        raise CopyError(f"{path} is not a capgate database")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != len(MIGRATIONS):
        newer = version > len(MIGRATIONS)
        raise CopyError(
            f"{path} is at schema version {version}, this capgate at {len(MIGRATIONS)}: "
            + ("copy it with the capgate that wrote it" if newer else "start `capgate serve` "
               "on it once (it migrates the file), stop it, then copy")
        )  # fmt: skip
    return sorted(_plain(name) for name in names - SKIPPED)


def _journal_files(source: Path) -> int:
    """Settlement journals beside the source (a server runs, or died with some waiting)."""
    folder = Path(str(source) + "-settlements")
    return len(list(folder.glob("*.jsonl"))) if folder.is_dir() else 0


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [_plain(row[1]) for row in db.execute(f'PRAGMA table_info("{table}")')]


def _totals(db: sqlite3.Connection, tables: list[str]) -> Totals:
    rows = {
        t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # noqa: S608 - _plain names
        for t in tables
    }
    cost = db.execute("SELECT coalesce(sum(cost_nano), 0) FROM requests").fetchone()[0]
    settled, reserved = db.execute(
        "SELECT coalesce(sum(settled), 0), coalesce(sum(reserved), 0) FROM counters"
    ).fetchone()
    return Totals(rows, cost, settled, reserved)


# -- the target -----------------------------------------------------------------------------


async def _check_empty(conn: asyncpg.Connection) -> None:
    """Refuse a target with data; lock its tables against writers until the commit."""
    tables = ", ".join(MUST_BE_EMPTY)
    await conn.execute(f"LOCK TABLE {tables}, meta IN SHARE ROW EXCLUSIVE MODE")
    held = []
    for table in MUST_BE_EMPTY:
        count = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - constants
        if count:
            held.append(f"{count} rows in {table}")
    if held:
        raise CopyError(
            "the target database is not empty (" + ", ".join(held) + "): copy into a new, "
            "empty database (CREATE DATABASE ...), never over one in use"
        )


async def _target_columns(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1",
        table,
    )
    return {row["column_name"]: row["data_type"] for row in rows}


async def _copy_table(db: sqlite3.Connection, conn: asyncpg.Connection, table: str) -> None:
    columns = _columns(db, table)
    target = await _target_columns(conn, table)
    if not target:
        raise CopyError(f"the target has no table {table}: is its schema from this capgate?")
    missing = [c for c in columns if c not in target]
    if missing:
        raise CopyError(f"the target's table {table} has no column {', '.join(missing)}")
    convert = [_CONVERT.get(target[c], _same) for c in columns]
    if table == "meta":  # the migrations wrote defaults (config_version): the source's win
        keys = [row[0] for row in db.execute("SELECT k FROM meta")]
        await conn.execute("DELETE FROM meta WHERE k = ANY($1::text[])", keys)
    select = ", ".join(f'"{c}"' for c in columns)
    cursor = db.execute(f'SELECT {select} FROM "{table}"')  # noqa: S608 - _plain names
    while batch := cursor.fetchmany(BATCH):
        records = [
            tuple(None if v is None else to(v) for to, v in zip(convert, row, strict=True))
            for row in batch
        ]
        await conn.copy_records_to_table(table, records=records, columns=columns)
    if table == "meta":
        await conn.execute(
            "UPDATE meta SET v = (SELECT v FROM meta WHERE k = 'config_version') "
            "WHERE k = ANY($1::text[])",
            PG_ONLY_META,
        )


async def _wanted(conn: asyncpg.Connection, table: str) -> bool:
    return table not in OPTIONAL or bool(await _target_columns(conn, table))


def _same(value: Any) -> Any:
    return value


async def _past_copied_ids(conn: asyncpg.Connection, table: str) -> None:
    """The next id the target gives is past every copied one."""
    await conn.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - constants
        f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
    )


async def _pg_totals(conn: asyncpg.Connection, tables: list[str]) -> Totals:
    rows = {
        t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"'))  # noqa: S608 - _plain names
        for t in tables
    }
    if "meta" in rows:
        rows["meta"] -= len(PG_ONLY_META)
    cost = await conn.fetchval("SELECT coalesce(sum(cost_nano), 0) FROM requests")
    sums = await conn.fetchrow(
        "SELECT coalesce(sum(settled), 0) AS s, coalesce(sum(reserved), 0) AS r FROM counters"
    )
    assert sums is not None
    return Totals(rows, int(cost), int(sums["s"]), int(sums["r"]))


def _mismatch(expected: Totals, copied: Totals) -> str:
    """What differs, e.g. `requests: 10 rows in the source, 9 copied`; nothing committed."""
    diffs = [
        f"{t}: {n} rows in the source, {copied.rows.get(t)} copied"
        for t, n in expected.rows.items()
        if copied.rows.get(t) != n
    ]
    for name in ("ledger_cost_nano", "counters_settled", "counters_reserved"):
        if getattr(expected, name) != getattr(copied, name):
            diffs.append(f"{name}: {getattr(expected, name)} != {getattr(copied, name)}")
    return "the copy does not match the source, nothing was committed: " + "; ".join(diffs)
