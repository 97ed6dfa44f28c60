"""The MCP tools' answers, from this machine's session files: the same readers, report
and block functions as `capgate local` (capgate.local), the same JSON field names, made
small for a model's context (the most recent rows; per-model rows only when asked)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from capgate.local import render
from capgate.local.blocks import blocks, burn
from capgate.local.cache import default_path
from capgate.local.costing import Costing
from capgate.local.files import LocationError, summed
from capgate.local.records import Entry, Skipped
from capgate.local.report import (
    SUNDAY,
    WEEKDAYS,
    Query,
    by_period,
    by_project,
    by_session,
    parse_day,
)
from capgate.pricing import PricingTable

AGENTS = ("claude", "codex", "all")
ORDERS = ("asc", "desc")


class UsageError(Exception):
    """A bad argument or an unusable location: the message says which and why."""


def project_of(cwd: Path) -> str:
    """Claude Code's name for a project directory under `projects/` (its path with every
    character that is not a letter or digit as '-')."""
    return re.sub(r"[^A-Za-z0-9]", "-", str(cwd))


class LocalUsage:
    def __init__(
        self,
        env: Mapping[str, str],
        home: Path,
        cwd: Path,
        system_zone: Callable[[], tzinfo],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._env, self._home, self._cwd = env, home, cwd
        self._system_zone, self._clock = system_zone, clock
        self._costing = Costing(PricingTable.load())

    def query(
        self,
        since: str | None,
        until: str | None,
        timezone: str | None,
        project: str | None,
        agent: str,
        start_of_week: str = WEEKDAYS[SUNDAY],
    ) -> Query:
        if agent not in AGENTS:
            raise UsageError(f"agent: one of {', '.join(AGENTS)}, not {agent!r}")
        day = start_of_week.strip().lower()
        if day not in WEEKDAYS:
            raise UsageError(f"start_of_week: a day of the week like sunday, not {start_of_week!r}")
        return Query(
            zone=self.zone(timezone),
            since=_day(since, "since"),
            until=_day(until, "until"),
            agent=agent,
            project=project,
            week_start=WEEKDAYS.index(day),
        )

    def zone(self, name: str | None) -> tzinfo:
        if not name:
            return self._system_zone()
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"timezone: unknown time zone {name!r} (like Europe/Berlin)") from None

    def load(self, agent: str) -> tuple[list[Entry], Skipped]:
        return self.summed(agent, list)

    def summed(self, agent: str, sum_up: Callable[[Iterable[Entry]], T]) -> tuple[T, Skipped]:
        """`sum_up` of the entries (streamed: `files.summed`)."""
        path = default_path(self._env, self._home)
        try:
            return summed(self._env, self._home, agent, path, sum_up)
        except LocationError as exc:
            raise UsageError(str(exc)) from None

    def period(
        self, kind: str, query: Query, breakdown: bool, last: int, order: str = "asc"
    ) -> dict[str, Any]:
        """The most recent `last` rows (0: all), oldest first (`order` "desc": newest first)."""
        _check_order(order)
        (rows, total), skipped = self.summed(
            query.agent, lambda entries: by_period(kind, entries, self._costing, query)
        )
        out = render.period_json(kind, _ordered(_recent(rows, last), order), total, skipped)
        out["rowsOmitted"] = len(rows) - len(out[kind])
        return _small(out, kind, breakdown)

    def projects(
        self, kind: str, query: Query, breakdown: bool, last: int, order: str = "asc"
    ) -> dict[str, Any]:
        """`period` for each project apart (`capgate local daily --instances`): the most
        recent `last` rows of each project."""
        _check_order(order)
        entries, skipped = self.load(query.agent)
        projects, total = by_project(kind, entries, self._costing, query)
        shown = {name: _ordered(_recent(rows, last), order) for name, rows in projects.items()}
        out = render.projects_json(kind, shown, total, skipped)
        out["rowsOmitted"] = sum(len(rows) - len(shown[name]) for name, rows in projects.items())
        if not breakdown:
            for rows_of in out["projects"].values():
                for row in rows_of:
                    row.pop("modelBreakdowns", None)
        return out

    def sessions(
        self, query: Query, breakdown: bool, last: int, order: str = "desc"
    ) -> dict[str, Any]:
        """The first `last` sessions, dearest first (`order` "asc": cheapest first)."""
        _check_order(order)
        (rows, total), skipped = self.summed(
            query.agent, lambda entries: by_session(entries, self._costing, query, order)
        )
        out = render.session_json(rows[:last] if last else rows, total, skipped)
        out["rowsOmitted"] = max(0, len(rows) - last) if last else 0
        return _small(out, "sessions", breakdown)

    def blocks(self, active_only: bool, last: int, order: str = "asc") -> dict[str, Any]:
        """The most recent `last` blocks, oldest first (`order` "desc": newest first)."""
        _check_order(order)
        entries, skipped = self.load("claude")
        now = self._clock()
        items = [b for b in blocks(entries, self._costing, now) if b.active or not active_only]
        shown = _ordered(_recent(items, last), order)
        return {
            "blocks": [render.block_json(b, burn(b, now)) for b in shown],
            "rowsOmitted": len(items) - len(shown),
            "skipped": render.skipped_json(skipped),
        }

    def current_session(self, session_id: str | None) -> dict[str, Any]:
        """A session's cost so far: the one named, else the latest of this directory's
        project (where Claude Code started this server), else the latest anywhere."""
        entries, skipped = self.load("all")
        if session_id is None:
            session_id = _latest(entries, project_of(self._cwd)) or _latest(entries, None)
        if session_id is None:
            raise UsageError("no Claude Code or Codex session found on this machine")
        mine = [e for e in entries if e.session == session_id]
        if not mine:
            raise UsageError(f"no session {session_id!r} in the session files")
        rows, _ = by_session(mine, self._costing, Query(zone=UTC))
        out = render.session_json(rows, rows[0], skipped)["sessions"][0]
        out.pop("modelBreakdowns")
        out["skipped"] = render.skipped_json(skipped)
        return dict(out)


def _latest(entries: list[Entry], project: str | None) -> str | None:
    found = [e for e in entries if project is None or e.project == project]
    return max(found, key=lambda e: e.micros).session if found else None


T = TypeVar("T")


def _recent(rows: list[T], last: int) -> list[T]:
    return rows[-last:] if last else rows


def _ordered(rows: list[T], order: str) -> list[T]:
    """Rows come oldest first; "desc": newest first."""
    return rows[::-1] if order == "desc" else rows


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise UsageError(f"order: asc or desc, not {order!r}")


def _small(out: dict[str, Any], rows_field: str, breakdown: bool) -> dict[str, Any]:
    if not breakdown:
        for row in out[rows_field]:
            row.pop("modelBreakdowns", None)
    return out


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError:
        raise UsageError(f"{name}: a date like 2026-12-04 or 20261204, not {value!r}") from None
