"""Who may call each admin route: one table (`RULES`), checked by the admin API's guard
before any handler runs. A route with no rule is refused (fail closed), and
tests/test_admins.py fails for every route of the app that has none.

Roles (docs/security.md, "Roles"): `owner` may do everything; `admin` everything but
managing admins and changing the runtime settings and upstreams; `viewer` reads (and
exports) but changes nothing and sees no secrets (webhook URLs, install codes);
`team-admin` reads and manages only the keys of their teams, reads their teams, the users of their teams' keys,
their teams' ledger, summaries and live feed, manages (but never creates or deletes) a user
all of whose keys are in their teams, and never a team's own limits. Every admin
may read themselves (`/admin/me`) and manage their own password and API tokens.

A team admin's reach is narrowed in two places: the guard checks a named key, team or
user (`Rule.team` "key", "team", "user", "key-create", "user-keys"), and the handler
filters what it lists or reads (`Rule.team` "list", "ledger", "feed") through
`Caller.teams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from capgate.core.limits import ScopeKind
from capgate.errors import NotFound, PermissionDenied
from capgate.http.admin_models import PLURALS
from capgate.http.sessions import Caller
from capgate.store.admin_accounts import ROLES
from capgate.store.base import ScopeStore

OWNER, ADMIN, VIEWER, TEAM_ADMIN = ROLES

ALL = frozenset(ROLES)
READ = frozenset({OWNER, ADMIN, VIEWER})
WRITE = frozenset({OWNER, ADMIN})
OWNERS = frozenset({OWNER})

# What a team admin's access to a route depends on.
TEAM_SCOPES = ("key", "key-create", "team", "user", "user-keys", "list", "ledger", "feed")


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[str]  # who may call it (team admins: only with `team`)
    team: str | None = None  # how a team admin is confined to their teams (TEAM_SCOPES)
    own: bool = False  # any admin may call it on their own name (`{name}` in the path)
    public: bool = False  # no credential at all (the login page, the OpenAPI document)

    def allows(self, role: str, own_name: bool) -> bool:
        if self.public or (self.own and own_name) or role in self.roles:
            return True
        return role == TEAM_ADMIN and self.team is not None

    def who(self) -> str:
        """For the docs' table."""
        if self.public:
            return "anyone (no login)"
        names = [r for r in ROLES if r in self.roles]
        if self.roles == ALL:
            names = ["any admin"]
        if self.team is not None:
            names.append(f"team-admin ({self.team})")
        shown = ", ".join(names)
        return shown + ("; any admin for themselves" if self.own else "")


