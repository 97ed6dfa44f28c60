"""The raw keys `serve --demo` made, kept beside the database (`<database>.secrets`,
owner-only) so that a restart hands out the same admin key and demo key: what the user
exported, and their dashboard sessions, keep working.

Only demo mode writes this file. A production admin key is shown once and only its hash
is stored; set `CAPGATE_ADMIN_KEY` to choose one instead.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

SUFFIX = ".secrets"


def secrets_path(database: str) -> Path | None:
    """Where the demo's raw keys are kept for a database file; None for one in memory."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database + SUFFIX)


def load(path: Path | None) -> dict[str, str]:
    """The kept keys, or none when the file is missing or unreadable."""
    if path is None:
        return {}
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def save(path: Path | None, keys: dict[str, str]) -> None:
    """Write the keys readable by their owner only (0600), atomically."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(keys, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
