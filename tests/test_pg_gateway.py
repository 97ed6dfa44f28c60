"""`database_url: postgresql://...` builds the PostgreSQL store: a real `capgate serve` on
a real PostgreSQL answers, limits and records like on SQLite (several nodes: test_nodes)."""

from __future__ import annotations

from pathlib import Path

import httpx

import pgcluster
from conftest import Upstream, gateway_config, start_capgate


def test_a_gateway_on_postgresql(
    postgres: pgcluster.Cluster, upstream: Upstream, tmp_path: Path
) -> None:
    url = postgres.new_database()
    server = start_capgate(
        tmp_path,
        gateway_config(upstream),
        args=("--database-url", url),
        env={"CAPGATE_STATE_DIR": str(tmp_path / "state")},
    )
    try:
        key = server.create_key("k", [{"metric": "requests", "window": "day", "max": 2}])
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [
            {"role": "user", "content": "hi"}]}  # fmt: skip
        statuses = []
        for _ in range(3):
            response = httpx.post(
                server.url + "/v1/messages", json=body, timeout=30,
                headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            )  # fmt: skip
            statuses.append(response.status_code)
        assert statuses == [200, 200, 402], response.text
        assert "Daily request limit" in response.json()["error"]["message"]
        ledger = server.ledger()
        assert sorted(entry["outcome"] for entry in ledger) == ["ok", "ok", "refused"]
        (usage,) = server.key_usage("k")
        assert usage["used"] == 2 and usage["reserved"] == 0
        health = httpx.get(server.url + "/health/ready", timeout=10)
        assert health.status_code == 200, health.text
        (state,) = (tmp_path / "state").iterdir()
        assert state.name.startswith("pg-")
    finally:
        server.close()