def _scope_rules() -> dict[tuple[str, str], Rule]:
    out: dict[tuple[str, str], Rule] = {}
    for plural in PLURALS.values():
        base, one = f"/admin/{plural}", f"/admin/{plural}/{{name}}"
        keys = plural == "keys"
        named = {"keys": "key", "teams": "team", "users": "user"}
        listed = "list" if plural in named else None
        read_one = named.get(plural)
        # a team admin changes (never deletes) a user all of whose keys are in their teams
        change_user = "user-keys" if plural == "users" else None
        out[("GET", base)] = Rule(READ, listed)
        out[("GET", one)] = Rule(READ, read_one)
        out[("POST", base)] = Rule(WRITE, "key-create" if keys else None)
        for method, path in (
            ("PATCH", one), ("DELETE", one), ("POST", one + "/pause"),
            ("POST", one + "/resume"), ("POST", one + "/revoke"),
            ("POST", one + "/reset-usage"),
        ):  # fmt: skip
            team = "key" if keys else None if method == "DELETE" else change_user
            out[(method, path)] = Rule(WRITE, team)
    return out


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/admin/openapi.json"): Rule(ALL, public=True),
    ("GET", "/admin/me"): Rule(ALL),
    **_scope_rules(),
    ("GET", "/admin/requests"): Rule(READ, "ledger"),
    ("GET", "/admin/requests/{request_id}"): Rule(READ, "ledger"),
    # A key's new secret (the old one's grace): as for pausing or revoking it.
    ("POST", "/admin/keys/{name}/rotate"): Rule(WRITE, "key"),
    # Logged prompts and answers: more than the ledger's numbers (http/admin_bodies.py).
    ("GET", "/admin/requests/{request_id}/body"): Rule(WRITE),
    ("GET", "/admin/usage"): Rule(READ),
    ("GET", "/admin/summary"): Rule(READ, "ledger"),
    ("GET", "/admin/timeseries"): Rule(READ, "ledger"),
    ("GET", "/admin/audit"): Rule(READ),
    ("GET", "/admin/routing"): Rule(READ),
    ("GET", "/admin/settings"): Rule(READ),
    ("PATCH", "/admin/settings"): Rule(OWNERS),
    # Upstreams added at runtime: their keys are write-only, but whoever changes them can
    # send every request (and its prompt) anywhere: owners, as for the settings.
    ("GET", "/admin/routing/providers"): Rule(READ),
    ("GET", "/admin/routing/providers/{name}"): Rule(READ),
    ("POST", "/admin/routing/providers"): Rule(OWNERS),
    ("PATCH", "/admin/routing/providers/{name}"): Rule(OWNERS),
    ("DELETE", "/admin/routing/providers/{name}"): Rule(OWNERS),
    ("GET", "/admin/routing/routes"): Rule(READ),
    ("GET", "/admin/routing/routes/{match}"): Rule(READ),
    ("POST", "/admin/routing/routes"): Rule(OWNERS),
    ("PATCH", "/admin/routing/routes/{match}"): Rule(OWNERS),
    ("DELETE", "/admin/routing/routes/{match}"): Rule(OWNERS),
    # Routing rules: they choose among the routes (to another provider, another vendor)
    # and refuse requests for everyone: owners, as for the routes. Not team admins: one
    # ordered list, first match wins, so a rule of theirs placed first would escape any
    # rule the owners wrote for their team (docs/routing.md, "Rules at runtime").
    ("GET", "/admin/routing/rules"): Rule(READ),
    ("PUT", "/admin/routing/rules"): Rule(OWNERS),
    ("DELETE", "/admin/routing/rules"): Rule(OWNERS),
    ("GET", "/admin/events"): Rule(READ, "feed"),
    # hook mode: install codes are secrets until used; the kill switch changes a user
    ("POST", "/admin/hook/codes"): Rule(WRITE),
    ("GET", "/admin/hook/codes"): Rule(WRITE),
    ("DELETE", "/admin/hook/codes/{id}"): Rule(WRITE),
    ("GET", "/admin/hook/machines"): Rule(READ),
    ("POST", "/admin/users/{name}/kill"): Rule(WRITE),
    # alerts: a webhook's URL is a secret (Slack's and most others' are)
    ("GET", "/admin/alerts/rules"): Rule(READ),
    ("POST", "/admin/alerts/rules"): Rule(WRITE),
    ("DELETE", "/admin/alerts/rules/{id}"): Rule(WRITE),
    ("GET", "/admin/alerts/webhooks"): Rule(WRITE),
    ("POST", "/admin/alerts/webhooks"): Rule(WRITE),
    ("DELETE", "/admin/alerts/webhooks/{name}"): Rule(WRITE),
    ("POST", "/admin/alerts/webhooks/{name}/test"): Rule(WRITE),
    ("GET", "/admin/alerts/deliveries"): Rule(READ),
    # named admins and their tokens
    ("GET", "/admin/admins"): Rule(OWNERS),
    ("POST", "/admin/admins"): Rule(OWNERS),
    ("GET", "/admin/admins/{name}"): Rule(OWNERS, own=True),
    ("PATCH", "/admin/admins/{name}"): Rule(OWNERS),
    ("DELETE", "/admin/admins/{name}"): Rule(OWNERS),
    ("POST", "/admin/admins/{name}/password"): Rule(OWNERS, own=True),
    ("GET", "/admin/admins/{name}/tokens"): Rule(OWNERS, own=True),
    ("POST", "/admin/admins/{name}/tokens"): Rule(OWNERS, own=True),
    ("POST", "/admin/admins/{name}/tokens/{id}/revoke"): Rule(OWNERS, own=True),
    ("POST", "/admin/admins/{name}/tokens/{id}/rotate"): Rule(OWNERS, own=True),
    # the dashboard: its page and files, and logging in, need no credential; logging out
    # needs the session (checked by the handler). Its data comes from the routes above.
    ("GET", "/dashboard"): Rule(ALL, public=True),
    ("GET", "/dashboard/"): Rule(ALL, public=True),
    ("GET", "/dashboard/static/{path}"): Rule(ALL, public=True),
    ("GET", "/dashboard/session"): Rule(ALL, public=True),
    ("POST", "/dashboard/login"): Rule(ALL, public=True),
    ("POST", "/dashboard/logout"): Rule(ALL, public=True),
}


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route by its method and canonical path (`/admin/keys/{name}`);
    HEAD is GET's. None: no rule, so nobody may call it."""
    return RULES.get(("GET" if method == "HEAD" else method, path))


