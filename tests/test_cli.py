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

from conftest import ADMIN_KEY, ROOT, Capgate

HAIKU = "claude-haiku-4-5"
HAIKU_PRICE = (Decimal("1"), Decimal("5"))  # USD per million tokens, input and output
RAW_KEY = re.compile(r"^(sk-cg-[a-z0-9]{12}-\S+)$", re.MULTILINE)


def run_cli(
    capgate: Capgate | None, *args: str, admin_key: str | None = ADMIN_KEY, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
    env.update({"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
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
    listing = ok(run_cli(capgate, "keys", "list"))
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
        "cache_read_tokens", "cache_write_tokens", "cost_usd",
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
