"""A runtime route that the runtime rules in force name (`then.model` / `then.fallback`)
cannot be deleted: a 409 in the admin API's error shape naming the rule, nothing changed;
a rule left pointing at nothing anyway (a route deleted by an older node) is shown in the
rules' `problem`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Capgate, Upstream, gateway_config, start_capgate

RULES = "/admin/routing/rules"
ROUTES = "/admin/routing/routes"
USING: list[dict[str, Any]] = [
    {"name": "to-house", "when": {"header": {"x-house": "1"}}, "then": {"model": "house-model"}},
    {"name": "spill", "when": {"header": {"x-spill": "1"}},
     "then": {"fallback": ["claude-haiku-4-5", "spare-model"]}},
]  # fmt: skip


@pytest.fixture
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    capgate = start_capgate(tmp_path_factory.mktemp("routedel"), gateway_config(upstream))
    try:
        for match in ("house-*", "spare-*", "unused-*"):
            made = server_post(capgate, match)
            assert made.status_code == 201, made.text
        assert capgate.admin("PUT", RULES, json={"rules": USING}).status_code == 200
        yield capgate
    finally:
        capgate.close()


def server_post(server: Capgate, match: str) -> Any:
    return server.admin(
        "POST", ROUTES, json={"match": match, "targets": [{"provider": "anthropic"}]}
    )


@pytest.mark.parametrize(
    ("match", "rule"),
    [
        ("house-*", "rules[0] (to-house): then.model"),
        ("spare-*", "rules[1] (spill): then.fallback"),
    ],
)
def test_a_route_the_runtime_rules_use_is_not_deleted(
    server: Capgate, match: str, rule: str
) -> None:
    audit = server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"]
    answer = server.admin("DELETE", f"{ROUTES}/{match}")
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["type"] == "conflict_error", error
    assert f"the runtime rules use the route {match!r}" in error["message"]
    assert rule in error["message"] and "change them first" in error["message"]
    assert server.admin("GET", f"{ROUTES}/{match}").status_code == 200  # nothing changed
    assert server.admin("GET", "/admin/audit", params={"limit": 1}).json()["items"] == audit
    assert server.admin("GET", RULES).json()["problem"] is None
    assert server.admin("DELETE", f"{ROUTES}/unused-*").status_code == 204  # others can go
    assert server.admin("DELETE", RULES).status_code in (200, 204)  # rules reset: it can go
    assert server.admin("DELETE", f"{ROUTES}/{match}").status_code == 204


def test_a_rule_pointing_at_nothing_is_shown_as_the_rules_problem(server: Capgate) -> None:
    with sqlite3.connect(server.db) as db:  # as a node without the check would delete it
        db.execute("DELETE FROM runtime_routes WHERE match = 'house-*'")
        db.execute("UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'routing_version'")
    db.close()
    deadline = time.monotonic() + 10
    while (shown := server.admin("GET", RULES).json())["problem"] is None:
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    assert shown["source"] == "runtime"
    assert (
        "rules[0] (to-house): then.model: no route serves the model 'house-model'"
        in (shown["problem"])
    )
