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
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from capgate.local import claude, codex
from capgate.local.cache import FileCache, Row, from_row
from capgate.local.dedup import Deduper, Undecided, dedupe
from capgate.local.records import Entry, Skipped

T = TypeVar("T")


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
    to its parent session. In the order of their paths as text: a session's own file
    before its subagents' (`s.jsonl` < `s/subagents/...`), so that the main-chain copy of
    an answer comes before its sidechain replays (`dedup.Deduper` then drops them as
    they come)."""
    out = []
    for root in roots:
        for path in sorted(root.rglob("*.jsonl"), key=str):
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


def _marked_lines(path: Path, marker: bytes, skipped: Skipped) -> Iterator[bytes]:
    """The lines holding `marker`, and an unterminated last line, in file order, without
    making an object of every other line: the file is mapped, not read, so memory stays
    flat."""
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                yield from _find_lines(view, marker)
    except (OSError, ValueError):
        skipped.unreadable_files.append(str(path))


def _lines_but(
    path: Path, skip: re.Pattern[bytes], skipped: Skipped, whole: int = 0
) -> Iterator[bytes]:
    """The lines of a file but those that `skip` matches at their start (past the first
    `whole` lines; an unterminated last line is always given: the parser judges it), in
    file order; the file is mapped, not read."""
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                size, at, number, find, match = len(view), 0, 0, view.find, skip.match
                while at < size:
                    end = find(b"\n", at)
                    if end < 0 or number < whole or match(view, at, end) is None:
                        end = size if end < 0 else end + 1
                        yield view[at:end]
                    else:
                        end += 1
                    at, number = end, number + 1
    except (OSError, ValueError):
        skipped.unreadable_files.append(str(path))


def _find_lines(view: mmap.mmap, marker: bytes) -> Iterator[bytes]:
    size, at = len(view), 0
    find, rfind = view.find, view.rfind
    while (hit := find(marker, at)) >= 0:
        start = rfind(b"\n", at, hit) + 1 or at
        end = find(b"\n", hit)
        end = size if end < 0 else end + 1
        yield view[start:end]
        at = end
    if size and view[size - 1 : size] != b"\n":
        start = view.rfind(b"\n") + 1
        if start >= at:  # not yielded above: the parser judges it
            yield view[start:size]


def read_entries(
    env: Mapping[str, str],
    home: Path,
    agent: str,
    skipped: Skipped,
    cache: FileCache,
    workers: int = 1,
) -> Iterator[Entry]:
    """Every entry of the chosen agent(s), file by file, in path order (not deduplicated);
    files unchanged since the cached run come from `cache`. One file's entries are held
    at a time (a few more when parsed ahead in parallel). `workers` > 1: the files to read
    are parsed by that many processes (forked: Linux only) when there are at least
    `PARALLEL_MIN_BYTES` of them."""
    jobs: list[Job] = []
    if agent in ("claude", "all"):
        for path, project, session in claude_files(claude_roots(env, home)):
            jobs.append((str(path), "claude", project, session))
    if agent in ("codex", "all"):
        for path, session in codex_files(env, home):
            jobs.append((str(path), "codex", "", session))
    plan: list[tuple[Job, int, int, bool]] = []  # (job, size, mtime, cached)
    for job in jobs:
        try:
            stat = os.stat(job[0])
        except OSError:
            skipped.unreadable_files.append(job[0])
            continue
        cached = cache.has(job[0], stat.st_size, stat.st_mtime_ns)
        plan.append((job, stat.st_size, stat.st_mtime_ns, cached))
    todo = [(job, size) for job, size, _, cached in plan if not cached]
    parsed = _parse_all([t[0] for t in todo], [t[1] for t in todo], workers)
    for job, size, mtime, cached in plan:
        hit = cache.get(job[0], size, mtime) if cached else None
        if hit is not None:
            entries, bad = hit
            skipped.bad_lines += bad
            yield from entries
            continue
        rows, bad, unreadable = next(parsed) if not cached else _parse_file(job)
        skipped.bad_lines += bad
        if unreadable:
            skipped.unreadable_files.append(job[0])
        else:
            cache.put_rows(job[0], size, mtime, rows, bad)
        yield from [from_row(r) for r in rows]


def summed(
    env: Mapping[str, str],
    home: Path,
    agent: str,
    cache_path: Path | None,
    sum_up: Callable[[Iterable[Entry]], T],
    workers: int = 1,
) -> tuple[T, Skipped]:
    """`sum_up` of the entries, each answer once (`dedup`), and what was skipped: streamed
    from the files to `sum_up` through `Deduper`, so that memory does not grow with the
    files' size; in the rare case the stream cannot decide which copy of an answer counts
    (`Undecided`), summed again from all the entries at once by `dedupe`. The cache at
    `cache_path` (None: none) is used and saved. LocationError as `read_entries`."""
    skipped, cache = Skipped(), FileCache(cache_path)
    try:
        result = sum_up(Deduper()(read_entries(env, home, agent, skipped, cache, workers)))
    except Undecided:
        cache.close()
        skipped, cache = Skipped(), FileCache(cache_path)
        result = sum_up(dedupe(read_entries(env, home, agent, skipped, cache, workers)))
    except BaseException:
        cache.close()
        raise
    cache.save()
    return result, skipped


# (file, "claude" | "codex", project, session)
Job = tuple[str, str, str, str]
# A file's entries as cache rows, its bad lines, and whether it could not be read.
Parsed = tuple[list[Row], int, bool]
# Below this many bytes to read, starting processes costs more than it saves.
PARALLEL_MIN_BYTES = 32 * 2**20
# Files are given to the processes in runs of consecutive ones of about this many bytes:
# their rows come back in order, a few runs ahead of the report at most.
CHUNK_BYTES = 4 * 2**20


def _parse_all(jobs: list[Job], sizes: list[int], workers: int) -> Iterator[Parsed]:
    """Each job's result, in order. In parallel: runs of consecutive files are parsed by
    `workers` forked processes while this one sums what they send back."""
    if workers < 2 or len(jobs) < 2 or sum(sizes) < PARALLEL_MIN_BYTES or not _can_fork():
        for job in jobs:
            yield _parse_file(job)
        return
    import multiprocessing  # only here: a small report needs none
    from concurrent.futures import ProcessPoolExecutor

    chunks: list[list[Job]] = [[]]
    load = 0
    for job, size in zip(jobs, sizes, strict=True):
        if load >= CHUNK_BYTES:
            chunks.append([])
            load = 0
        chunks[-1].append(job)
        load += size
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        ahead = 2 * workers  # runs handed out before their rows are wanted
        waiting = deque(pool.submit(_parse_files, chunk) for chunk in chunks[:ahead])
        for index in range(ahead, len(chunks) + ahead):
            results = waiting.popleft().result()
            if index < len(chunks):
                waiting.append(pool.submit(_parse_files, chunks[index]))
            yield from results


def _parse_files(jobs: list[Job]) -> list[Parsed]:
    return [_parse_file(job) for job in jobs]


def _can_fork() -> bool:
    """Forking is safe here: Linux, and no other thread that could hold a lock."""
    import multiprocessing

    return (
        sys.platform == "linux"
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
    )


def _parse_file(job: Job) -> Parsed:
    """One file's entries, deduplicated within the file (most copies of an answer are in
    one file: a line per content block; `dedupe` over all files finishes the job), as
    rows: plain tuples cost little to send between processes and are what the cache keeps."""
    path, kind, project, session = job
    mine = Skipped()
    if kind == "claude":
        lines = _marked_lines(Path(path), claude.MARKER, mine)
        rows = claude.parse_rows(lines, project, session, mine, marked=True)
    else:  # Codex entries have no message id: nothing to deduplicate
        lines = _lines_but(Path(path), codex.CONVERSATION, mine, codex.SPAWN_WINDOW)
        rows = list(codex.parse_rows(lines, session, mine))
    return rows, mine.bad_lines, bool(mine.unreadable_files)
