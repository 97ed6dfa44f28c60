"""Where the session files are, and reading them (the only I/O of `capgate local`).

Claude Code: `CLAUDE_CONFIG_DIR` (a comma-separated list of config dirs or their
`projects/` dirs; when set, only those), else `$XDG_CONFIG_HOME/claude` (default
`~/.config/claude`) and `~/.claude`; every `*.jsonl` under `projects/`, subagent files
included. Codex: `$CODEX_HOME` (default `~/.codex`), `sessions/` and `archived_sessions/`
(the active copy wins when both hold the same path). Files are read line by line."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from capgate.local import claude, codex
from capgate.local.cache import FileCache
from capgate.local.dedup import dedupe
from capgate.local.records import Entry, Skipped


def system_zone() -> tzinfo:
    """The system's zone with its rules (DST), not today's offset: `TZ`, else
    /etc/localtime, else today's offset."""
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
        if os.environ.get("TZ"):
            return ZoneInfo(os.environ["TZ"].removeprefix(":"))
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle)
    return datetime.now().astimezone().tzinfo or UTC


class LocationError(Exception):
    """`CLAUDE_CONFIG_DIR` names no Claude Code directory."""


def claude_roots(env: Mapping[str, str], home: Path) -> list[Path]:
    configured = env.get("CLAUDE_CONFIG_DIR", "").strip()
    if configured:
        roots = []
        for part in configured.split(","):
            if not part.strip():
                continue
            base = Path(part.strip()).expanduser()
            if (base / "projects").is_dir():
                roots.append(base / "projects")
            elif base.name == "projects" and base.is_dir():
                roots.append(base)
        if not roots:
            raise LocationError(
                f"CLAUDE_CONFIG_DIR={configured!r}: no Claude Code projects directory there"
            )
        return _unique(roots)
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    found = [d / "projects" for d in (xdg / "claude", home / ".claude")]
    return _unique([d for d in found if d.is_dir()])


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for path in paths:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            out.append(path)
    return out


def claude_files(roots: list[Path]) -> list[tuple[Path, str, str]]:
    """(file, project, session) for every transcript: the project is the first directory
    under `projects/`; a subagent file (`<project>/<session>/subagents/x.jsonl`) belongs
    to its parent session."""
    out = []
    for root in roots:
        for path in sorted(root.rglob("*.jsonl")):
            parts = path.relative_to(root).parts
            if len(parts) < 2:
                continue
            if len(parts) == 2:
                session = path.stem
            elif len(parts) >= 4 and parts[-2] == "subagents":
                session = parts[-3]
            else:
                session = parts[-2]
            out.append((path, parts[0], session))
    return out


def codex_files(env: Mapping[str, str], home: Path) -> list[tuple[Path, str]]:
    base = Path(env.get("CODEX_HOME") or home / ".codex").expanduser()
    chosen: dict[str, Path] = {}
    for sub in ("archived_sessions", "sessions"):  # later wins: the active copy
        top = base / sub
        if top.is_dir():
            for path in top.rglob("*.jsonl"):
                chosen[path.relative_to(top).as_posix()] = path
    return [(chosen[rel], rel.removesuffix(".jsonl")) for rel in sorted(chosen)]


def _lines(path: Path, skipped: Skipped) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            yield from handle
    except OSError:
        skipped.unreadable_files.append(str(path))


def _marked_lines(path: Path, marker: bytes, skipped: Skipped) -> Iterator[bytes]:
    """The lines holding `marker`, and an unterminated last line, without making an
    object of every other line: the file is mapped, not read, so memory stays flat."""
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                yield from _find_lines(view, marker)
    except (OSError, ValueError):
        skipped.unreadable_files.append(str(path))


def _find_lines(view: mmap.mmap, marker: bytes) -> Iterator[bytes]:
    size, at = len(view), 0
    while (hit := view.find(marker, at)) >= 0:
        start = view.rfind(b"\n", 0, hit) + 1
        end = view.find(b"\n", hit)
        end = size if end < 0 else end + 1
        yield view[start:end]
        at = end
    if size and view[size - 1 : size] != b"\n":
        start = view.rfind(b"\n") + 1
        if start >= at:  # not yielded above: the parser judges it
            yield view[start:size]


def read_entries(
    env: Mapping[str, str], home: Path, agent: str, skipped: Skipped, cache: FileCache
) -> Iterator[Entry]:
    """Every entry of the chosen agent(s), file by file, in path order (not deduplicated);
    files unchanged since the cached run come from `cache`."""
    if agent in ("claude", "all"):
        for path, project, session in claude_files(claude_roots(env, home)):
            yield from _cached(path, cache, skipped, _claude_parser(path, project, session))
    if agent in ("codex", "all"):
        for path, session in codex_files(env, home):
            yield from _cached(path, cache, skipped, _codex_parser(path, session))


Parser = Callable[[Skipped], Iterable[Entry]]


def _claude_parser(path: Path, project: str, session: str) -> Parser:
    def parse(skipped: Skipped) -> Iterable[Entry]:
        lines = _marked_lines(path, claude.MARKER, skipped)
        return claude.parse_lines(lines, project, session, skipped)

    return parse


def _codex_parser(path: Path, session: str) -> Parser:
    def parse(skipped: Skipped) -> Iterable[Entry]:
        return codex.parse_lines(_lines(path, skipped), session, skipped)

    return parse


def _cached(path: Path, cache: FileCache, skipped: Skipped, parse: Parser) -> list[Entry]:
    try:
        stat = path.stat()
    except OSError:
        skipped.unreadable_files.append(str(path))
        return []
    name = str(path)
    hit = cache.get(name, stat.st_size, stat.st_mtime_ns)
    if hit is not None:
        skipped.bad_lines += hit[1]
        return hit[0]
    mine = Skipped()
    # Most copies of an answer are in one file (a line per content block): dropping them
    # here keeps memory and the cache small; `dedupe` over all files finishes the job.
    entries = dedupe(parse(mine))
    skipped.add(mine)
    if not mine.unreadable_files:
        cache.put(name, stat.st_size, stat.st_mtime_ns, entries, mine.bad_lines)
    return entries
