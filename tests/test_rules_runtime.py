"""Routing rules changed while capgate runs (issue #17 part 1): two real capgate processes
on one SQLite file, or two nodes on one PostgreSQL database; the rules set through one are
applied by the other within a second (the `routing_version` poll), bad lists are refused
naming the rule and field with nothing changed, roles are checked, the CLI round-trips
them, and a reset goes back to the config file's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate
from test_dashboard_browser import Page, browser, console, go, log_in, page

__all__ = ["browser", "console", "page"]

RULES = "/admin/routing/rules"
CONFIG_RULES: list[dict[str, Any]] = [
    {"name": "cfg-cheap", "when": {"header": {"x-tier": "cheap"}},
     "then": {"model": "claude-haiku-4-5"}},
]  # fmt: skip
RUNTIME_RULES: list[dict[str, Any]] = [
    {"name": "rt-small", "when": {"model": "claude-opus-*", "max_tokens": "<= 64"},
     "then": {"model": "claude-haiku-4-5"}},
    {"name": "rt-no-gpt", "when": {"model": "gpt-4o"},
     "then": {"refuse": "gpt-4o is off today", "status": 403}},
]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def pair(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> Iterator[tuple[Capgate, Capgate]]:
    """Two processes on one SQLite file, or two nodes on one PostgreSQL database."""
    args: list[tuple[str, ...]] = [(), ()]
    states: list[dict[str, str]] = [{}, {}]
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").new_database()
        args = [("--database-url", url)] * 2
        states = [{"CAPGATE_STATE_DIR": str(tmp_path / f"state{i}")} for i in (1, 2)]
    config = gateway_config(upstream, rules=CONFIG_RULES)
    first = start_capgate(tmp_path, config, env=states[0], args=args[0])
    try:
        second = start_capgate(tmp_path, config, db=first.db, env=states[1], args=args[1])
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    capgate = start_capgate(
        tmp_path_factory.mktemp("rulesrt"), gateway_config(upstream, rules=CONFIG_RULES)
    )
    try:
        yield capgate
    finally:
        capgate.close()


def ask(server: Capgate, key: str, model: str, max_tokens: int = 32, **headers: str) -> Any:
    return httpx.post(
        server.url + "/v1/messages",
        json={"model": model, "max_tokens": max_tokens,
              "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key, **headers}, timeout=30,
    )  # fmt: skip


def until(check: Any, seconds: float = 3.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - start


def rule_of(server: Capgate, key: str, model: str, **headers: str) -> str | None:
    answer = ask(server, key, model, **headers)
    assert answer.status_code in (200, 403), answer.text
    return answer.headers.get("x-capgate-rule")


def test_rules_set_on_one_apply_on_the_other_within_a_second_and_reset(
    pair: tuple[Capgate, Capgate],
) -> None:
    first, second = pair
    key = first.create_key("rt-rules")
    assert rule_of(second, key, "claude-opus-4-5", **{"x-tier": "cheap"}) == "cfg-cheap"
    assert rule_of(second, key, "claude-opus-4-5") is None
    shown = second.admin("GET", RULES).json()
    assert (shown["source"], shown["rules"], shown["changed_by"]) == ("config", CONFIG_RULES, None)

    put = first.admin("PUT", RULES, json={"rules": RUNTIME_RULES})
    assert put.status_code == 200, put.text
    assert put.json()["source"] == "runtime" and put.json()["rules"] == RUNTIME_RULES
    took = until(lambda: rule_of(second, key, "claude-opus-4-5") == "rt-small")
    assert took < 1.5
    # The file's rule is no longer in force: the runtime list replaced it whole.
    assert rule_of(second, key, "claude-opus-4-5", **{"x-tier": "cheap"}) == "rt-small"
    big = ask(second, key, "claude-opus-4-5", max_tokens=500, **{"x-tier": "cheap"})
    assert big.status_code == 200 and "x-capgate-rule" not in big.headers
    refused = ask(second, key, "gpt-4o")
    assert refused.status_code == 403 and refused.headers["x-capgate-rule"] == "rt-no-gpt"
    assert refused.json()["error"]["message"] == "gpt-4o is off today"
    shown = second.admin("GET", RULES).json()
    assert (shown["source"], shown["rules"], shown["changed_by"]) == (
        "runtime", RUNTIME_RULES, "admin",
    )  # fmt: skip
    assert abs(shown["changed_at"] - time.time()) < 60
    assert shown["config_rules"] == CONFIG_RULES
    entry = next(e for e in second.ledger(key="rt-rules") if e["rule"] == "rt-small")
    assert entry["upstream_model"] == "claude-haiku-4-5"

    reset = first.admin("DELETE", RULES)
    assert reset.status_code == 200 and reset.json()["source"] == "config"
    until(lambda: rule_of(second, key, "claude-opus-4-5") is None, 1.5)
    assert rule_of(second, key, "claude-opus-4-5", **{"x-tier": "cheap"}) == "cfg-cheap"
    audit = second.admin("GET", "/admin/audit", params={"limit": 5}).json()["items"]
    assert [a["action"] for a in audit[:2]] == ["rules-reset", "rules-set"]
    assert audit[1]["after"] == {"rules": RUNTIME_RULES}


BAD: list[tuple[Any, str]] = [
    ({"rules": "nope"}, "rules: must be a list of rules"),
    ({"rules": [{"name": "a", "when": {"colour": "red"}, "then": {"model": "claude-haiku-4-5"}}]},
     "rules[0] (a): when: unknown condition 'colour'"),
    ({"rules": [RUNTIME_RULES[0], {"name": "b", "when": {"max_tokens": "about 5"},
                                   "then": {"model": "claude-haiku-4-5"}}]},
     "rules[1] (b): when.max_tokens: 'about 5' is not a comparison"),
    ({"rules": [RUNTIME_RULES[0], RUNTIME_RULES[0]]},
     "rules[1] (rt-small): the name 'rt-small' is used twice"),
    ({"rules": [{"name": "c", "then": {"model": "llama-3"}}]},
     "rules[0] (c): then.model: no route serves the model 'llama-3'"),
    ({"rules": [{"name": "d", "then": {"model": "claude-haiku-4-5", "refuse": "x"}}]},
     "rules[0] (d): then: exactly one of model, refuse, fallback"),
    ({"rules": [{"name": "e", "when": {"time": {"hours": "09:00-17:00", "timezone": "Mars/Base"}},
                 "then": {"refuse": "x"}}]}, "rules[0] (e): "),
    ({"rules": [], "extra": 1}, "extra"),
    ({}, "rules"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_lists_are_refused_naming_the_rule_and_nothing_changes(
    server: Capgate, body: Any, message: str
) -> None:
    before = server.admin("GET", RULES).json()
    audit = server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"]
    answer = server.admin("PUT", RULES, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert server.admin("GET", RULES).json() == before
    assert server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"] == audit


def test_a_rule_may_name_a_model_of_a_runtime_route(server: Capgate) -> None:
    made = server.admin("POST", "/admin/routing/routes",
                        json={"match": "house-*", "targets": [{"provider": "anthropic"}]})  # fmt: skip
    assert made.status_code == 201, made.text
    try:
        rules = [{"name": "to-house", "when": {"header": {"x-house": "1"}},
                  "then": {"model": "house-model"}}]  # fmt: skip
        answer = server.admin("PUT", RULES, json={"rules": rules})
        assert answer.status_code == 200, answer.text
        key = server.create_key("rt-house")
        routed = ask(server, key, "claude-opus-4-5", **{"x-house": "1"})
        assert routed.headers["x-capgate-rule"] == "to-house"
    finally:
        server.admin("DELETE", RULES)
        server.admin("DELETE", "/admin/routing/routes/house-*")


def test_roles(server: Capgate) -> None:
    server.admin("POST", "/admin/teams", json={"name": "rules-red"})
    tokens = {}
    for name, role, teams in (("rr-admin", "admin", []), ("rr-viewer", "viewer", []),
                              ("rr-lead", "team-admin", ["rules-red"])):  # fmt: skip
        made = server.admin("POST", "/admin/admins", json={
            "name": name, "role": role, "teams": teams, "password": "a long enough password"})  # fmt: skip
        assert made.status_code == 201, made.text
        token = server.admin("POST", f"/admin/admins/{name}/tokens", json={"label": "t"})
        tokens[role] = token.json()["token"]
    body = {"rules": [{"name": "x", "when": {"team": "rules-red"}, "then": {"refuse": "no"}}]}
    for role, token in tokens.items():
        headers = {"authorization": f"Bearer {token}"}
        got = httpx.get(server.url + RULES, headers=headers, timeout=30)
        assert got.status_code == (403 if role == "team-admin" else 200), (role, got.text)
        for method in ("PUT", "DELETE"):
            sent = httpx.request(method, server.url + RULES, json=body, headers=headers, timeout=30)
            assert sent.status_code == 403, (role, method, sent.text)
            assert "role may not call" in sent.json()["error"]["message"]
    assert server.admin("GET", RULES).json()["source"] == "config"


def cli(server: Capgate, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGATE_URL": server.url, "CAPGATE_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "capgate", "routing", "rules", *args], input=stdin,
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_shows_sets_and_resets(server: Capgate, tmp_path: Path) -> None:
    shown = cli(server, "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# rules in force: the config file (1 rules)")
    assert yaml.safe_load(shown.stdout) == {"rules": CONFIG_RULES}
    edited = yaml.safe_load(shown.stdout)
    edited["rules"].append(RUNTIME_RULES[0])
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(edited))
    done = cli(server, "set", str(path))
    assert done.returncode == 0, done.stderr
    assert "runtime, set by admin at" in done.stdout
    assert server.admin("GET", RULES).json()["rules"] == [*CONFIG_RULES, RUNTIME_RULES[0]]
    # JSON, the bare list, from standard input; a bad one changes nothing.
    bad = cli(server, "set", "-", stdin='[{"name": "z", "then": {"model": "llama-3"}}]')
    assert bad.returncode == 1
    assert "rules[0] (z): then.model: no route serves the model 'llama-3'" in bad.stderr
    assert server.admin("GET", RULES).json()["rules"] == [*CONFIG_RULES, RUNTIME_RULES[0]]
    as_json = tmp_path / "rules.json"
    as_json.write_text('{"rules": []}')
    assert cli(server, "set", str(as_json)).returncode == 0
    assert server.admin("GET", RULES).json() | {"changed_at": 0} == {
        "source": "runtime", "rules": [], "changed_by": "admin", "changed_at": 0,
        "problem": None, "config_rules": CONFIG_RULES,
    }  # fmt: skip
    reset = cli(server, "reset")
    assert reset.returncode == 0 and "the config file" in reset.stdout
    assert server.admin("GET", RULES).json()["source"] == "config"
    missing = cli(server, "set", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "nope.yaml" in missing.stderr


@pytest.fixture
def dash(server: Capgate) -> Capgate:
    return server  # the browser fixtures' server


def test_the_dashboard_edits_the_rules(page: Page, server: Capgate, console: Any) -> None:
    log_in(page, server)
    go(page, server, "upstreams")
    origin = page.locator("#rules-origin")
    assert "config file" in origin.inner_text() and "1 rule" in origin.inner_text()
    text = page.get_by_label("Rules (YAML or JSON)")
    assert json.loads(text.input_value()) == CONFIG_RULES
    assert page.locator("#reset-rules").is_hidden()
    # A mistake: shown, named, and nothing changes.
    text.fill("- name: bad\n  then: {model: llama-3}\n")
    page.locator("#save-rules").click()
    error = page.locator("#rules-error")
    error.wait_for()
    assert "rules[0] (bad): then.model: no route serves the model 'llama-3'" in error.inner_text()
    assert server.admin("GET", RULES).json()["source"] == "config"
    assert console.errors == [  # Chromium's own log line for the refused list
        "error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    console.errors.clear()
    # YAML, as in the config file.
    text.fill(yaml.safe_dump({"rules": RUNTIME_RULES}))
    page.locator("#save-rules").click()
    page.get_by_text("set by admin@dashboard at").wait_for()
    shown = server.admin("GET", RULES).json()
    assert (shown["source"], shown["rules"]) == ("runtime", RUNTIME_RULES)
    assert json.loads(page.get_by_label("Rules (YAML or JSON)").input_value()) == RUNTIME_RULES
    key = server.create_key("rt-dashboard")
    assert rule_of(server, key, "claude-opus-4-5") == "rt-small"
    page.locator("#reset-rules").click()
    page.locator('[data-confirm="yes"]').click()
    page.locator("#reset-rules").wait_for(state="hidden")
    assert server.admin("GET", RULES).json()["source"] == "config"


def test_runtime_rules_outlive_a_restart(upstream: Upstream, tmp_path: Path) -> None:
    config = gateway_config(upstream, rules=CONFIG_RULES)
    first = start_capgate(tmp_path, config)
    try:
        assert first.admin("PUT", RULES, json={"rules": RUNTIME_RULES}).status_code == 200
        key = first.create_key("rt-restart")
    finally:
        first.close()
    again = start_capgate(tmp_path, config, db=first.db)
    try:
        shown = again.admin("GET", RULES).json()
        assert (shown["source"], shown["rules"]) == ("runtime", RUNTIME_RULES)
        assert rule_of(again, key, "claude-opus-4-5") == "rt-small"
    finally:
        again.close()


def test_yaml_bodies_as_the_dashboard_sends_them(server: Capgate) -> None:
    yaml_type = {"content-type": "application/yaml"}
    bad = server.admin("PUT", RULES, content=b"rules: [unclosed", headers=yaml_type)
    assert bad.status_code == 400 and "not valid YAML" in bad.json()["error"]["message"]
    latin = server.admin(
        "PUT", RULES, content="- name: caf\xe9".encode("latin-1"), headers=yaml_type
    )
    assert latin.status_code == 400 and "UTF-8" in latin.json()["error"]["message"]
    scalar = server.admin("PUT", RULES, content=b"42", headers=yaml_type)
    assert scalar.status_code == 400 and "a list of rules" in scalar.json()["error"]["message"]
    assert server.admin("GET", RULES).json()["source"] == "config"
    text = yaml.safe_dump({"rules": RUNTIME_RULES}).encode()
    try:
        assert server.admin("PUT", RULES, content=text, headers=yaml_type).status_code == 200
        assert server.admin("GET", RULES).json()["rules"] == RUNTIME_RULES
    finally:
        server.admin("DELETE", RULES)
