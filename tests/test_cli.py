"""The real `capgate` command line (`python -m capgate ...` in a subprocess) against the
shared server: keys from creation to deletion, usage exports, and its error messages."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from capgate.core.limits import format_usd, usd_to_nano
from conftest import ADMIN_KEY, ROOT, Capgate

HAIKU = "claude-haiku-4-5"
HAIKU_PRICE = (Decimal("1"), Decimal("5"))  # USD per million tokens, input and output
RAW_KEY = re.compile(r"^(sk-cg-[a-z0-9]{12}-\S+)$", re.MULTILINE)


def run_cli(
    capgate: Capgate | None,
    *args: str,
    admin_key: str | None = ADMIN_KEY,
    url: str | None = None,
    columns: int = 250,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    env.update({"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"})
    if url is None and capgate is not None:
        url = capgate.url
    if url is not None:
        env["CAPGATE_URL"] = url
    if admin_key is not None:
        env["CAPGATE_ADMIN_KEY"] = admin_key
    return subprocess.run(
        [sys.executable, "-m", "capgate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """A clean failure: non-zero exit, an `error:` line, no traceback."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "error" in output.lower(), output
    return output


def ask(capgate: Capgate, key: str, model: str = HAIKU, words: int = 3) -> httpx.Response:
    return httpx.post(
        capgate.url + "/v1/messages",
        json={
            "model": model,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": f"hi mock:words={words}"}],
        },
        headers={"x-api-key": key},
        timeout=30,
        trust_env=False,
    )


def create(capgate: Capgate, name: str, *options: str) -> str:
    out = ok(run_cli(capgate, "keys", "create", name, *options))
    match = RAW_KEY.search(out)
    assert match, out
    return match.group(1)


