"""The MCP budget tool (`capgate_budget`) and the status line on a hook machine: no key,
but a machine really enrolled (POST /admin/hook/codes, then POST /hook/v1/enrol) whose
config.json and token sit in CAPGATE_HOOK_DIR. Both show the person's limits from
GET /hook/v1/status with the machine's token, and never the token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from capgate.core.limits import nano_to_decimal_str
from capgate.core.windows import format_reset
from conftest import Capgate
from test_mcp import call, over_stdio
from test_status import _enrol
from test_statusline import SESSION_JSON, statusline, today_line

SONNET = "claude-sonnet-4-6"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with $3.00 of Claude Code use today (1M input tokens of Sonnet)."""
    project = tmp_path / ".claude" / "projects" / "-w"
    project.mkdir(parents=True)
    (project / "s1.jsonl").write_text(today_line("m1", 1_000_000))
    return tmp_path


def _person(capgate: Capgate, name: str, limits: list[dict[str, Any]]) -> str:
    made = capgate.admin(
        "POST", "/admin/users", json={"name": name, "timezone": "Europe/Berlin", "limits": limits}
    )
    assert made.status_code == 201, made.text
    return name


def _post(capgate: Capgate, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(
        capgate.url + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _prompt(capgate: Capgate, token: str, prompt: str) -> None:
    """One prompt gated (it holds its estimate until its call is reported)."""
    gate = _post(capgate, token, "/hook/v1/gate", {
        "agent": "claude", "session_id": "s-1", "prompt_id": prompt, "model": SONNET,
        "model_source": "event", "hook_version": "test"})  # fmt: skip
    assert gate["decision"] == "allow", gate


def _call(capgate: Capgate, token: str, prompt: str, input_tokens: int) -> None:
    """The prompt's model call reported: `input_tokens` of Sonnet at $3/M."""
    ident = f"{token[4:16]}-{prompt}"  # ids are global: one server for all tests
    call_ = {"id": "req-" + ident, "message_id": "msg-" + ident, "prompt_id": prompt,
             "model": SONNET, "input": input_tokens, "output": 0, "cache_read": 0,
             "cache_write": 0, "cache_write_1h": 0}  # fmt: skip
    done = _post(capgate, token, "/hook/v1/report", {
        "agent": "claude", "session_id": "s-1", "calls": [call_], "ended_prompts": [prompt]})  # fmt: skip
    assert done["recorded"] == 1, done


def _truth(capgate: Capgate, token: str) -> dict[str, Any]:
    answer = httpx.get(
        capgate.url + "/hook/v1/status", headers={"authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _pace(row: dict[str, Any], now: float) -> int:
    """A day window's use at its end at the pace so far (used + held over the time since
    the person's midnight), as the forecast computes it."""
    end = int(row["resets_at"])
    start = end - 86400  # December in Berlin: no DST change in the day
    return (row["used"] + row["held"]) * 86400 // (int(now) - start)


def test_mcp_budget_on_a_hook_machine(
    home: Path, capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    person = _person(capgate, f"p-{key_name}", [
        {"metric": "cost_usd", "window": "month", "max": "5"},
        {"metric": "requests", "window": "day", "max": 20},
        {"metric": "requests", "window": "day", "max": 5, "model": "claude-opus-*"}])  # fmt: skip
    hook_dir = tmp_path / "capgate-hook"
    machine = _enrol(capgate, person, hook_dir)
    token = machine["token"]
    # The machine's own limit (a key scope) beside its person's.
    patched = capgate.admin("PATCH", f"/admin/keys/{machine['machine']}",
                            json={"limits": [{"metric": "credits", "window": "week", "max": 300}]})  # fmt: skip
    assert patched.status_code == 200, patched.text
    _prompt(capgate, token, "p-1")
    _call(capgate, token, "p-1", 100_000)  # $0.30
    _prompt(capgate, token, "p-2")  # in flight: held

    before = time.time()
    result = over_stdio(home, call("capgate_budget"), CAPGATE_HOOK_DIR=str(hook_dir))
    after = time.time()
    assert result.is_error is False, result.content[0].text
    got = result.structured_content
    truth = _truth(capgate, token)
    assert got["user"] == person and got["machine"] == machine["machine"]
    assert got["key"] == machine["machine"] and got["status"] == "active"
    assert token not in result.content[0].text

    def shown(value: int, metric: str) -> Any:
        return nano_to_decimal_str(value) if metric == "cost_usd" else value

    rows = {(r["scope"], r["metric"], r.get("model")): r for r in got["limits"]}
    assert len(rows) == len(truth["limits"]) == 4
    for want in truth["limits"]:  # every server row, in /v1/me's units and words
        kind, _, name = want["scope"].partition(":")
        row = rows[(f"{kind} {name}", want["metric"], want["model"])]
        metric = want["metric"]
        assert row["window"] == want["window"]
        assert row["max"] == shown(want["max"], metric)
        assert row["used"] == shown(want["used"], metric)
        assert row["reserved"] == shown(want["held"], metric)
        assert row["left"] == shown(want["left"], metric)
        assert row["resets"] == format_reset(int(want["resets_at"]), "Europe/Berlin")
    assert next(iter(rows)) == (f"key {machine['machine']}", "credits", None)  # the key first

    money = rows[(f"user {person}", "cost_usd", None)]
    assert money["used"] == "0.3" and money["max"] == "5"
    assert Decimal(money["left"]) == Decimal(5) - Decimal("0.3") - Decimal(money["reserved"])
    # The forecast at the pace so far: prompts today (1 used + 1 in flight) over the time
    # since Berlin's midnight; the tool ran between `before` and `after`.
    day = next(r for r in truth["limits"] if r["metric"] == "requests" and not r["model"])
    assert (day["used"], day["held"]) == (1, 1)
    prompts = rows[(f"user {person}", "requests", None)]["forecast"]
    assert _pace(day, after) <= prompts["at_reset"] <= _pace(day, before)
    assert prompts["over"] is (prompts["at_reset"] > 20)
    assert Decimal(money["forecast"]["at_reset"]) >= Decimal("0.3")

    # The machine revoked: one clear line, no token.
    revoked = capgate.admin("POST", f"/admin/keys/{machine['machine']}/revoke")
    assert revoked.status_code == 200, revoked.text
    refused = over_stdio(home, call("capgate_budget"), CAPGATE_HOOK_DIR=str(hook_dir))
    message = refused.content[0].text
    assert refused.is_error is True and "\n" not in message.strip()
    assert "401" in message and "revoked?" in message and token not in message


def test_mcp_budget_without_a_key_or_a_hook_machine_names_both(home: Path, tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    result = over_stdio(home, call("capgate_budget"), CAPGATE_HOOK_DIR=str(absent))
    text = result.content[0].text
    assert result.is_error is True and "CAPGATE_KEY" in text and f"{absent}/" in text


def _unclocked(line: str) -> str:
    return re.sub(r" · out at \d\d:\d\d", " · out at HH:MM", line)


def test_statusline_on_a_hook_machine(
    home: Path, capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    person = _person(capgate, f"p-{key_name}", [
        {"metric": "cost_usd", "window": "day", "max": "10"},
        {"metric": "requests", "window": "day", "max": 20}])  # fmt: skip
    hook_dir = tmp_path / "hook-a"
    machine = _enrol(capgate, person, hook_dir)
    token = machine["token"]
    env = {"CAPGATE_HOOK_DIR": str(hook_dir)}
    assert statusline(home, **env).stdout == "capgate $10.00 left (day) · today $3.00\n"

    _prompt(capgate, token, "p-1")
    _call(capgate, token, "p-1", 1_000_000)  # $3 at the server
    # cached until the TTL (the server's $3 not seen yet), then the server's numbers
    assert statusline(home, **env).stdout == "capgate $10.00 left (day) · today $3.00\n"
    fresh = statusline(home, CAPGATE_STATUSLINE_TTL="0", **env).stdout
    # ($3 since Berlin's midnight is a pace that runs out before the day ends: said when.)
    assert re.fullmatch(
        r"capgate \$7\.00 left \(day\)( · out at \d\d:\d\d)? · today \$3\.00\n", fresh
    )
    cache = (home / ".cache" / "capgate" / "statusline.json").read_text()
    assert token not in cache and token[4:16] not in cache  # nor the token's id

    # Another machine (another person, prompts only) is not served from that cache.
    other = _person(capgate, f"q-{key_name}", [{"metric": "requests", "window": "day", "max": 20}])
    other_dir = tmp_path / "hook-b"
    second = _enrol(capgate, other, other_dir)
    _prompt(capgate, second["token"], "p-1")  # in flight: counts against what is left
    line = statusline(home, CAPGATE_HOOK_DIR=str(other_dir)).stdout
    assert line == "capgate 19 prompts left (day) · today $3.00\n"
    # ... and a key in the environment wins over the machine, cached apart too.
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "month", "max": 2}])
    keyed = statusline(home, CAPGATE_KEY=key, CAPGATE_URL=capgate.url, **env).stdout
    assert keyed == "capgate $2.00 left (month) · today $3.00\n"
    # (a long TTL: under load the default's 30 s may have passed; the forecast's minute is
    # worked out when the line is printed and may have moved on)
    cached = statusline(home, CAPGATE_STATUSLINE_TTL="3600", **env).stdout
    assert _unclocked(cached) == _unclocked(fresh)

    # A cache hit on a hook machine imports nothing heavy (what keeps it under 50 ms).
    hit = subprocess.run(
        [sys.executable, "-X", "importtime", str(Path(sys.executable).parent / "capgate-statusline")],
        input=SESSION_JSON, capture_output=True, text=True, timeout=30, check=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "TZ": "UTC",
             "CAPGATE_STATUSLINE_TTL": "3600", **env},
    )  # fmt: skip
    assert _unclocked(hit.stdout) == _unclocked(fresh)
    imported = {line.split("|")[-1].strip() for line in hit.stderr.splitlines()}
    heavy = {"capgate.local", "capgate.core", "capgate.mcp", "urllib.request", "httpx"}
    assert not heavy & imported, heavy & imported

    # The machine revoked: the line says so (and still shows today's cost).
    revoked = capgate.admin("POST", f"/admin/keys/{machine['machine']}/revoke")
    assert revoked.status_code == 200, revoked.text
    refused = statusline(home, CAPGATE_STATUSLINE_TTL="0", **env)
    assert refused.stdout == "capgate: machine token refused (revoked?) · today $3.00\n"
    assert token not in refused.stdout + refused.stderr


def test_statusline_identity_is_the_enrolment(home: Path, tmp_path: Path) -> None:
    """A re-enrolled machine (new token in the same directory) is not served the old
    machine's cached line."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "config.json").write_text(json.dumps({"server": "http://127.0.0.1:9"}))
    (hook_dir / "token").write_text("cgh-aaaaaaaaaaaa-one\n")
    env = {"CAPGATE_HOOK_DIR": str(hook_dir)}
    assert statusline(home, **env).stdout == "capgate unreachable · today $3.00\n"
    cache_file = home / ".cache" / "capgate" / "statusline.json"
    cached = json.loads(cache_file.read_text())
    cached["budget"]["text"] = "capgate OLD"
    cache_file.write_text(json.dumps(cached))
    assert statusline(home, **env).stdout == "capgate OLD · today $3.00\n"  # a hit
    (hook_dir / "token").write_text("cgh-bbbbbbbbbbbb-two\n")
    assert statusline(home, **env).stdout == "capgate unreachable · today $3.00\n"
    assert "cgh-" not in cache_file.read_text()
