"""Nothing lost: `kill -9` of a server in the middle of a request. Its reservation has a
lease; when the lease expires, another process settles it in full and flags it."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from conftest import Upstream, gateway_config, kill_during_stream, start_capgate


@pytest.mark.parametrize("over_usage", [False, True], ids=["exact", "over-usage"])
def test_dead_process_reservations_are_charged_in_full(
    upstream: Upstream, tmp_path: Path, over_usage: bool
) -> None:
    """With over-usage in the mix (answers that report far more input than the body could
    hold), the books still balance across the kill: one entry per request, counters equal
    to the ledger, the over-users flagged and charged the truth."""
    config = gateway_config(upstream, server={"lease_seconds": 2})
    first = start_capgate(tmp_path, config)
    key = first.create_key("victim", [{"metric": "cost_usd", "window": "day", "max": 10}])
    headers = {"x-api-key": key}
    quick = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    for i in range(5):
        body = quick
        if over_usage and i % 2 == 0:  # 3 of the 5 report 100,000 input tokens
            body = {**quick, "messages": [{"role": "user", "content": "mock:input_tokens=100000"}]}
        assert httpx.post(first.url + "/v1/messages", json=body, headers=headers).status_code == 200

    slow = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "slow mock:words=200 mock:stream_delay_ms=100"}],
    }
    kill_during_stream(first, slow, key)

    second = start_capgate(tmp_path, config, db=first.db)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            entries = second.ledger(key="victim")
            if any(e["outcome"] == "lease_expired" for e in entries):
                break
            time.sleep(0.3)
        outcomes = sorted(e["outcome"] for e in entries)
        # Every admitted request is exactly one entry; the one cut off is charged in full.
        assert outcomes.count("lease_expired") == 1, outcomes
        assert outcomes.count("ok") + outcomes.count("lease_expired") == 6
        expired = next(e for e in entries if e["outcome"] == "lease_expired")
        assert expired["output_tokens"] == 1000  # the whole max_tokens
        cost = {u["metric"]: u for u in second.key_usage("victim")}["cost_usd"]
        assert Decimal(cost["reserved"]) == 0
        assert Decimal(cost["used"]) == sum(Decimal(e["cost_usd"]) for e in entries)
        assert Decimal(expired["cost_usd"]) > Decimal("0.015")  # 1000 tokens at $15/M and more
        flagged = [e for e in entries if "over_reservation" in e["flags"]]
        assert len(flagged) == (3 if over_usage else 0)
        for entry in flagged:  # the truth: 100,000 input tokens at $3/M, and the output
            assert entry["input_tokens"] == 100_000
            assert Decimal(entry["cost_usd"]) > Decimal("0.3")
    finally:
        second.close()


def test_client_disconnect_mid_stream_charges_what_streamed(
    upstream: Upstream, tmp_path: Path
) -> None:
    server = start_capgate(tmp_path, gateway_config(upstream))
    try:
        key = server.create_key("leaver", [{"metric": "cost_usd", "window": "day", "max": 10}])
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 4000,
            "stream": True,
            "messages": [
                {"role": "user", "content": "long mock:words=3000 mock:stream_delay_ms=5"}
            ],
        }
        received = 0
        with httpx.stream(
            "POST", server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
        ) as r:
            for chunk in r.iter_bytes():
                received += len(chunk)
                if received > 4000:
                    break  # hang up mid-stream
        deadline = time.monotonic() + 10
        entries: list[dict] = []
        while time.monotonic() < deadline:
            entries = server.ledger(key="leaver")
            if entries:
                break
            time.sleep(0.2)
        (entry,) = entries
        assert entry["outcome"] == "cancelled" and entry["status"] == 499
        assert 0 < entry["output_tokens"] < 4000  # what was generated, not the reservation
        assert entry["input_tokens"] > 0 and Decimal(entry["cost_usd"]) > 0
        cost = {u["metric"]: u for u in server.key_usage("leaver")}["cost_usd"]
        assert Decimal(cost["reserved"]) == 0 and Decimal(cost["used"]) == Decimal(
            entry["cost_usd"]
        )
    finally:
        server.close()
