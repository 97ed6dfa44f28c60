"""Named admins and roles (http/roles.py) over real HTTP: the rule table covers every
route of the app and is enforced on each one, a team admin sees and manages only their
teams, admin tokens expire, are revoked and rotate with a grace period, dashboard login by
name and password (throttled), the admin key as the owner's break-glass credential, and
the audit log's acting admin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from capgate.bootstrap import build
from capgate.config import Config
from capgate.http.admin import AdminAPI
from capgate.http.auth import admin_digest
from capgate.http.roles import RULES, TEAM_ADMIN, roles_table, route_path, rule_for
from capgate.store.sqlite import SQLiteStore
from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate
from test_dashboard_api import Feed, ask

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


@dataclass
class Team:
    """The shared server's cast: two teams with a key each, and an admin of each role."""

    server: Capgate
    red_key: str
    blue_key: str
    tokens: dict[str, str]  # admin name -> API token

    def as_(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, timeout=30, trust_env=False,
            headers={"authorization": f"Bearer {self.tokens[who]}"},
        )  # fmt: skip


def post(server: Capgate, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.admin("POST", path, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def make_admin(server: Capgate, name: str, role: str, teams: list[str] = ()) -> str:  # type: ignore[assignment]
    """An admin with PASSWORD, and a token of theirs (made with the admin key)."""
    post(
        server,
        "/admin/admins",
        {"name": name, "role": role, "teams": list(teams), "password": PASSWORD},
    )
    return str(post(server, f"/admin/admins/{name}/tokens", {"label": "test"})["token"])


@pytest.fixture(scope="module")
def cast(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    server = start_capgate(tmp_path_factory.mktemp("admins"), gateway_config(upstream))
    try:
        for plural, name in (
            ("teams", "red"),
            ("teams", "blue"),
            ("users", "alice"),
            ("users", "bob"),
        ):
            post(server, f"/admin/{plural}", {"name": name})
        red = server.create_key("red-key", team="red", user="alice")
        blue = server.create_key("blue-key", team="blue", user="bob")
        server.create_key("blue-alice", team="blue", user="alice")  # alice works for both
        for key in (red, blue):
            assert ask(server.url, key).status_code == 200
        tokens = {
            "boss": make_admin(server, "boss", "owner"),
            "ops": make_admin(server, "ops", "admin"),
            "finance": make_admin(server, "finance", "viewer"),
            "lead": make_admin(server, "lead", "team-admin", ["red"]),
        }
        yield Team(server, red, blue, tokens)
    finally:
        server.close()


def denied(response: httpx.Response) -> str:
    """The admin API's 403, in its JSON error shape."""
    assert response.status_code == 403, response.text
    data = response.json()
    assert set(data) == {"error"} and data["error"]["type"] == "permission_error", data
    return str(data["error"]["message"])


# -- the table -----------------------------------------------------------------------------


def test_every_route_of_the_app_has_a_rule(tmp_path: Path) -> None:
    """Walks the real app's router: an /admin or /dashboard route without a rule fails
    here (and is refused at run time: see the next test)."""

    async def routes() -> set[tuple[str, str]]:
        config = Config.model_validate(
            {
                "server": {
                    "database_url": f"sqlite:///{tmp_path / 'c.db'}",
                    "admin_key": ADMIN_KEY,
                },
                "providers": [{"name": "m", "type": "mock", "base_url": "http://127.0.0.1:9"}],
            }
        )
        built = await build(config)
        try:
            found = set()
            for route in built.app.router.routes():
                path = route.resource.canonical if route.resource is not None else ""
                if path.startswith(("/admin", "/dashboard")) and route.method != "HEAD":
                    found.add((route.method, path))
            return found
        finally:
            for cleanup in built.app.on_cleanup:
                await cleanup(built.app)

    found = asyncio.run(routes())
    missing = sorted(r for r in found if rule_for(*r) is None)
    assert not missing, f"routes without an access rule (http/roles.py RULES): {missing}"
    assert not set(RULES) - found, f"rules for routes that do not exist: {set(RULES) - found}"


def test_a_route_without_a_rule_is_refused(tmp_path: Path) -> None:
    """Fail closed: a guarded route missing from the table answers 403, even to the
    owner's admin key."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "c.db"))
        await store.start()
        api = AdminAPI(store, admin_digest(ADMIN_KEY))
        reached = []

        async def handler(request: web.Request) -> web.Response:
            reached.append(route_path(request))
            return web.json_response({})

        app = web.Application()
        app.add_routes([web.get("/admin/unruled", api._guard(handler))])
        async with TestClient(TestServer(app)) as client:
            response = await client.get(
                "/admin/unruled", headers={"authorization": f"Bearer {ADMIN_KEY}"}
            )
            assert response.status == 403
            body = await response.json()
            assert "no access rule" in body["error"]["message"]
        assert reached == []
        await store.close()

    asyncio.run(main())


def test_the_docs_show_the_table() -> None:
    assert roles_table() in (ROOT / "docs" / "security.md").read_text()


def _fill(path: str) -> str:
    return (
        path.replace("{name}", "nobody").replace("{id}", "0").replace("{request_id}", "none")
        .replace("{path}", "app.css").replace("{match}", "no-such-route")
    )  # fmt: skip


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    if path == "/admin/events":  # a stream: its status is enough
        with client.stream(method, path) as response:
            return response
    body = None if method in ("GET", "DELETE") else {}
    return client.request(method, path, json=body)


@pytest.mark.parametrize("who", ["ops", "finance", "lead"])
def test_each_role_on_every_route(cast: Team, who: str) -> None:
    """Every route of the table, called by each role: refused (403, the admin JSON shape,
    naming the role) exactly when the table says so. Paths name nothing that exists, so
    allowed calls end in 404 or 400 and change nothing."""
    role = {"ops": "admin", "finance": "viewer", "lead": TEAM_ADMIN}[who]
    with cast.as_(who) as client:
        for (method, path), rule in RULES.items():
            if rule.public:
                continue
            response = _call(client, method, _fill(path))
            refused = response.status_code == 403 and "role may not call" in response.text
            expected = not rule.allows(role, own_name=False)
            assert refused == expected, (method, path, response.status_code, response.text)
            if refused:
                response.read()
                denied(response)


def test_the_owner_and_the_admin_key_may_call_everything(cast: Team) -> None:
    for client in (cast.as_("boss"), httpx.Client(base_url=cast.server.url, trust_env=False,
                   headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)):  # fmt: skip
        with client:
            for (method, path), rule in RULES.items():
                if path.startswith("/admin") and not rule.public:
                    response = _call(client, method, _fill(path))
                    assert response.status_code != 403, (method, path, response.status_code)


def test_roles_and_teams_are_checked(cast: Team) -> None:
    s = cast.server
    for body, problem in (
        ({"name": "x1", "role": "team-admin"}, "at least one team"),
        ({"name": "x2", "role": "team-admin", "teams": ["nope"]}, 'no team named "nope"'),
        ({"name": "x3", "role": "viewer", "teams": ["red"]}, "only a team-admin has teams"),
        ({"name": "x4", "role": "root"}, "role"),
        ({"name": "Bad Name", "role": "viewer"}, "name"),
    ):
        response = s.admin("POST", "/admin/admins", json=body)
        assert response.status_code == 400, (body, response.text)
        assert problem in response.json()["error"]["message"], (body, response.text)
    post(s, "/admin/admins", {"name": "mover", "role": "team-admin", "teams": ["red"]})
    bad = s.admin("PATCH", "/admin/admins/mover", json={"role": "viewer", "teams": ["red"]})
    assert bad.status_code == 400
    moved = s.admin("PATCH", "/admin/admins/mover", json={"role": "viewer"}).json()
    assert (moved["role"], moved["teams"]) == ("viewer", [])


def test_the_admin_key_is_the_owners_break_glass(cast: Team) -> None:
    me = cast.server.admin("GET", "/admin/me").json()
    assert me == {"name": "admin", "role": "owner", "teams": [], "break_glass": True}
    with cast.as_("lead") as client:
        assert client.get("/admin/me").json() == {
            "name": "lead", "role": "team-admin", "teams": ["red"], "break_glass": False,
        }  # fmt: skip


# -- what each role may do -----------------------------------------------------------------


def test_a_viewer_reads_and_exports_but_changes_nothing(cast: Team) -> None:
    with cast.as_("finance") as client:
        assert client.get("/admin/keys").status_code == 200
        export = client.get("/admin/requests", params={"format": "csv", "limit": "all"})
        assert export.status_code == 200 and "red-key" in export.text and "blue-key" in export.text
        denied(client.post("/admin/keys", json={"name": "nope"}))
        denied(client.post("/admin/keys/red-key/pause"))
        denied(client.get("/admin/alerts/webhooks"))  # webhook URLs are secrets
        denied(client.get("/admin/admins"))
    assert cast.server.admin("GET", "/admin/keys/red-key").json()["status"] == "active"


def test_an_admin_cannot_manage_admins_or_settings(cast: Team) -> None:
    with cast.as_("ops") as client:
        assert client.post("/admin/keys/red-key/reset-usage").status_code == 200
        denied(client.post("/admin/admins", json={"name": "x", "role": "owner"}))
        denied(client.patch("/admin/admins/ops", json={"role": "owner"}))
        denied(client.patch("/admin/settings", json={}))
        assert client.get("/admin/admins/ops").status_code == 200  # themselves
        denied(client.get("/admin/admins/boss"))
        denied(client.get("/admin/admins/boss/tokens"))


# -- team admins ---------------------------------------------------------------------------


def test_a_team_admin_sees_only_their_teams(cast: Team) -> None:
    blue_entry = cast.server.ledger(key="blue-key")[0]
    with cast.as_("lead") as c:
        assert [k["name"] for k in c.get("/admin/keys").json()["items"]] == ["red-key"]
        assert [t["name"] for t in c.get("/admin/teams").json()["items"]] == ["red"]
        assert [u["name"] for u in c.get("/admin/users").json()["items"]] == ["alice"]
        denied(c.get("/admin/orgs"))
        for path in ("/admin/keys/blue-key", "/admin/teams/blue", "/admin/users/bob"):
            assert c.get(path).status_code == 404, path
        assert c.get("/admin/keys/red-key").status_code == 200
        alices = c.get("/admin/users/alice").json()["members"]["keys"]
        assert "red-key" in alices and "blue-alice" not in alices
        assert c.get("/admin/teams/red").status_code == 200
        rows = c.get("/admin/requests", params={"limit": 1000}).json()["items"]
        assert rows and {r["team"] for r in rows} == {"red"}
        by_key = c.get("/admin/requests", params={"key": "blue-key"}).json()["items"]
        assert by_key == []
        assert c.get(f"/admin/requests/{blue_entry['request_id']}").status_code == 404
        denied(c.get("/admin/requests", params={"team": "blue"}))
        export = c.get("/admin/requests", params={"format": "ndjson", "limit": "all"}).text
        assert "red-key" in export and "blue-key" not in export
        mine = c.get("/admin/summary", params={"period": "30d"}).json()
        red = cast.server.admin("GET", "/admin/summary", params={"period": "30d", "team": "red"})
        everyone = cast.server.admin("GET", "/admin/summary", params={"period": "30d"}).json()
        assert mine["requests"] == red.json()["requests"] < everyone["requests"]
        denied(c.get("/admin/summary", params={"team": "blue"}))
        denied(c.get("/admin/timeseries", params={"team": "blue"}))
        series = c.get("/admin/timeseries", params={"group_by": "key"}).json()["series"]
        assert {s["name"] for s in series} <= {"red-key"}
        for path in ("/admin/usage", "/admin/audit", "/admin/settings", "/admin/hook/machines"):
            denied(c.get(path))


def test_a_team_admins_live_feed_shows_only_their_teams(cast: Team) -> None:
    lead = Feed(cast.server.url, {"authorization": f"Bearer {cast.tokens['lead']}"})
    owner = Feed(cast.server.url, {"authorization": f"Bearer {ADMIN_KEY}"})
    try:
        assert lead.status == owner.status == 200
        assert ask(cast.server.url, cast.blue_key).status_code == 200
        assert ask(cast.server.url, cast.red_key).status_code == 200
        cast.server.admin("POST", "/admin/keys/blue-key/resume")  # an audit entry
        owner.wait_for(lambda e: e[0] == "request" and e[1]["key"] == "blue-key")
        owner.wait_for(lambda e: e[0] == "audit")
        lead.wait_for(lambda e: e[0] == "request" and e[1]["key"] == "red-key")
        time.sleep(0.5)
        assert {e[1].get("team") for e in lead.events} == {"red"}
        assert all(kind == "request" for kind, _, _ in lead.events)
    finally:
        lead.close()
        owner.close()


def test_a_team_admin_manages_their_keys_but_not_their_teams_budget(cast: Team) -> None:
    with cast.as_("lead") as c:
        made = c.post("/admin/keys", json={"name": "red-2", "team": "red", "user": "alice"})
        assert made.status_code == 201, made.text
        denied(c.post("/admin/keys", json={"name": "blue-2", "team": "blue"}))
        denied(c.post("/admin/keys", json={"name": "loose"}))
        limit = [{"metric": "requests", "window": "day", "max": 5}]
        assert c.patch("/admin/keys/red-2", json={"limits": limit}).status_code == 200
        denied(c.patch("/admin/keys/red-2", json={"team": "blue"}))
        assert c.post("/admin/keys/red-2/pause").json()["status"] == "paused"
        assert c.patch("/admin/keys/blue-key", json={"limits": limit}).status_code == 404
        assert c.post("/admin/keys/blue-key/revoke").status_code == 404
        raise_budget = {"limits": [{"metric": "cost_usd", "window": "month", "max": 1000}]}
        denied(c.patch("/admin/teams/red", json=raise_budget))
        denied(c.post("/admin/teams/red/reset-usage"))
        denied(c.post("/admin/users/alice/pause"))
        assert c.delete("/admin/keys/red-2").status_code == 204
    assert cast.server.admin("GET", "/admin/keys/blue-key").json()["status"] == "active"
    assert cast.server.admin("GET", "/admin/teams/red").json()["limits"] == []
    audit = cast.server.admin("GET", "/admin/audit", params={"limit": 50}).json()["items"]
    made_by = {(a["action"], a["target"]): a["actor"] for a in audit}
    assert made_by[("create", "key:red-2")] == "lead"
    assert made_by[("pause", "key:red-2")] == "lead"


@pytest.fixture(scope="module")
def duo(cast: Team) -> str:
    """A third team, gold (key gold-key of user carol, who has no other key), and "duo",
    a team admin of red and gold; gold-key's secret."""
    post(cast.server, "/admin/teams", {"name": "gold"})
    post(cast.server, "/admin/users", {"name": "carol"})
    gold = cast.server.create_key("gold-key", team="gold", user="carol")
    assert ask(cast.server.url, gold).status_code == 200
    cast.tokens["duo"] = make_admin(cast.server, "duo", "team-admin", ["red", "gold"])
    return gold


def test_a_team_admin_of_several_teams_reads_all_of_them(cast: Team, duo: str) -> None:
    """Without ?team= their ledger, exports, summary and charts cover all their teams (the
    dashboard's overview asks so); ?team= narrows to one of them; never another team."""
    s = cast.server
    blue_entry, gold_entry = s.ledger(key="blue-key")[0], s.ledger(key="gold-key")[0]
    with cast.as_("duo") as c:
        rows = c.get("/admin/requests", params={"limit": 1000}).json()["items"]
        assert {r["team"] for r in rows} == {"red", "gold"}
        assert len(rows) == len(s.ledger(team="red")) + len(s.ledger(team="gold"))
        export = c.get("/admin/requests", params={"format": "csv", "limit": "all"}).text
        assert "red-key" in export and "gold-key" in export and "blue-key" not in export
        gold_only = c.get("/admin/requests", params={"team": "gold"}).json()["items"]
        assert {r["key"] for r in gold_only} == {"gold-key"}
        denied(c.get("/admin/requests", params={"team": "blue"}))
        assert c.get(f"/admin/requests/{gold_entry['request_id']}").status_code == 200
        assert c.get(f"/admin/requests/{blue_entry['request_id']}").status_code == 404

        mine = c.get("/admin/summary", params={"period": "30d"})
        assert mine.status_code == 200, mine.text

        def owners(team: str | None) -> dict[str, Any]:
            params = {"period": "30d"} | ({"team": team} if team else {})
            return dict(s.admin("GET", "/admin/summary", params=params).json())

        red, gold, everyone = owners("red"), owners("gold"), owners(None)
        for field in ("requests", "keys"):
            assert mine.json()[field] == red[field] + gold[field], field
        cost = Decimal(red["cost_usd"]) + Decimal(gold["cost_usd"])
        assert Decimal(mine.json()["cost_usd"]) == cost > 0
        assert mine.json()["requests"] < everyone["requests"]
        denied(c.get("/admin/summary", params={"team": "blue"}))
        series = c.get("/admin/timeseries", params={"group_by": "team"})
        assert series.status_code == 200, series.text
        assert {x["name"] for x in series.json()["series"]} == {"red", "gold"}
        total = c.get("/admin/timeseries").json()["series"]
        assert sum(total[0]["requests"]) == mine.json()["requests"]


def test_a_team_admin_manages_a_user_all_of_whose_keys_are_theirs(cast: Team, duo: str) -> None:
    """carol's only key is in gold (duo's): duo changes, pauses, resumes, resets and revokes
    her, but neither deletes nor creates users; alice has a key in blue: refused, saying
    why; bob (blue only) is not theirs to know."""
    s = cast.server
    limit = [{"metric": "requests", "window": "day", "max": 50}]
    with cast.as_("duo") as c:
        changed = c.patch("/admin/users/carol", json={"limits": limit})
        assert changed.status_code == 200, changed.text
        assert c.post("/admin/users/carol/pause").json()["status"] == "paused"
        assert c.post("/admin/users/carol/resume").json()["status"] == "active"
        assert c.post("/admin/users/carol/reset-usage").status_code == 200
        why = denied(c.patch("/admin/users/alice", json={"limits": limit}))
        assert 'user "alice"' in why and "outside their teams" in why, why
        denied(c.post("/admin/users/alice/pause"))
        denied(c.post("/admin/users/alice/revoke"))
        assert c.post("/admin/users/bob/pause").status_code == 404
        assert "role may not call" in denied(c.delete("/admin/users/carol"))
        assert "role may not call" in denied(c.post("/admin/users", json={"name": "dave"}))
        assert c.post("/admin/users/carol/revoke").json()["status"] == "revoked"
    with cast.as_("lead") as c:  # red only: carol is not theirs
        assert c.patch("/admin/users/carol", json={"limits": []}).status_code == 404
    assert s.admin("GET", "/admin/users/carol").json()["limits"][0]["max"] == 50
    alice = s.admin("GET", "/admin/users/alice").json()
    assert (alice["status"], alice["limits"]) == ("active", [])
    audit = s.admin("GET", "/admin/audit", params={"limit": 50}).json()["items"]
    made_by = {(a["action"], a["target"]): a["actor"] for a in audit}
    assert made_by[("update", "user:carol")] == made_by[("revoke", "user:carol")] == "duo"


# -- tokens --------------------------------------------------------------------------------


def test_tokens_expire_are_revoked_and_rotate_with_grace(cast: Team) -> None:
    s = cast.server

    def me(token: str) -> httpx.Response:
        return httpx.get(s.url + "/admin/me", headers={"authorization": f"Bearer {token}"})

    soon = post(s, "/admin/admins/ops/tokens", {"expires_at": int(time.time()) + 2})
    assert me(soon["token"]).status_code == 200
    past = s.admin("POST", "/admin/admins/ops/tokens", json={"expires_at": 1_000_000_000})
    assert past.status_code == 400
    made = post(s, "/admin/admins/ops/tokens", {"label": "ci"})
    old = made["token"]
    listed = s.admin("GET", "/admin/admins/ops/tokens").json()["items"]
    assert old not in str(listed) and made["prefix"] in str(listed)
    rotated = post(s, f"/admin/admins/ops/tokens/{made['id']}/rotate", {"grace_s": 2})
    new = rotated["token"]
    assert new != old and me(new).status_code == 200 and me(old).status_code == 200
    time.sleep(2.2)
    refused = me(old)
    assert refused.status_code == 401 and "rotated" in refused.json()["error"]["message"]
    assert me(new).status_code == 200
    assert "expired" in me(soon["token"]).json()["error"]["message"]
    post(s, f"/admin/admins/ops/tokens/{made['id']}/revoke", {})
    assert "revoked" in me(new).json()["error"]["message"]
    zero = post(s, "/admin/admins/ops/tokens", {})
    post(s, f"/admin/admins/ops/tokens/{zero['id']}/rotate", {})  # grace 0: refused at once
    assert "rotated" in me(zero["token"]).json()["error"]["message"]
    with cast.as_("ops") as own:  # an admin manages their own tokens
        mine = own.post("/admin/admins/ops/tokens", json={"label": "mine"})
        assert mine.status_code == 201
        assert own.post(f"/admin/admins/ops/tokens/{mine.json()['id']}/revoke").status_code == 200


def test_a_disabled_admin_is_cut_off(cast: Team) -> None:
    token = make_admin(cast.server, "temp", "admin")
    with httpx.Client(base_url=cast.server.url, trust_env=False, timeout=30) as client:
        _cut_off(cast, client, token)


def _cut_off(cast: Team, client: httpx.Client, token: str) -> None:
    assert (
        client.post("/dashboard/login", json={"name": "temp", "password": PASSWORD}).status_code
        == 200
    )
    assert client.get("/admin/keys").status_code == 200
    cast.server.admin("PATCH", "/admin/admins/temp", json={"status": "disabled"})
    assert client.get("/admin/keys").status_code == 401  # the session
    bearer = httpx.get(cast.server.url + "/admin/me", headers={"authorization": f"Bearer {token}"})
    assert bearer.status_code == 401 and "disabled" in bearer.text
    bad = client.post("/dashboard/login", json={"name": "temp", "password": PASSWORD})
    assert bad.status_code == 401


# -- dashboard login, passwords, audit -----------------------------------------------------


def test_dashboard_login_by_name_and_password(cast: Team) -> None:
    with httpx.Client(base_url=cast.server.url, trust_env=False, timeout=30) as client:
        _login_by_name(cast, client)


def _login_by_name(cast: Team, client: httpx.Client) -> None:
    wrong = client.post("/dashboard/login", json={"name": "lead", "password": "not it at all!"})
    assert wrong.status_code == 401
    response = client.post("/dashboard/login", json={"name": "lead", "password": PASSWORD})
    assert response.status_code == 200, response.text
    session = response.json()
    assert (session["actor"], session["role"], session["teams"]) == ("lead", "team-admin", ["red"])
    csrf = {session["csrf_header"]: session["csrf_token"]}
    assert client.get("/dashboard/session").json()["role"] == "team-admin"
    assert [k["name"] for k in client.get("/admin/keys").json()["items"]] == ["red-key"]
    made = client.post("/admin/keys", json={"name": "red-dash", "team": "red"}, headers=csrf)
    assert made.status_code == 201
    audit = cast.server.admin("GET", "/admin/audit").json()["items"]
    assert any(a["target"] == "key:red-dash" and a["actor"] == "lead" for a in audit)


def test_passwords_are_long_hashed_and_never_shown(cast: Team) -> None:
    s = cast.server
    short = s.admin(
        "POST", "/admin/admins", json={"name": "shorty", "role": "viewer", "password": "short"}
    )
    assert short.status_code == 400 and "12" in short.text
    assert s.admin("GET", "/admin/admins/shorty").status_code == 404
    made = s.admin(
        "POST", "/admin/admins", json={"name": "pw", "role": "viewer", "password": PASSWORD}
    )
    assert made.status_code == 201
    changed = s.admin("POST", "/admin/admins/pw/password", json={"password": PASSWORD + "!"})
    assert changed.status_code == 204
    shown = s.admin("GET", "/admin/admins").text + s.admin("GET", "/admin/audit").text
    assert "scrypt" not in shown and PASSWORD not in shown
    import sqlite3

    with sqlite3.connect(s.db) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM admins WHERE name = 'pw'").fetchone()
    assert stored.startswith("scrypt$32768$8$1$") and PASSWORD not in stored
    audit = s.admin("GET", "/admin/audit").json()["items"]
    assert audit[0]["action"] == "admin-password" and audit[0]["actor"] == "admin"


def test_admin_changes_record_the_acting_admin(cast: Team) -> None:
    with cast.as_("boss") as boss:
        made = boss.post("/admin/admins", json={"name": "by-boss", "role": "viewer"})
        assert made.status_code == 201
        assert boss.post("/admin/teams", json={"name": "green"}).status_code == 201
    audit = cast.server.admin("GET", "/admin/audit").json()["items"]
    actors = {a["target"]: a["actor"] for a in audit}
    assert actors["admin:by-boss"] == "boss" and actors["team:green"] == "boss"


def test_name_logins_are_throttled(upstream: Upstream, tmp_path: Path) -> None:
    """Ten wrong passwords for one name, each from another address (behind a trusted
    proxy): the name is blocked, even from a fresh address with the right password; the
    address throttle alone would not have stopped it; other names and the API key work."""
    config = gateway_config(upstream, server={"trusted_proxies": ["127.0.0.1"]})
    log = tmp_path / "server.log"
    server = start_capgate(tmp_path, config, args=("--log-level", "debug"), log=log)
    try:
        for name in ("target", "other"):
            post(server, "/admin/admins", {"name": name, "role": "viewer", "password": PASSWORD})
        url = server.url + "/dashboard/login"

        def login(name: str, password: str, address: str) -> httpx.Response:
            body = {"name": name, "password": password}
            return httpx.post(url, json=body, headers={"x-forwarded-for": address})

        for n in range(10):
            assert login("target", "guess guess guess", f"10.0.0.{n}").status_code == 401
        right = login("target", PASSWORD, "10.0.1.1")
        assert right.status_code == 429 and "retry-after" in right.headers
        assert login("other", PASSWORD, "10.0.1.2").status_code == 200
        assert server.admin("GET", "/admin/me").status_code == 200  # the API door is apart
        token = post(server, "/admin/admins/other/tokens", {})["token"]
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(server.url + "/admin/me", headers=auth).status_code == 200
    finally:
        server.close()
    written = log.read_text()
    assert "/admin/admins/{name}/tokens" in written  # the calls were logged ...
    assert PASSWORD not in written and token not in written  # ... never a secret
    assert "scrypt$" not in written


def test_the_cli_makes_admins_and_tokens(cast: Team) -> None:
    """`capgate admins ...` against the server: a password from stdin (never an
    argument), a token printed once and working, its rotation and revocation."""
    import subprocess
    import sys

    def cli(*args: str, stdin: str = "", key: str = ADMIN_KEY) -> str:
        env = {"CAPGATE_URL": cast.server.url, "CAPGATE_ADMIN_KEY": key, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", "capgate", *args], input=stdin, capture_output=True,
            text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    made = cli("admins", "create", "cli-lead", "--role", "team-admin", "--team", "red",
               "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert "cli-lead  role=team-admin  teams=red  status=active" in made
    assert "cli-lead" in cli("admins", "list")
    token = cli("admins", "token", "create", "cli-lead", "--label", "ci", "--days", "1")
    raw = next(line for line in token.splitlines() if line.startswith("cga-"))
    assert "red-key" in cli("keys", "list", key=raw) and "blue-key" not in cli(
        "keys", "list", key=raw
    )
    token_id = token.split()[0]
    rotated = cli("admins", "token", "rotate", "cli-lead", token_id, "--grace", "0")
    new = next(line for line in rotated.splitlines() if line.startswith("cga-"))
    assert new != raw and "red-key" in cli("keys", "list", key=new)
    cli("admins", "token", "revoke", "cli-lead", token_id)
    assert "revoked" in cli("admins", "token", "list", "cli-lead")
    cli("admins", "set", "cli-lead", "--role", "viewer")
    cli("admins", "passwd", "cli-lead", "--password-stdin", stdin=PASSWORD + "!\n")
    cli("admins", "disable", "cli-lead")
    assert "status=disabled" in cli("admins", "list")
    cli("admins", "remove", "cli-lead")
    assert "cli-lead" not in cli("admins", "list")


def test_an_admin_key_that_looks_like_a_token_still_works(
    upstream: Upstream, tmp_path: Path
) -> None:
    key = "cga-" + "0123456789abcdefghijklmnopqrstuvwxyz"
    server = start_capgate(tmp_path, gateway_config(upstream), env={"CAPGATE_ADMIN_KEY": key})
    try:
        auth = {"authorization": f"Bearer {key}"}
        me = httpx.get(server.url + "/admin/me", headers=auth)
        assert me.status_code == 200 and me.json()["break_glass"] is True
        wrong = httpx.get(server.url + "/admin/me", headers={"authorization": "Bearer cga-nope"})
        assert wrong.status_code == 401
    finally:
        server.close()
