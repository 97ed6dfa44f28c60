"""Users, teams, orgs and providers: budgets above keys, reserved all or nothing with the
key's own limits, under concurrency, with refusals that name the scope."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import httpx

from conftest import Capgate
from test_race import _fire

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}


def post(capgate: Capgate, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        capgate.url + "/v1/messages", json=body or BODY, headers={"x-api-key": key}, timeout=30
    )


def create(capgate: Capgate, plural: str, name: str, limits: list[dict], **fields: object) -> dict:
    response = capgate.admin(
        "POST", f"/admin/{plural}", json={"name": name, "limits": limits, **fields}
    )
    assert response.status_code == 201, response.text
    assert "key" not in response.json()
    return dict(response.json())


def usage(capgate: Capgate, plural: str, name: str) -> dict[str, dict]:
    response = capgate.admin("GET", f"/admin/{plural}/{name}")
    assert response.status_code == 200, response.text
    return {u["metric"]: u for u in response.json()["usage"]}


def test_team_budget_holds_across_its_keys_under_concurrency(
    capgate: Capgate, key_name: str
) -> None:
    team = f"team-{key_name}"
    create(capgate, "teams", team, [{"metric": "requests", "window": "day", "max": 25}])
    keys = [capgate.create_key(f"{key_name}-{i}", team=team) for i in range(4)]

    async def all_keys() -> list[tuple[int, str]]:
        results = await asyncio.gather(*(_fire([capgate.url], k, 50) for k in keys))
        return [r for batch in results for r in batch]

    results = asyncio.run(all_keys())
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 25, 402: 175}
    team_usage = usage(capgate, "teams", team)["requests"]
    assert team_usage["used"] == 25 and team_usage["reserved"] == 0
    refusal = capgate.ledger(key=f"{key_name}-0", outcome="refused")[0]["refusal"]
    assert refusal["scope"] == "team" and refusal["name"] == team
    assert f'Daily request limit of team "{team}"' in refusal["message"]


def test_team_dollar_budget_never_overspent(capgate: Capgate, key_name: str) -> None:
    team = f"team-{key_name}"
    create(capgate, "teams", team, [{"metric": "cost_usd", "window": "month", "max": "0.05"}])
    keys = [capgate.create_key(f"{key_name}-{i}", team=team) for i in range(4)]

    async def all_keys() -> None:
        await asyncio.gather(*(_fire([capgate.url], k, 50) for k in keys))

    asyncio.run(all_keys())
    cost = usage(capgate, "teams", team)["cost_usd"]
    spent = sum(
        Decimal(e["cost_usd"]) for i in range(4) for e in capgate.ledger(key=f"{key_name}-{i}")
    )
    assert Decimal(cost["used"]) == spent <= Decimal("0.05")
    assert Decimal(cost["reserved"]) == 0 and spent > 0


def test_pausing_a_team_refuses_all_its_keys_at_once(capgate: Capgate, key_name: str) -> None:
    team = f"team-{key_name}"
    create(capgate, "teams", team, [])
    a, b = (
        capgate.create_key(f"{key_name}-a", team=team),
        capgate.create_key(f"{key_name}-b", team=team),
    )
    other = capgate.create_key(f"{key_name}-other")
    assert post(capgate, a).status_code == 200
    assert capgate.admin("POST", f"/admin/teams/{team}/pause").status_code == 200
    for key in (a, b):
        refused = post(capgate, key)
        assert refused.status_code == 403
        assert f'team "{team}" is paused' in refused.json()["error"]["message"]
    assert post(capgate, other).status_code == 200
    assert capgate.admin("POST", f"/admin/teams/{team}/resume").status_code == 200
    assert post(capgate, b).status_code == 200


def test_org_and_user_budgets_apply_through_membership(capgate: Capgate, key_name: str) -> None:
    org, team, user = f"org-{key_name}", f"team-{key_name}", f"user-{key_name}"
    create(capgate, "orgs", org, [{"metric": "requests", "window": "day", "max": 3}])
    create(capgate, "teams", team, [], org=org)
    create(capgate, "users", user, [{"metric": "requests", "window": "day", "max": 2}])
    k1 = capgate.create_key(f"{key_name}-1", team=team, user=user)
    k2 = capgate.create_key(f"{key_name}-2", team=team)
    assert [post(capgate, k1).status_code for _ in range(3)] == [200, 200, 402]  # the user's 2
    assert post(capgate, k2).status_code == 200  # the org's third
    refused = post(capgate, k2)
    assert refused.status_code == 402 and f'org "{org}"' in refused.json()["error"]["message"]
    assert usage(capgate, "orgs", org)["requests"]["used"] == 3


def test_provider_budget(capgate: Capgate, key_name: str) -> None:
    """A provider scope, named like the config's provider, caps what is routed there; here
    with a per-model limit so that other tests sharing the server are not affected."""
    create(
        capgate,
        "providers",
        "anthropic",
        [{"metric": "requests", "window": "day", "max": 2, "model": "claude-opus-4-1"}],
    )
    try:
        keys = [capgate.create_key(f"{key_name}-{i}") for i in range(2)]
        opus = {**BODY, "model": "claude-opus-4-1"}
        statuses = [post(capgate, k, opus).status_code for k in (*keys, *keys)]
        assert statuses == [200, 200, 402, 402]
        refused = post(capgate, keys[0], opus).json()["error"]["message"]
        assert 'provider "anthropic"' in refused and "for models claude-opus-4-1" in refused
        assert post(capgate, keys[0]).status_code == 200  # other models are not capped
    finally:
        capgate.admin("DELETE", "/admin/providers/anthropic")


def test_membership_fields_are_checked(capgate: Capgate, key_name: str) -> None:
    bad = capgate.admin("POST", "/admin/users", json={"name": key_name, "org": "x"})
    assert bad.status_code == 400 and "a user has no org" in bad.json()["error"]["message"]
    bad = capgate.admin("POST", "/admin/teams", json={"name": key_name, "team": "x"})
    assert bad.status_code == 400


def test_cli_manages_teams(capgate: Capgate, key_name: str) -> None:
    env = {**os.environ, "CAPGATE_URL": capgate.url, "CAPGATE_ADMIN_KEY": capgate.admin_key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "capgate", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    team = f"team-{key_name}"
    done = cli(
        "teams", "create", team, "--limit", "requests=1/day", "--org", "acme", "--create-org"
    )
    assert done.returncode == 0, done.stderr
    assert capgate.admin("GET", f"/admin/teams/{team}").json()["org"] == "acme"
    key = capgate.create_key(key_name, team=team)
    assert post(capgate, key).status_code == 200
    assert post(capgate, key).status_code == 402
    assert cli("teams", "reset-usage", team).returncode == 0
    assert post(capgate, key).status_code == 200
    shown = cli("teams", "show", team)
    assert shown.returncode == 0 and "requests/day" in shown.stdout
    assert cli("teams", "pause", team).returncode == 0
    assert post(capgate, key).status_code == 403
    refused = cli("teams", "delete", team)  # a key still names it: no dangling name
    assert refused.returncode != 0 and key_name in refused.stderr, refused.stderr
    assert capgate.admin("GET", f"/admin/teams/{team}").status_code == 200
    moved = capgate.admin("PATCH", f"/admin/keys/{key_name}", json={"team": None})
    assert moved.status_code == 200, moved.text
    assert cli("teams", "delete", team).returncode == 0
    assert post(capgate, key).status_code == 200  # the key without a team


def test_rolling_window_end_to_end(capgate: Capgate, key_name: str) -> None:
    """3 requests per rolling 5 seconds: the fourth waits, and usage ages out by itself."""
    import time

    key = capgate.create_key(key_name, [{"metric": "requests", "window": "rolling-5s", "max": 3}])
    assert [post(capgate, key).status_code for _ in range(3)] == [200, 200, 200]
    refused = post(capgate, key)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "Rolling 5-second request limit" in refused.json()["error"]["message"]
    time.sleep(6.5)  # a span and a bucket: the first three have left the window
    assert post(capgate, key).status_code == 200
    limits = capgate.key_usage(key_name)
    assert limits[0]["window"] == "rolling-5s" and limits[0]["used"] == 1


def test_credits_weigh_models(capgate: Capgate, key_name: str) -> None:
    """20 credits a day: two opus requests (10 each) spend them; sonnet (3) is refused after."""
    key = capgate.create_key(key_name, [{"metric": "credits", "window": "day", "max": 20}])
    opus = {**BODY, "model": "claude-opus-4-1"}
    assert [post(capgate, key, opus).status_code for _ in range(2)] == [200, 200]
    refused = post(capgate, key)  # sonnet: 3 more credits do not fit
    # CI once saw this answered 200 (not reproduced in hundreds of runs since): say what
    # the server held if it happens again.
    seen = (capgate.key_usage(key_name), capgate.ledger(key=key_name), time.time())
    assert refused.status_code == 402, seen
    assert "Daily credit limit" in refused.json()["error"]["message"]
    credits = {u["metric"]: u for u in capgate.key_usage(key_name)}["credits"]
    assert credits["used"] == 20 and credits["reserved"] == 0


def test_schedules_end_to_end(capgate: Capgate, key_name: str) -> None:
    """A schedule closed right now refuses its models (403) and names the window; a
    schedule open right now lets them through; other models are not restricted."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    today = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    tomorrow = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(now.weekday() + 1) % 7]
    closed = {"model": "claude-opus*", "days": tomorrow, "start": "00:00", "end": "24:00"}
    opened = {"model": "claude-haiku*", "days": today, "start": "00:00", "end": "24:00"}
    response = capgate.admin(
        "POST", "/admin/keys", json={"name": key_name, "schedules": [closed, opened]}
    )
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    assert response.json()["schedules"][0]["days"] == tomorrow
    refused = post(capgate, key, {**BODY, "model": "claude-opus-4-1"})
    assert refused.status_code == 403
    assert f"only {tomorrow} 00:00-24:00 UTC" in refused.json()["error"]["message"]
    assert refused.headers["x-capgate-refusal"] == "outside_schedule"
    assert post(capgate, key, {**BODY, "model": "claude-haiku-4-5"}).status_code == 200
    assert post(capgate, key).status_code == 200  # sonnet: no schedule matches
    bad = capgate.admin(
        "PATCH", f"/admin/keys/{key_name}", json={"schedules": [{"start": "9", "end": "17:00"}]}
    )
    assert bad.status_code == 400 and "schedules.0" in bad.json()["error"]["message"]


