"""GET /v1/me and `capgate status`: a developer sees their own limits from the server."""

from __future__ import annotations

import os
import subprocess
import sys

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
