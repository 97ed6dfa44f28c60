"""Online backup and restore of the SQLite database.

A backup is taken with SQLite's backup API while servers keep running: the copy reads
from one read transaction held across all its steps, so it is one consistent moment of
the database (WAL mode lets the servers commit meanwhile; the copy sees none of it), and
it copies a bounded number of pages per step so the file is never held for long. The
result is written beside the target under a temporary name, owner-only (it holds key
hashes and the ledger), checked, then renamed into place.

A restore refuses while a server holds the database (its liveness lock, see
`liveness`), checks the file it is given (a SQLite file, `PRAGMA integrity_check`, a
schema version this capgate knows), moves the current database aside, and migrates the
restored copy when it is older.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capgate.store.liveness import is_alive, procs_dir
from capgate.store.sqlite_schema import MIGRATIONS, migrate

PAGES_PER_STEP = 1024  # 4 MiB with 4 KiB pages: a step takes milliseconds
REQUIRED_TABLES = frozenset({"meta", "scopes", "counters", "requests", "reservations"})


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and changes nothing."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    schema_version: int
    requests: int  # ledger entries the copy holds
    pages: int


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    schema_version: int  # after migration
    migrated_from: int
    requests: int
    set_aside: Path | None  # where the replaced database went (None: there was none)


def backup(
    database: str | Path,
    target: str | Path,
    *,
    pages_per_step: int = PAGES_PER_STEP,
    progress: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy the live `database` to `target` (which must not exist yet)."""
    database, target = Path(database), Path(target)
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new path")
    if not target.parent.is_dir():
        raise BackupError(f"the directory {target.parent} does not exist")
    with _connect(database) as source:
        _check_capgate(source, database)
        with _new_file(target) as (tmp, copy):
            # One read transaction across every step: the copy is one moment, and writers
            # in other connections never force it to restart (WAL readers see a snapshot).
            source.execute("BEGIN")
            try:
                source.execute("SELECT count(*) FROM sqlite_master").fetchone()
                source.backup(copy, pages=pages_per_step, progress=_reporter(progress))
            finally:
                source.execute("COMMIT")
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            version = _check_capgate(copy, target)
            _check_integrity(copy, target)
            requests = copy.execute("SELECT count(*) FROM requests").fetchone()[0]
            pages = copy.execute("PRAGMA page_count").fetchone()[0]
            copy.close()
            _fsync(tmp)
            os.link(tmp, target)  # never replaces a file that appeared meanwhile
    return BackupResult(target, version, requests, pages)


def restore(source: str | Path, database: str | Path) -> RestoreResult:
    """Make `database` a copy of the backup `source`; the current file is kept aside."""
    source, database = Path(source), Path(database)
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    holder = server_holding(database)
    if holder is not None:
        raise BackupError(
            f"a capgate server (process {holder}) is using {database}; stop every server "
            "that uses it, then restore"
        )
    if not database.parent.is_dir():
        raise BackupError(f"the directory {database.parent} does not exist")
    with _connect(source, read_only=True) as backup_db:
        old = _check_capgate(backup_db, source)
        _check_integrity(backup_db, source)
        with _new_file(database) as (tmp, copy):
            backup_db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
            version = migrate(copy)
            requests = copy.execute("SELECT count(*) FROM requests").fetchone()[0]
            copy.close()
            _fsync(tmp)
            aside = _set_aside(database)
            os.replace(tmp, database)
    return RestoreResult(database, version, old, requests, aside)


def server_holding(database: Path) -> str | None:
    """The owner id of a live server process holding `database`, if any."""
    directory = procs_dir(str(database))
    if not directory.is_dir():
        return None
    for lock in sorted(directory.glob("*.lock")):
        if is_alive(directory, lock.stem):
            return lock.stem
    return None


@contextlib.contextmanager
def _connect(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    uri = f"{path.resolve().as_uri()}?mode={'ro' if read_only else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: {exc}") from None
    finally:
        conn.close()


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A new owner-only database file at a temporary name next to `path`; removed unless
    the caller moved it (link or rename) to its final name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        yield tmp, conn
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        conn.close()
        for leftover in (tmp, Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


def _check_capgate(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a capgate database, or BackupError."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a SQLite database ({exc})") from None
    if version < 1 or not REQUIRED_TABLES.issubset(names):
        raise BackupError(f"{path} is not a capgate database")
    if version > len(MIGRATIONS):
        raise BackupError(
            f"{path} has schema version {version}, newer than this capgate knows "
            f"({len(MIGRATIONS)}): upgrade capgate first"
        )
    return version


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:  # too damaged to even list its problems
        problems = [str(exc)]
    if problems != ["ok"]:
        raise BackupError(f"{path} fails integrity_check: " + "; ".join(problems[:5]))


def _set_aside(database: Path) -> Path | None:
    """Rename the database to `NAME.before-restore-STAMP`, its WAL folded in first when
    it can be (else the `-wal` goes along: SQLite pairs a file with `<name>-wal`)."""
    if not database.exists():
        return None
    with contextlib.suppress(sqlite3.Error):  # a damaged file is set aside as it is
        conn = sqlite3.connect(database, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()  # the last connection to close removes the WAL
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = database.with_name(f"{database.name}.before-restore-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        current = Path(f"{database}{suffix}")
        if current.exists():
            os.replace(current, f"{aside}{suffix}")
    return aside


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reporter(progress: Callable[[int, int], None] | None) -> Callable[[int, int, int], None]:
    def report(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    return report