def shown(capgate: Capgate, name: str) -> dict[str, Any]:
    response = capgate.admin("GET", f"/admin/keys/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_help_lists_commands() -> None:
    out = ok(run_cli(None, "--help"))
    for command in ("serve", "keys", "usage"):
        assert re.search(rf"\b{command}\b", out), out
    keys_help = ok(run_cli(None, "keys", "--help"))
    for command in (
        "create",
        "list",
        "show",
        "update",
        "pause",
        "resume",
        "revoke",
        "reset-usage",
        "delete",
    ):
        assert command in keys_help


def test_create_prints_a_working_key(capgate: Capgate, key_name: str) -> None:
    raw = create(
        capgate,
        key_name,
        "--limit", "cost=5/day",
        "--limit", "claude-opus*:requests=5/day",
        "--model", "claude-*",
        "--team", "t1", "--create-team",
        "--user", "u1", "--create-user",
    )  # fmt: skip
    with anthropic.Anthropic(base_url=capgate.url, api_key=raw, max_retries=0) as client:
        message = client.messages.create(
            model=HAIKU, max_tokens=50, messages=[{"role": "user", "content": "hi mock:words=4"}]
        )
    assert message.usage.output_tokens == 4
    key = shown(capgate, key_name)
    assert key["limits"] == [
        {"metric": "cost_usd", "window": "day", "max": "5"},
        {"metric": "requests", "window": "day", "max": 5, "model": "claude-opus*"},
    ]
    assert key["models"] == ["claude-*"]
    assert (key["team"], key["user"]) == ("t1", "u1")
    # --model took effect: a GPT model is not allowed for this key.
    refused = httpx.post(
        capgate.url + "/v1/chat/completions",
        json={"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {raw}"},
        timeout=30,
        trust_env=False,
    )
    assert refused.status_code == 403


def test_create_json_and_duplicate(capgate: Capgate, key_name: str) -> None:
    out = ok(run_cli(capgate, "keys", "create", key_name, "--json", "--expires", "2099-12-31"))
    created = json.loads(out)
    assert created["name"] == key_name and created["key"].startswith("sk-cg-")
    assert created["expires_at"].startswith("2099-12-31")
    assert ask(capgate, created["key"]).status_code == 200
    message = failed(run_cli(capgate, "keys", "create", key_name))
    assert "409" in message and key_name in message


def test_list_and_show(capgate: Capgate, key_name: str) -> None:
    raw = create(
        capgate, key_name, "--limit", "requests=9/day", "--team", "listers", "--create-team"
    )
    assert ask(capgate, raw, words=5).status_code == 200
    listing = ok(run_cli(capgate, "keys", "list", columns=2000))
    line = next((row for row in listing.splitlines() if key_name in row), None)
    assert line is not None, listing
    assert "active" in line and "listers" in line and "requests=1/9 per day" in line
    assert raw not in listing and raw[len("sk-cg-") + 13 :] not in listing
    items = json.loads(ok(run_cli(capgate, "keys", "list", "--json")))
    mine = next(k for k in items if k["name"] == key_name)
    assert mine["usage"][0]["used"] == 1

    show = ok(run_cli(capgate, "keys", "show", key_name))
    assert key_name in show and "team=listers" in show
    assert re.search(r"requests/day\s+1\s+0\s+9\s+8\s", show), show
    data = json.loads(ok(run_cli(capgate, "keys", "show", key_name, "--json")))
    assert data["usage"][0]["remaining"] == 8 and "key" not in data
    assert "404" in failed(run_cli(capgate, "keys", "show", f"{key_name}-nope"))


def test_update(capgate: Capgate, key_name: str) -> None:
    raw = create(capgate, key_name, "--limit", "requests=1/day", "--team", "a", "--create-team")
    assert ask(capgate, raw).status_code == 200
    assert ask(capgate, raw).status_code == 402
    ok(run_cli(capgate, "keys", "update", key_name, "--limit", "requests=10/day"))
    key = shown(capgate, key_name)
    assert key["limits"] == [{"metric": "requests", "window": "day", "max": 10}]
    assert key["team"] == "a"  # untouched
    assert key["usage"][0]["used"] == 1  # raising a limit keeps what was used
    assert ask(capgate, raw).status_code == 200
    changes = ("--team", "b", "--create-team", "--model", "claude-haiku-*")
    ok(run_cli(capgate, "keys", "update", key_name, *changes))
    key = shown(capgate, key_name)
    assert key["team"] == "b" and key["models"] == ["claude-haiku-*"]
    assert key["limits"] == [{"metric": "requests", "window": "day", "max": 10}]
    assert "nothing to change" in failed(run_cli(capgate, "keys", "update", key_name))


def test_pause_resume_revoke(capgate: Capgate, key_name: str) -> None:
    raw = create(capgate, key_name)
    assert "paused" in ok(run_cli(capgate, "keys", "pause", key_name))
    with (
        anthropic.Anthropic(base_url=capgate.url, api_key=raw, max_retries=0) as client,
        pytest.raises(anthropic.PermissionDeniedError, match="paused"),
    ):
        client.messages.create(
            model=HAIKU, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    ok(run_cli(capgate, "keys", "resume", key_name))
    assert ask(capgate, raw).status_code == 200
    ok(run_cli(capgate, "keys", "revoke", key_name))
    refused = ask(capgate, raw)
    assert refused.status_code == 403 and "revoked" in refused.text
    message = failed(run_cli(capgate, "keys", "resume", key_name))
    assert "400" in message and "revoked" in message
    assert shown(capgate, key_name)["status"] == "revoked"


def test_reset_usage_and_delete(capgate: Capgate, key_name: str) -> None:
    raw = create(capgate, key_name, "--limit", "requests=1/day", "--limit", "cost=1/month")
    assert ask(capgate, raw).status_code == 200
    assert ask(capgate, raw).status_code == 402
    ok(run_cli(capgate, "keys", "reset-usage", key_name))
    usage = {u["metric"]: u for u in shown(capgate, key_name)["usage"]}
    assert usage["requests"]["used"] == 0 and usage["cost_usd"]["used"] == "0"
    assert ask(capgate, raw).status_code == 200

    ok(run_cli(capgate, "keys", "delete", key_name))
    assert ask(capgate, raw).status_code == 401
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    assert "404" in failed(run_cli(capgate, "keys", "delete", key_name))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("cost5/day", "bad limit"),
        ("requests=-1/day", "bad limit"),
        ("cost=5/fortnight", "unknown window"),
        ("bogus=1/day", "unknown metric"),
        ("requests=1.5/day", "whole number"),
        ("cost=0.0000000001/day", "nano-dollar"),
    ],
)
def test_bad_limit_syntax(capgate: Capgate, key_name: str, spec: str, says: str) -> None:
    message = failed(run_cli(capgate, "keys", "create", key_name, "--limit", spec))
    assert says in message
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404  # not created


def test_malformed_number_in_limit(capgate: Capgate, key_name: str) -> None:
    failed(run_cli(capgate, "keys", "create", key_name, "--limit", "requests=1.2.3/day"))


