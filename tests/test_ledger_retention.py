"""Ledger pruning end to end (server.ledger_retention_days, capgate.retention): a real
server and the mock upstream; entries made 40 days ago (their times moved back in the
database) are archived to JSONL.gz and folded into daily sums when a process starts,
and every report reads the same totals as before: /admin/usage by every group, the
summary and the chart of whole days, `capgate usage`, /metrics' ledger counters. The
store's part, on both engines, is in tests/test_store_bodies.py."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from capgate.store.records import USAGE_GROUPS
from conftest import Capgate, Upstream, gateway_config, start_capgate
from test_bodylog import messages, wait_for
from test_cli import run_cli

DAY = 86_400
BACK = 40 * DAY


def reports(server: Capgate, since: int, until: int) -> dict[str, Any]:
    """What must not change when old days are folded (whole-day ranges)."""
    out: dict[str, Any] = {}
    span = {"from": since, "to": until}
    for group in USAGE_GROUPS:
        out[f"usage {group}"] = server.admin(
            "GET", "/admin/usage", params={"group_by": group}
        ).json()
        out[f"usage {group} span"] = server.admin(
            "GET", "/admin/usage", params={"group_by": group, **span}
        ).json()
    summary = server.admin("GET", "/admin/summary", params=span).json()
    summary.pop("latency_ms")  # percentiles of the kept entries only
    out["summary"] = summary
    out["series by day"] = server.admin(
        "GET", "/admin/timeseries", params={**span, "step": "day", "group_by": "key"}
    ).json()
    cli = run_cli(server, "usage", "--by", "key", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    out["cli usage"] = json.loads(cli.stdout)
    scraped = httpx.get(server.url + "/metrics", timeout=10).text
    out["metrics"] = sorted(
        line for line in scraped.splitlines()
        if line.startswith("capgate_ledger_") and not line.startswith("capgate_ledger_flagged")
    )  # fmt: skip
    return out


def test_old_days_are_archived_folded_and_every_report_keeps_its_totals(
    upstream: Upstream, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    config = gateway_config(
        upstream, server={"ledger_retention_days": 35, "ledger_archive_dir": str(archive)}
    )
    server = start_capgate(tmp_path, config)
    try:
        old = server.create_key("old-key", [{"metric": "requests", "window": "total", "max": 3}])
        new = server.create_key("new-key")
        old_ids = [
            messages(server, old, f"old {i}").headers["x-capgate-request-id"] for i in range(4)
        ]
        new_ids = [
            messages(server, new, f"new {i}").headers["x-capgate-request-id"] for i in range(2)
        ]
        assert [e["outcome"] for e in server.ledger(key="old-key")].count("refused") == 1
    finally:
        server.close()
    with sqlite3.connect(server.db) as conn:  # made 40 days ago
        conn.execute(
            "UPDATE requests SET created_at = created_at - ? WHERE key_name = 'old-key'", (BACK,)
        )
    today = int(time.time()) // DAY * DAY
    since, until = today - 45 * DAY, today + DAY
    # Read the reports on a server that does not prune, then on one that does.
    keeps = start_capgate(tmp_path, gateway_config(upstream), db=server.db)
    try:
        before = reports(keeps, since, until)
        assert before["summary"]["requests"] == 6
    finally:
        keeps.close()
    again = start_capgate(tmp_path, config, db=server.db)
    try:
        assert wait_for(lambda: not again.ledger(key="old-key"))
        assert {e["request_id"] for e in again.ledger()} == set(new_ids)
        after = reports(again, since, until)
        for name, value in before.items():
            assert after[name] == value, name
    finally:
        again.close()
    (archived,) = archive.glob("capgate-ledger-*.jsonl.gz")
    lines = [json.loads(line) for line in gzip.decompress(archived.read_bytes()).splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(old_ids)
    assert {line["key"] for line in lines} == {"old-key"}
