"""`GET /admin/summary` and `GET /admin/timeseries`: the numbers and charts of the
dashboard's overview, computed from the ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from capgate.core.windows import WindowKind, window_at, zone
from capgate.errors import InvalidRequest
from capgate.http.admin_io import int_param, json_response, known_params, time_param
from capgate.http.admin_json import summary_json
from capgate.http.roles import ledger_teams
from capgate.store.base import RequestQuery
from capgate.store.records import USAGE_GROUPS, iso
from capgate.timeseries import STEPS, auto_step, bucket_starts, fold

if TYPE_CHECKING:
    from capgate.http.admin import AdminAPI

PERIODS = ("today", "week", "month", "1h", "24h", "7d", "30d")
_ROLLING = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
_CALENDAR = {"today": WindowKind.DAY, "week": WindowKind.WEEK, "month": WindowKind.MONTH}
_SERIES_GROUPS = ("key", "user", "team", "model", "upstream_model", "provider", "outcome")
MAX_TOP = 20
SUMMARY_PARAMS = ("period", "from", "to", "tz", "key", "team", "user", "model", "provider")
SERIES_PARAMS = (*SUMMARY_PARAMS, "step", "group_by", "top")


class StatsRoutes:
    def __init__(self, api: AdminAPI) -> None:
        self.api = api

    def _range(self, params: Any, default: str) -> tuple[float, float, str]:
        """[from, to) and the timezone, from `period` or `from`/`to` (default `default`)."""
        tz = params.get("tz") or self.api.default_timezone
        try:
            zone(tz)
        except ValueError as exc:
            raise InvalidRequest(f"tz: {exc}") from None
        now = self.api.clock()
        since, until = time_param(params, "from"), time_param(params, "to")
        period = params.get("period") or (None if since or until else default)
        if period is not None:
            if period not in PERIODS:
                raise InvalidRequest(f"period: one of {', '.join(PERIODS)}")
            if period in _ROLLING:
                return now - _ROLLING[period], now, tz
            window = window_at(_CALENDAR[period], now, tz)
            return float(window.start), float(window.end), tz
        until = now if until is None else until
        since = until - 86400 if since is None else since
        if since >= until:
            raise InvalidRequest("from: must be before to")
        return since, until, tz

    @staticmethod
    def _query(request: web.Request, since: float, until: float) -> RequestQuery:
        params = request.query
        return RequestQuery(
            key=params.get("key") or None,
            **ledger_teams(request["caller"], params.get("team") or None),
            user=params.get("user") or None,
            model=params.get("model") or None,
            provider=params.get("provider") or None,
            since=since,
            until=until,
        )

    async def summary(self, request: web.Request) -> web.Response:
        known_params(request.query, SUMMARY_PARAMS)
        since, until, tz = self._range(request.query, "today")
        data = await self.api.store.summary(self._query(request, since, until))
        return json_response(
            {"from": iso(since), "to": iso(until), "timezone": tz, **summary_json(data)}
        )

    async def timeseries(self, request: web.Request) -> web.Response:
        params = request.query
        known_params(params, SERIES_PARAMS)
        since, until, tz = self._range(params, "24h")
        step = params.get("step") or auto_step(since, until)
        if step not in STEPS:
            raise InvalidRequest(f"step: one of {', '.join(STEPS)}")
        group_by = params.get("group_by") or None
        if group_by is not None and group_by not in _SERIES_GROUPS:
            raise InvalidRequest(f"group_by: one of {', '.join(_SERIES_GROUPS)}")
        assert group_by is None or group_by in USAGE_GROUPS
        top = min(max(int_param(params, "top") or 5, 1), MAX_TOP)
        try:
            starts = bucket_starts(step, since, until, tz)
        except ValueError as exc:
            raise InvalidRequest(f"step: {exc}") from None
        found = await self.api.store.series_rows(
            self._query(request, since, until), group_by, STEPS[step][1]
        )
        rows = [
            (r.bucket, r.group, r.requests, r.cost_nano, r.tokens, r.refused, r.errors)
            for r in found
        ]
        return json_response(
            {
                "from": iso(since),
                "to": iso(until),
                "timezone": tz,
                "step": step,
                "group_by": group_by,
                "buckets": starts,
                "series": fold(rows, starts, top) if group_by else _total(fold(rows, starts, 1)),
            }
        )


def _total(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without group_by there is one group (null), named `all`."""
    for item in series:
        item["name"] = "all"
    return series
