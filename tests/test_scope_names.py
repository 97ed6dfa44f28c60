"""Scope names (issue #18, part 5): new ones use a safe alphabet ([A-Za-z0-9._@-], 1 to
128), and names made before that rule (`ci{prod}`, with a space, ...) are reached by
every `/admin/<kind>/{name}` route, percent-encoded. Before, a name with `{` or `}` could
be made, and its key worked, but every route for it answered a plain-text 404."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest

from capgate.core.bounds import MAX_NAME, check_name
from capgate.store.hook_rows import machine_name
from conftest import Capgate, Upstream, gateway_config, start_capgate

BAD = ["ci{prod}", "}", "a/b", "a b", " lead", "tab\tname", "ü", "x" * 129, "", "a%2Fb"]
GOOD = ["a.b_c@d-e", "x" * 128, "alice@laptop-2", "0"]


@pytest.mark.parametrize("plural", ["keys", "users", "teams", "orgs", "providers"])
def test_new_names_use_the_safe_alphabet(capgate: Capgate, plural: str) -> None:
    for name in BAD:
        response = capgate.admin("POST", f"/admin/{plural}", json={"name": name})
        assert response.status_code == 400, (name, response.text)
        assert set(response.json()["error"]) == {"type", "message"}
        assert "name" in response.json()["error"]["message"]
    listed = {item["name"] for item in capgate.admin("GET", f"/admin/{plural}").json()["items"]}
    assert not listed & set(BAD)  # nothing was made
    for name in GOOD:
        made = f"{plural[0]}{name}"[:MAX_NAME]
        response = capgate.admin("POST", f"/admin/{plural}", json={"name": made})
        assert response.status_code in (201, 409), response.text


LEGACY = ["ci{prod}", "with space", "ünï", "{}"]


@pytest.fixture
def legacy(upstream: Upstream, tmp_path: Path) -> Capgate:
    """A database holding names made before the alphabet (written as an old version
    would have), opened by a new server."""
    first = start_capgate(tmp_path, gateway_config(upstream))
    try:
        for n in range(len(LEGACY)):
            first.create_key(f"legacy-{n}")
        assert first.admin("POST", "/admin/users", json={"name": "legacy-user"}).status_code == 201
    finally:
        first.close()
    with sqlite3.connect(first.db) as db:
        for n, name in enumerate(LEGACY):
            db.execute(
                "UPDATE scopes SET name=? WHERE kind='key' AND name=?", (name, f"legacy-{n}")
            )
        db.execute("UPDATE scopes SET name='odd{user}' WHERE kind='user' AND name='legacy-user'")
    return start_capgate(tmp_path, gateway_config(upstream), db=first.db)


def test_every_route_reaches_names_made_before_the_alphabet(legacy: Capgate) -> None:
    try:
        listed = {item["name"] for item in legacy.admin("GET", "/admin/keys").json()["items"]}
        assert set(LEGACY) <= listed
        for name in LEGACY:
            path = f"/admin/keys/{quote(name, safe='')}"
            shown = legacy.admin("GET", path)
            assert shown.status_code == 200 and shown.json()["name"] == name, shown.text
            patched = legacy.admin("PATCH", path, json={"models": ["claude-*"]})
            assert patched.status_code == 200, patched.text
            for action, status in (("pause", "paused"), ("resume", "active")):
                done = legacy.admin("POST", f"{path}/{action}")
                assert done.status_code == 200 and done.json()["status"] == status, done.text
            assert legacy.admin("POST", f"{path}/reset-usage").status_code == 200
            revoked = legacy.admin("POST", f"{path}/revoke")
            assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
            assert legacy.admin("DELETE", path).status_code == 204
            assert legacy.admin("GET", path).status_code == 404
        user = "/admin/users/" + quote("odd{user}", safe="")
        assert legacy.admin("GET", user).status_code == 200
        assert legacy.admin("POST", user + "/kill", json={}).status_code == 200
        assert legacy.admin("POST", user + "/resume").status_code == 200
    finally:
        legacy.close()


def test_hook_machine_names_fit_the_alphabet() -> None:
    for user, host in (("alice", "laptop.local"), ("u" * MAX_NAME, "h" * 100), ("b-o.b", "x")):
        name = machine_name(user, host, set())
        assert check_name(name) == name
        taken = {name, f"{name}-2"}
        assert check_name(machine_name(user, host, taken)).endswith("-3")
