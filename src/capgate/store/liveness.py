"""Is a process alive? Asked of the kernel, not of the database.

A lease in the database proves a process alive only while the database can be written:
stall the write lock for one lease and every live process looks dead. So each process
also holds an exclusive `flock` on its own file, `<database>-procs/<owner>.lock`, for its
whole life. The kernel drops the lock when the process ends, however it ends (`kill -9`
included), so a sweeper that finds a lease expired asks the lock first: still held, the
owner is alive and its reservations are left alone.

`flock` works between processes of one machine on a local file system, which is what
SQLite needs anyway. A PostgreSQL store will need its own proof of life (a session-level
advisory lock held by each process's connection is the same idea).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def procs_dir(database: str) -> Path:
    return Path(database + "-procs")


class ProcessLock:
    """This process's claim to be alive: an exclusive lock on its own file."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.path = directory / f"{owner}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Blocking: a sweeper testing this file holds its shared lock for microseconds.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the lock
        self._fd = None


def is_alive(directory: Path, owner: str) -> bool:
    """Whether the process `owner` still holds its lock. No lock file: not alive."""
    try:
        fd = os.open(directory / f"{owner}.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock taken when the owner was gone
    return False


def forget(directory: Path, owner: str) -> None:
    """Remove a dead process's lock file."""
    (directory / f"{owner}.lock").unlink(missing_ok=True)