def test_team_windows_use_the_team_timezone(capgate: Capgate, key_name: str) -> None:
    """A team in Asia/Tokyo counts its day from Tokyo midnight, whatever its keys' zones."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    team = f"team-{key_name}"
    create(
        capgate,
        "teams",
        team,
        [{"metric": "requests", "window": "day", "max": 1}],
        timezone="Asia/Tokyo",
    )
    key = capgate.create_key(key_name, team=team, timezone="America/Los_Angeles")
    assert post(capgate, key).status_code == 200
    refused = post(capgate, key)
    assert refused.status_code == 402 and "Asia/Tokyo" in refused.json()["error"]["message"]
    resets_at = usage(capgate, "teams", team)["requests"]["resets_at"]
    local = dt.datetime.fromtimestamp(resets_at, ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (0, 0)
    assert 0 < resets_at - dt.datetime.now(dt.UTC).timestamp() <= 86_400


def test_cli_show_lists_members(capgate: Capgate, key_name: str) -> None:
    env = {**os.environ, "CAPGATE_URL": capgate.url, "CAPGATE_ADMIN_KEY": capgate.admin_key}
    env["COLUMNS"] = "200"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "capgate", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    org, team, user = f"o-{key_name}", f"t-{key_name}", f"u-{key_name}"
    cli("teams", "create", team, "--org", org, "--create-org")
    cli("users", "create", user)
    capgate.create_key(f"{key_name}-1", team=team, user=user)
    capgate.create_key(f"{key_name}-2", team=team)
    shown = cli("teams", "show", team)
    assert f"keys: {key_name}-1, {key_name}-2" in shown and f"users: {user}" in shown
    assert f"org={org}" in shown
    assert f"keys: {key_name}-1" in cli("users", "show", user)
    assert f"teams: {team}" in cli("orgs", "show", org)
