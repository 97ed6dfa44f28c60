"""GET /v1/me and `capgate status`: a developer sees their own limits from the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from conftest import Capgate


def test_me_shows_own_limits_and_usage(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(
        key_name,
        [
            {"metric": "requests", "window": "day", "max": 10},
            {"metric": "cost_usd", "window": "month", "max": 5},
        ],
        timezone="Europe/Berlin",
    )
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert (
        httpx.post(capgate.url + "/v1/messages", json=body, headers={"x-api-key": key}).status_code
        == 200
    )
    me = httpx.get(capgate.url + "/v1/me", headers={"authorization": f"Bearer {key}"}).json()
    assert me["key"] == key_name and me["timezone"] == "Europe/Berlin"
    limits = {row["metric"]: row for row in me["limits"]}
    assert limits["requests"]["used"] == 1 and limits["requests"]["remaining"] == 9
    assert limits["requests"]["resets"].endswith("00:00 Europe/Berlin")
    assert 0 < float(limits["cost_usd"]["used"]) < 5


def test_me_needs_a_valid_key(capgate: Capgate) -> None:
    response = httpx.get(capgate.url + "/v1/me", headers={"x-api-key": "sk-cg-nope"})
    assert response.status_code == 401 and "error" in response.json()


def test_status_command_prints_a_table(capgate: Capgate, key_name: str) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 10}])
    env = {**os.environ, "CAPGATE_KEY": key, "CAPGATE_URL": capgate.url, "COLUMNS": "120"}
    env.pop("CAPGATE_ADMIN_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert key_name in done.stdout and "requests/day" in done.stdout and "UTC" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "capgate", "status"],
        env={**env, "CAPGATE_KEY": "sk-cg-aaaaaaaaaaaa-wrong"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "Invalid API key" in bad.stderr


def test_me_and_status_show_the_team_above_the_key(capgate: Capgate, key_name: str) -> None:
    team = f"team-{key_name}"
    response = capgate.admin(
        "POST",
        "/admin/teams",
        json={"name": team, "limits": [{"metric": "requests", "window": "week", "max": 50}]},
    )
    assert response.status_code == 201
    key = capgate.create_key(key_name, team=team)
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert (
        httpx.post(capgate.url + "/v1/messages", json=body, headers={"x-api-key": key}).status_code
        == 200
    )
    me = httpx.get(capgate.url + "/v1/me", headers={"x-api-key": key}).json()
    (scope,) = me["scopes"]
    assert scope["kind"] == "team" and scope["name"] == team
    assert scope["limits"][0]["used"] == 1 and scope["limits"][0]["remaining"] == 49
    env = {**os.environ, "CAPGATE_KEY": key, "CAPGATE_URL": capgate.url, "COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and f"team {team}" in done.stdout and "requests/week" in done.stdout


def test_status_with_the_admin_key_says_what_it_needs(capgate: Capgate) -> None:
    """The admin key is not a virtual key: say so, and where an admin looks instead."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CAPGATE_", "ANTHROPIC_"))}
    base.pop("OPENAI_API_KEY", None)
    base["CAPGATE_URL"] = capgate.url
    for env in (
        {"CAPGATE_KEY": capgate.admin_key},
        {"CAPGATE_ADMIN_KEY": capgate.admin_key},
        {"ANTHROPIC_API_KEY": capgate.admin_key, "CAPGATE_ADMIN_KEY": capgate.admin_key},
    ):
        done = subprocess.run(
            [sys.executable, "-m", "capgate", "status"],
            env={**base, **env},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        message = " ".join(done.stderr.split())
        assert "needs" in message and "virtual key" in message and "not the admin key" in message
        assert "capgate keys show NAME" in message
        assert capgate.admin_key not in done.stderr


# -- a hook machine: no key, the machine's token from the hook directory -----------------


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment without any capgate or provider key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPGATE_", "ANTHROPIC_"))}
    env.pop("OPENAI_API_KEY", None)
    return {**env, "COLUMNS": "200", **extra}


def _status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capgate", "status", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _enrol(capgate: Capgate, person: str, hook_dir: Path) -> dict[str, Any]:
    """Enrol a machine as the hook's installer does, and leave its files in `hook_dir`."""
    created = capgate.admin("POST", "/admin/hook/codes", json={"user": person})
    assert created.status_code == 201, created.text
    enrolled = httpx.post(
        capgate.url + "/hook/v1/enrol",
        json={"code": created.json()["code"], "hostname": "devbox", "os": "linux",
              "os_user": "dev", "agents": ["claude"], "hook_version": "test"},
        timeout=30,
    )  # fmt: skip
    assert enrolled.status_code == 200, enrolled.text
    answer: dict[str, Any] = enrolled.json()
    hook_dir.mkdir(exist_ok=True)
    config = {"server": capgate.url, "machine": answer["machine"], "user": person,
              "agents": ["claude"], "hook_version": "test"}  # fmt: skip
    (hook_dir / "config.json").write_text(json.dumps(config))
    (hook_dir / "token").write_text(answer["token"] + "\n")
    return answer


def test_status_on_a_hook_machine_shows_the_persons_limits(
    capgate: Capgate, key_name: str, tmp_path: Path
) -> None:
    """No key given, but the machine is enrolled: `capgate status` reads the person's limits
    with the machine token (GET /hook/v1/status) and prints claude-code-limiter's table."""
    person = f"p-{key_name}"
    created = capgate.admin("POST", "/admin/users", json={
        "name": person, "timezone": "Europe/Berlin", "limits": [
            {"metric": "requests", "window": "day", "max": 20},
            {"metric": "requests", "window": "day", "max": 5, "model": "claude-opus-*"},
            {"metric": "cost_usd", "window": "month", "max": "5"},
            {"metric": "credits", "window": "week", "max": 300}]})  # fmt: skip
    assert created.status_code == 201, created.text
    hook_dir = tmp_path / "capgate-hook"
    machine = _enrol(capgate, person, hook_dir)
    gate = httpx.post(
        capgate.url + "/hook/v1/gate",
        headers={"authorization": f"Bearer {machine['token']}"},
        json={"agent": "claude", "session_id": "s-1", "prompt_id": "p-1",
              "model": "claude-sonnet-4-6", "model_source": "event", "hook_version": "test"},
        timeout=30,
    )  # fmt: skip
    assert gate.status_code == 200 and gate.json()["decision"] == "allow", gate.text
    truth = httpx.get(
        capgate.url + "/hook/v1/status",
        headers={"authorization": f"Bearer {machine['token']}"},
        timeout=30,
    ).json()
    env = _plain_env(CAPGATE_HOOK_DIR=str(hook_dir))

    done = _status(env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert person in out and machine["machine"] in out and "timezone=Europe/Berlin" in out
    lines = out.splitlines()
    for row in truth["limits"]:  # the server's numbers, each on its limit's line
        shown = [
            line for line in lines if row["scope"] in line and (row["model"] or " all ") in line
        ]
        texts = (f" {row['used_text']} ", f" {row['max_text']} ", f" {row['left_text']} ")
        assert any(all(t in f"{line} " for t in texts) for line in shown), (row, out)
    prompts = next(line for line in lines if "prompts a day" in line and " all " in line)
    # the admitted prompt holds its one until it is reported ("in flight"): left counts it
    assert "in flight" in out and "(Europe/Berlin)" in out
    assert prompts.split()[5:7] == ["0", "1"] and " 20 " in prompts and " 19 " in prompts, prompts
    day = next(r for r in truth["limits"] if r["metric"] == "requests" and not r["model"])
    midnight = datetime.fromtimestamp(day["resets_at"], ZoneInfo("Europe/Berlin"))
    assert midnight.strftime("%H:%M") == "00:00"  # the person's midnight, in their timezone
    assert prompts.rstrip().endswith(midnight.strftime("%Y-%m-%d %H:%M")), prompts
    assert any("dollars a month" in line and "$5" in line for line in lines), out
    assert any("credits a week" in line for line in lines), out
    assert any("claude-opus-*" in line for line in lines), out
    assert machine["token"] not in out + done.stderr

    as_json = _status(env, "--json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["user"] == person and shown["limits"] == truth["limits"]

    # A key in the environment still wins: the key's own limits, from /v1/me.
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 3}])
    keyed = _status({**env, "CAPGATE_KEY": key, "CAPGATE_URL": capgate.url})
    assert keyed.returncode == 0 and key_name in keyed.stdout and "prompts" not in keyed.stdout

    # The machine revoked: its token is refused, and status says so.
    revoked = capgate.admin("POST", f"/admin/keys/{machine['machine']}/revoke")
    assert revoked.status_code == 200, revoked.text
    refused = _status(env)
    assert refused.returncode == 1 and "401" in refused.stderr and "revoked?" in refused.stderr
    assert "Traceback" not in refused.stderr and machine["token"] not in refused.stderr


def test_status_without_a_key_or_a_hook_machine_says_both(tmp_path: Path) -> None:
    done = _status(_plain_env(CAPGATE_HOOK_DIR=str(tmp_path / "absent")))
    message = " ".join(done.stderr.split())
    assert done.returncode == 1 and "set CAPGATE_KEY" in message, done.stderr
    assert f"{tmp_path / 'absent'}/" in message and "hook mode" in message
