"""`capgate usage` against a server one release older (a rolling upgrade): its usage rows
have no `cache_hits` / `saved_usd`; the table and csv show 0 for them, json the rows as
they came."""

from __future__ import annotations

import csv
import io
import json

from aiohttp import web

from cloudmocks import CloudMock
from test_cli import run_cli

OLD_ROW = {"key": "team-a", "requests": 3, "refused": 0, "errors": 1, "input_tokens": 120,
           "output_tokens": 40, "cache_read_tokens": 0, "cache_write_tokens": 0,
           "cost_usd": "0.000321"}  # fmt: skip


async def _usage(request: web.Request) -> web.Response:
    assert request.query["group_by"] == "key"
    return web.json_response({"items": [OLD_ROW]})


def test_usage_against_a_server_without_the_cache_columns() -> None:
    app = web.Application()
    app.router.add_get("/admin/usage", _usage)
    with CloudMock(app) as older:
        table = run_cli(None, "usage", "--by", "key", url=older.url)
        listed = run_cli(None, "usage", "--by", "key", "--format", "csv", url=older.url)
        raw = run_cli(None, "usage", "--by", "key", "--format", "json", url=older.url)
    assert table.returncode == 0, table.stderr
    assert "team-a" in table.stdout and "$0.000321" in table.stdout
    assert listed.returncode == 0, listed.stderr
    (row,) = csv.DictReader(io.StringIO(listed.stdout))
    assert row["cache_hits"] == "0" and row["saved_usd"] == "0" and row["cost_usd"] == "0.000321"
    assert json.loads(raw.stdout) == [OLD_ROW]