def roles_table() -> str:
    """The table as Markdown, for docs/security.md (tests/test_admins.py checks it)."""
    lines = ["| method | route | who may call it |", "|---|---|---|"]
    for (method, path), rule in RULES.items():
        lines.append(f"| {method} | `{path}` | {rule.who()} |")
    return "\n".join(lines)


def route_path(request: web.Request) -> str:
    """The canonical path of the route `request` matched (`/admin/keys/{name}`)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


async def permit(request: web.Request, caller: Caller, store: ScopeStore) -> None:
    """Refuse (PermissionDenied, or NotFound for what a team admin may not know of) a call
    the table does not allow `caller`. Handlers filter lists and ledgers themselves."""
    path = route_path(request)
    rule = rule_for(request.method, path)
    if rule is None:
        raise PermissionDenied(f"Admin API: {request.method} {path} has no access rule.")
    own = caller.named and request.match_info.get("name") == caller.actor
    if not rule.allows(caller.role, own):
        raise PermissionDenied(
            f"Admin API: the {caller.role} role may not call {request.method} {path}."
        )
    teams = caller.teams
    if teams is None or rule.public or (rule.own and own) or caller.role in rule.roles:
        return
    name = request.match_info.get("name", "")
    if rule.team == "key":
        scope = await store.get_scope(ScopeKind.KEY, name)
        if scope.extra.get("team") not in teams:
            raise NotFound(f'no key named "{name}"')
        if request.method == "PATCH":
            await _body_team(request, teams, required=False)
    elif rule.team == "key-create":
        await _body_team(request, teams, required=True)
    elif rule.team == "team" and name not in teams:
        raise NotFound(f'no team named "{name}"')
    elif rule.team == "user" and name not in await team_users(store, teams):
        raise NotFound(f'no user named "{name}"')
    elif rule.team == "user-keys":
        await _user_keys_in(store, name, teams)


async def team_users(store: ScopeStore, teams: frozenset[str]) -> set[str]:
    """The users of the keys of `teams` (what a team admin may see of users)."""
    users: set[str] = set()
    for team in teams:
        try:
            users.update((await store.members(ScopeKind.TEAM, team)).get("users", []))
        except NotFound:  # a team deleted since
            continue
    return users


async def _user_keys_in(store: ScopeStore, name: str, teams: frozenset[str]) -> None:
    """A team admin changes a user only if the user has keys and all are in their teams:
    a user's limits and state bind every key of theirs, so another team's too."""
    if name not in await team_users(store, teams):
        raise NotFound(f'no user named "{name}"')
    keys = (await store.members(ScopeKind.USER, name)).get("keys", [])
    others = []
    for key in keys:
        try:
            team = (await store.get_scope(ScopeKind.KEY, key)).extra.get("team")
        except NotFound:  # deleted since
            continue
        if team not in teams:
            others.append(key)
    if others or not keys:
        raise PermissionDenied(
            f'user "{name}": a team admin changes only a user all of whose keys are in '
            f"their teams; {len(others)} of their {len(keys)} keys are outside their teams"
        )


async def _body_team(request: web.Request, teams: frozenset[str], *, required: bool) -> None:
    """A team admin's key names one of their teams (the body is read again by the
    handler, which refuses a malformed one)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict) or (not required and "team" not in body):
        return
    if body.get("team") not in teams:
        raise PermissionDenied(
            f"team: a team admin's keys belong to one of their teams ({', '.join(sorted(teams))})"
        )


def ledger_teams(caller: Caller, asked: str | None) -> dict[str, Any]:
    """How a ledger read is narrowed by team (`RequestQuery`'s `team` and `teams`): to
    what was asked, and for a team admin to one of their teams, or all of them when they
    asked for none."""
    teams = caller.teams
    if teams is None or asked is None:
        return {"team": asked, "teams": teams}
    if asked not in teams:
        raise PermissionDenied(f'team: a team admin reads only their teams\' ledger, not "{asked}"')
    return {"team": asked, "teams": None}