def test_usage_exports_exact_cost(capgate: Capgate, key_name: str) -> None:
    raw = create(capgate, key_name)
    answers = [ask(capgate, raw, words=w).json()["usage"] for w in (3, 8, 13)]
    price_in, price_out = HAIKU_PRICE
    cost = sum(
        (u["input_tokens"] * price_in + u["output_tokens"] * price_out) / 10**6 for u in answers
    )
    assert isinstance(cost, Decimal) and cost > 0

    items = json.loads(ok(run_cli(capgate, "usage", "--by", "key", "--format", "json")))
    mine = next(i for i in items if i["key"] == key_name)
    assert Decimal(mine["cost_usd"]) == cost
    assert mine["requests"] == 3 and mine["output_tokens"] == 24
    assert mine["input_tokens"] == sum(u["input_tokens"] for u in answers)

    text = ok(run_cli(capgate, "usage", "--by", "key", "--format", "csv"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "key", "requests", "refused", "errors", "input_tokens", "output_tokens",
        "cache_read_tokens", "cache_write_tokens", "cost_usd", "cache_hits", "saved_usd",
    ]  # fmt: skip
    row = next(r for r in rows if r["key"] == key_name)
    assert row["cost_usd"] == mine["cost_usd"] and Decimal(row["cost_usd"]) == cost
    assert row["requests"] == "3"

    table = ok(run_cli(capgate, "usage", "--by", "key"))
    assert any(key_name in line and mine["cost_usd"] in line for line in table.splitlines()), table

    by_model = json.loads(ok(run_cli(capgate, "usage", "--by", "model", "--format", "json")))
    assert any(i["model"] == HAIKU for i in by_model)
    assert "--format" in failed(run_cli(capgate, "usage", "--format", "xml"))
    assert "group_by" in failed(run_cli(capgate, "usage", "--by", "colour"))


def test_missing_admin_key(capgate: Capgate) -> None:
    for args in (("usage",), ("keys", "create", "nobody-should-exist")):
        message = failed(run_cli(capgate, *args, admin_key=None))
        assert "CAPGATE_ADMIN_KEY" in message
    assert capgate.admin("GET", "/admin/keys/nobody-should-exist").status_code == 404


def test_wrong_admin_key(capgate: Capgate) -> None:
    message = failed(run_cli(capgate, "keys", "list", admin_key="sk-cg-admin-wrong"))
    assert "401" in message and "admin" in message.lower()


def test_unreachable_server() -> None:
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    message = failed(run_cli(None, "keys", "list", url=url))
    assert "cannot reach capgate" in message and url in message


def test_url_option_overrides_env(capgate: Capgate, key_name: str) -> None:
    """--url wins over CAPGATE_URL (here pointing at nothing)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(
        None, "keys", "create", key_name, "--url", capgate.url, url=f"http://127.0.0.1:{port}"
    )
    assert RAW_KEY.search(ok(result))
    assert shown(capgate, key_name)["name"] == key_name


# -- the first hour: traps ------------------------------------------------------------------


def test_add_and_remove_limit_keep_the_others(capgate: Capgate, key_name: str) -> None:
    create(capgate, key_name, "--limit", "cost=5/day", "--limit", "claude-opus*:requests=5/day")
    out = ok(run_cli(capgate, "keys", "update", key_name, "--add-limit", "requests=9/minute"))
    assert "limits: cost_usd=5/day, claude-opus*:requests=5/day, requests=9/minute" in out
    assert len(shown(capgate, key_name)["limits"]) == 3
    # the same metric, window and models: replaced, not doubled
    ok(run_cli(capgate, "keys", "update", key_name, "--add-limit", "cost=7/day"))
    out = ok(
        run_cli(capgate, "keys", "update", key_name, "--remove-limit", "claude-opus*:requests/day")
    )
    assert "limits: requests=9/minute, cost_usd=7/day" in out
    out = ok(run_cli(capgate, "keys", "update", key_name, "--remove-limit", "requests=9/minute"))
    assert "limits: cost_usd=7/day" in out
    assert shown(capgate, key_name)["limits"] == [
        {"metric": "cost_usd", "window": "day", "max": "7"}
    ]
    # what cannot be done says so and changes nothing
    message = failed(run_cli(capgate, "keys", "update", key_name, "--remove-limit", "tokens/day"))
    assert "no such limit" in message and "cost_usd/day" in message
    both = ("--limit", "requests=1/day", "--add-limit", "tokens=5/day")
    assert "replaces all" in failed(run_cli(capgate, "keys", "update", key_name, *both))
    assert "bad --remove-limit" in failed(
        run_cli(capgate, "keys", "update", key_name, "--remove-limit", "cost")
    )
    assert shown(capgate, key_name)["limits"] == [
        {"metric": "cost_usd", "window": "day", "max": "7"}
    ]
    # --limit still replaces them all, and the answer shows the result
    out = ok(run_cli(capgate, "keys", "update", key_name, "--limit", "requests=3/day"))
    assert "limits: requests=3/day" in out and "cost" not in out
    assert "REPLACES ALL" in ok(run_cli(None, "keys", "update", "--help")).upper()


def test_list_shows_per_model_limits_models_and_schedules(capgate: Capgate, key_name: str) -> None:
    create(
        capgate, key_name,
        "--limit", "claude-opus*:requests=5/day",
        "--model", "claude-*",
        "--schedule", "claude-opus* mon-fri 09:00-18:00 Europe/Berlin",
    )  # fmt: skip
    listing = ok(run_cli(capgate, "keys", "list", columns=2000))  # other keys' cells: no wrap
    line = next(row for row in listing.splitlines() if key_name in row)
    cells = [cell.strip() for cell in line.split("│")]
    limits, models, schedules = cells[cells.index("-") + 2 : cells.index("-") + 5]
    assert limits == "requests=0/5 per day for claude-opus*"
    assert models == "claude-*"
    assert schedules == "claude-opus* mon,tue,wed,thu,fri 09:00-18:00 Europe/Berlin"
    show = ok(run_cli(capgate, "keys", "show", key_name))
    assert "requests/day for claude-opus*" in show and "models: claude-*" in show
    assert "schedules: claude-opus* mon,tue,wed,thu,fri 09:00-18:00 Europe/Berlin" in show


def test_no_none_anywhere(capgate: Capgate, key_name: str) -> None:
    create(capgate, key_name, "--limit", "requests=2/day")
    team = f"t-{key_name}"
    outputs = [
        ok(run_cli(capgate, "keys", "show", key_name)),
        ok(run_cli(capgate, "keys", "list")),
        ok(run_cli(capgate, "keys", "update", key_name, "--timezone", "UTC")),
        ok(run_cli(capgate, "teams", "create", team)),
        ok(run_cli(capgate, "teams", "show", team)),
        ok(run_cli(capgate, "teams", "list")),
        ok(run_cli(capgate, "usage", "--by", "team")),
    ]
    for out in outputs:
        assert "None" not in out, out
    assert "team=- user=-" in outputs[0]


def test_unknown_team_is_refused_unless_asked_to_create(capgate: Capgate, key_name: str) -> None:
    typo = f"reserach-{key_name}"
    message = failed(run_cli(capgate, "keys", "create", key_name, "--team", typo))
    assert f'no team named "{typo}"' in message and f"capgate teams create {typo}" in message
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404
    assert capgate.admin("GET", f"/admin/teams/{typo}").status_code == 404
    out = ok(run_cli(capgate, "keys", "create", key_name, "--team", typo, "--create-team"))
    assert f"Created team {typo}." in out and RAW_KEY.search(out)
    assert shown(capgate, key_name)["team"] == typo
    # an existing one is simply used
    assert RAW_KEY.search(
        ok(run_cli(capgate, "keys", "create", f"{key_name}-2", "--team", typo, "--create-team"))
    )
    team = ok(run_cli(capgate, "teams", "show", typo))
    assert f"keys: {key_name}, {key_name}-2" in team


def test_expires_in_the_past_is_refused(capgate: Capgate, key_name: str) -> None:
    message = failed(run_cli(capgate, "keys", "create", key_name, "--expires", "2020-01-01"))
    assert "in the past" in message
    assert capgate.admin("GET", f"/admin/keys/{key_name}").status_code == 404


def test_url_before_the_command(capgate: Capgate, key_name: str) -> None:
    """`capgate --url URL keys ...` works like `capgate keys ... --url URL`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for args in (
        ("--url", capgate.url, "keys", "create", key_name),
        ("keys", "create", f"{key_name}-2", "--url", capgate.url),
    ):
        assert RAW_KEY.search(ok(run_cli(None, *args, url=nowhere)))
    assert "cost" in ok(run_cli(None, "--url", capgate.url, "usage", url=nowhere))


def test_a_limit_that_cannot_pay_one_request_is_warned_about(
    capgate: Capgate, key_name: str
) -> None:
    result = run_cli(
        capgate, "keys", "create", key_name, "--limit", "cost=0.05/day", "--model", HAIKU
    )
    assert RAW_KEY.search(ok(result))  # made as asked, with a warning
    assert "warning:" in result.stderr and "cannot pay one Claude Code request" in result.stderr
    assert "$0.05" in result.stderr
    result = run_cli(capgate, "keys", "update", key_name, "--limit", "cost=10/day")
    assert ok(result) and "warning" not in result.stderr
    result = run_cli(capgate, "keys", "update", key_name, "--add-limit", "tokens=1000/day")
    assert ok(result) and "tokens/day" in result.stderr


def test_usage_fits_80_columns(capgate: Capgate, key_name: str) -> None:
    raw = create(capgate, key_name + "-with-a-rather-long-name")
    for words in (3, 9):
        assert ask(capgate, raw, words=words).status_code == 200
    items = json.loads(ok(run_cli(capgate, "usage", "--format", "json")))
    mine = next(i for i in items if i["key"].startswith(key_name))
    table = ok(run_cli(capgate, "usage", columns=80))
    assert max(len(line) for line in table.splitlines()) <= 80, table
    cost = format_usd(usd_to_nano(mine["cost_usd"]))
    assert any(
        cost in line and line.lstrip().startswith(key_name[:10]) for line in table.splitlines()
    ), table
    assert "…" not in table
