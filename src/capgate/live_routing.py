"""Providers and routes changed while the server runs: the config file's, then the ones an
admin defined at runtime (admin API, CLI, dashboard), applied in every process.

The config file's entries come first and win: they are read-only through the API, and a
runtime provider or route cannot take a name (or `match`) the file uses; a runtime entry
shadowed by one added to the file later is ignored and flagged. Runtime routes follow the
file's, in creation order. A runtime provider's API key is sealed with the server's
secret key (`capgate.secret_box`) before it is stored; without a key, runtime providers
can be created only without one.

Each process polls the store's `routing_version` every `POLL_SECONDS` (off the request
path) and, when it moved, rebuilds its providers and hands the router the new set; the
process that made a change applies it at once. Requests in flight keep the provider
objects they planned with; a replaced provider's idle connections are closed at once and
its busy ones when their answer ends.

Routing rules set at runtime follow the same version (`capgate.rules.live`): a list is
checked against the routes in force (the file's and the runtime ones) before it is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from capgate.config import RouteConfig, _location
from capgate.errors import Conflict, InvalidRequest, NotFound, UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint, Provider, UpstreamAnswer
from capgate.providers.http import HTTPProvider
from capgate.routing import Router
from capgate.rules.live import LiveRules
from capgate.secret_box import SecretBox, SecretUnreadable, fingerprint
from capgate.store.base import Store
from capgate.store.routing_rows import RoutingStore, RuntimeRouting, StoredProvider, StoredRoute

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# What a runtime provider may be and set. The CLI types run a local program with its own
# environment: an admin API that could name the program would run anything, so they stay
# in the config file.
RUNTIME_TYPES = ("anthropic", "openai", "openai-compatible", "mock")
RUNTIME_FIELDS = frozenset(
    {
        "base_url", "headers", "connect_timeout_s", "first_byte_timeout_s", "read_timeout_s",
        "timeout_s", "max_connections", "cooldown_after", "cooldown_s",
    }
)  # fmt: skip
NO_KEY = (
    "api_key: no secret key is configured to encrypt it with; set CAPGATE_SECRET_KEY "
    "(32 bytes, hex or base64: openssl rand -base64 32) or server.secret_key_file and "
    "restart (it is never stored in plain text)"
)


def checked(model: type[ProviderConfig] | type[RouteConfig], data: dict[str, Any]) -> Any:
    """`data` validated as the config file's entries are; InvalidRequest names the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _location(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where or 'body'}: {message.removeprefix('Value error, ')}")
        raise InvalidRequest("; ".join(problems)) from None


class Unusable:
    """A runtime provider that cannot be built (its key does not decrypt, its name is
    the config file's): its routes stay, and fail with the reason instead of going
    silently to another provider or sending a wrong key."""

    def __init__(self, config: ProviderConfig, problem: str) -> None:
        self.name: str = config.name
        self.type: str = config.type
        self.dialects = config.dialects
        self.first_byte_timeout_s = config.first_byte_timeout_s
        self.chat_output_field = "max_tokens"
        self._problem = problem

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint.dialect in self.dialects

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> UpstreamAnswer:
        raise UpstreamFailed(f'provider "{self.name}" is unusable: {self._problem}', sent=False)

    async def close(self) -> None:
        pass


@dataclass
class _Built:
    """A runtime provider as this process built it."""

    row: StoredProvider
    config: ProviderConfig
    provider: Provider  # Unusable when `problem`
    problem: str | None = None


@dataclass
class _State:
    version: int = -1
    providers: dict[str, _Built] = field(default_factory=dict)
    routes: list[StoredRoute] = field(default_factory=list)
    route_problems: dict[str, str] = field(default_factory=dict)
    served: tuple[str, ...] = ()  # the matches of the routes in force


class LiveRouting:
    def __init__(
        self,
        configs: Mapping[str, ProviderConfig],
        providers: Mapping[str, Provider],
        routes: list[RouteConfig],
        router: Router,
        box: SecretBox | None,
        rules: LiveRules | None = None,
    ) -> None:
        self._configs = dict(configs)  # the config file's (and --demo's) providers
        self._providers = dict(providers)
        self._routes = list(routes)
        self._router = router
        self.box = box
        self.rules = rules
        self._state = _State()
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- following the store -----------------------------------------------------------

    async def refresh(self, store: RoutingStore) -> None:
        """Rebuild when the store's version moved (one small read when it did not)."""
        if await store.routing_version() != self._state.version:
            async with self._lock:
                self._apply(await store.runtime_routing())

    def watch(self, store: RoutingStore) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                try:
                    await self.refresh(store)
                except Exception:
                    log.exception("reading the runtime providers failed")

        self._watcher = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        for built in self._state.providers.values():
            await built.provider.close()

    def _apply(self, stored: RuntimeRouting) -> None:
        old = self._state.providers
        state = _State(stored.version)
        for row in stored.providers:
            kept = old.get(row.name)
            state.providers[row.name] = kept if kept and kept.row == row else self._build(row)
        providers, configs = dict(self._providers), dict(self._configs)
        for name, built in state.providers.items():
            if name not in self._configs:  # the file wins
                providers[name], configs[name] = built.provider, built.config
        taken = {r.match for r in self._routes}
        routes = list(self._routes)
        for route in stored.routes:
            state.routes.append(route)
            problem = self._route_problem(route, taken, providers)
            if problem:
                state.route_problems[route.match] = problem
                log.error("runtime route %r is not used: %s", route.match, problem)
                continue
            try:
                routes.append(RouteConfig.model_validate({"match": route.match, **route.settings}))
            except ValidationError as exc:  # written by a newer version?
                state.route_problems[route.match] = str(exc).splitlines()[0]
        self._router.adopt(routes, providers, configs)
        state.served = tuple(r.match for r in routes)
        self._state = state
        if self.rules is not None:
            self.rules.adopt(stored.rules)
        for name, built in old.items():
            if state.providers.get(name) is not built:
                task = asyncio.ensure_future(built.provider.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _route_problem(
        self, route: StoredRoute, taken: set[str], providers: Mapping[str, Provider]
    ) -> str | None:
        if route.match in taken:
            return "the config file has a route with this match (the file wins)"
        missing = sorted(p for p in route.providers() if p not in providers)
        if missing:
            return f"no provider named {', '.join(missing)}"
        return None

    def _build(self, row: StoredProvider) -> _Built:
        data: dict[str, Any] = {"name": row.name, "type": row.type, **row.settings}
        shell = ProviderConfig.model_construct(**data)
        if row.name in self._configs:
            problem = "the config file has a provider with this name (the file wins)"
            log.error("runtime provider %r is not used: %s", row.name, problem)
            return _Built(row, shell, Unusable(shell, problem), problem)
        try:
            if row.secret is not None:
                if self.box is None:
                    raise SecretUnreadable(
                        f"provider {row.name!r}: its api key is encrypted, but no secret key "
                        "is configured (CAPGATE_SECRET_KEY or server.secret_key_file)"
                    )
                data["api_key"] = self.box.open(row.name, row.secret)
            config = ProviderConfig.model_validate(data)
        except (SecretUnreadable, ValidationError) as exc:
            problem = str(exc).splitlines()[0]
            log.error("runtime provider %r is not used: %s", row.name, problem)
            return _Built(row, shell, Unusable(shell, problem), problem)
        return _Built(row, config, HTTPProvider(config))

    # -- what the admin API shows ------------------------------------------------------

    def provider(self, name: str) -> dict[str, Any]:
        found = next((p for p in self.provider_items() if p["name"] == name), None)
        if found is None:
            raise NotFound(f"no provider named {name!r}")
        return found

    def route(self, match: str) -> dict[str, Any]:
        found = next((r for r in self.route_items() if r["match"] == match), None)
        if found is None:
            raise NotFound(f"no route for {match!r}")
        return found

    def provider_items(self) -> list[dict[str, Any]]:
        out = [_provider_json(c, "config") for c in self._configs.values()]
        for built in self._state.providers.values():
            item = {"name": built.row.name, "type": built.row.type, **built.row.settings}
            out.append(
                {**_provider_json(ProviderConfig.model_construct(**item), "runtime"),
                 "api_key_fingerprint": built.row.fingerprint, "problem": built.problem,
                 "created_at": built.row.created_at, "updated_at": built.row.updated_at}
            )  # fmt: skip
        return out

    def route_items(self) -> list[dict[str, Any]]:
        out = [_route_json(r.match, r.model_dump(), "config") for r in self._routes]
        for route in self._state.routes:
            item = _route_json(route.match, route.settings, "runtime")
            item["problem"] = self._state.route_problems.get(route.match)
            out.append(item)
        return out

    # -- changes -----------------------------------------------------------------------

    def _runtime_provider(self, name: str) -> _Built:
        if name in self._configs:
            raise Conflict(f"provider {name!r} is defined in the config file: edit it there")
        built = self._state.providers.get(name)
        if built is None:
            raise NotFound(f"no runtime provider named {name!r}")
        return built

    def _row(
        self, data: dict[str, Any], api_key: str | None, keep: _Built | None
    ) -> StoredProvider:
        """Validated and sealed; `api_key` None keeps `keep`'s, "" removes it."""
        unknown = sorted(set(data) - RUNTIME_FIELDS - {"name", "type"})
        if unknown:
            raise InvalidRequest(f"{unknown[0]}: not a field of a runtime provider")
        if data["type"] not in RUNTIME_TYPES:
            raise InvalidRequest(
                f"type: {data['type']!r} is not one of {', '.join(RUNTIME_TYPES)} (claude-cli "
                "and codex-cli run a local program: define them in the config file)"
            )
        if data["type"] == "mock" and not data.get("base_url"):
            raise InvalidRequest("base_url: a runtime mock provider needs the mock's URL")
        checked(ProviderConfig, {**data, "api_key": api_key or None})
        name = data["name"]
        settings = {k: v for k, v in data.items() if k not in ("name", "type")}
        if api_key is None and keep is not None:
            sealed, shown = keep.row.secret, keep.row.fingerprint
        elif api_key:
            if self.box is None:
                raise InvalidRequest(NO_KEY)
            sealed, shown = self.box.seal(name, api_key), fingerprint(api_key)
        else:
            sealed, shown = None, None
        return StoredProvider(name, data["type"], settings, sealed, shown)

    async def create_provider(
        self, store: Store, data: dict[str, Any], api_key: str | None, actor: str
    ) -> None:
        await self.refresh(store)
        if data["name"] in self._configs:
            raise Conflict(f"the config file has a provider named {data['name']!r}")
        row = self._row(data, api_key, None)
        await store.put_provider(row, create=True, actor=actor)
        await self.refresh(store)

    async def update_provider(
        self, store: Store, name: str, changes: dict[str, Any], api_key: str | None, actor: str
    ) -> None:
        await self.refresh(store)
        built = self._runtime_provider(name)
        if changes.get("type", built.row.type) != built.row.type:
            raise InvalidRequest("type: cannot change; remove the provider and add it again")
        data = {"name": name, "type": built.row.type, **built.row.settings}
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)  # back to the default
            else:
                data[key] = value
        row = self._row(data, api_key, built)
        await store.put_provider(row, create=False, actor=actor)
        await self.refresh(store)

    async def delete_provider(self, store: Store, name: str, actor: str) -> None:
        await self.refresh(store)
        self._runtime_provider(name)
        await store.delete_provider(name, actor)
        await self.refresh(store)

    def _route_row(self, match: str, settings: dict[str, Any]) -> StoredRoute:
        route: RouteConfig = checked(RouteConfig, {"match": match, **settings})
        known = set(self._configs) | set(self._state.providers)
        for field_name in ("targets", "fallbacks"):
            for i, target in enumerate(getattr(route, field_name)):
                if target.provider not in known:
                    raise InvalidRequest(
                        f"{field_name}[{i}].provider: no provider named {target.provider!r}"
                    )
        dumped = route.model_dump(exclude={"match"})
        return StoredRoute(match, dumped)

    async def create_route(
        self, store: Store, match: str, settings: dict[str, Any], actor: str
    ) -> None:
        await self.refresh(store)
        if any(r.match == match for r in self._routes):
            raise Conflict(f"the config file has a route for {match!r}")
        row = self._route_row(match, settings)
        await store.put_route(row, create=True, config_providers=set(self._configs), actor=actor)
        await self.refresh(store)

    async def update_route(
        self, store: Store, match: str, changes: dict[str, Any], actor: str
    ) -> None:
        await self.refresh(store)
        if any(r.match == match for r in self._routes):
            raise Conflict(f"the route for {match!r} is defined in the config file: edit it there")
        current = next((r for r in self._state.routes if r.match == match), None)
        if current is None:
            raise NotFound(f"no runtime route for {match!r}")
        settings = {**current.settings, **changes}
        row = self._route_row(match, {k: v for k, v in settings.items() if v is not None})
        await store.put_route(row, create=False, config_providers=set(self._configs), actor=actor)
        await self.refresh(store)

    async def delete_route(self, store: Store, match: str, actor: str) -> None:
        await self.refresh(store)
        if any(r.match == match for r in self._routes):
            raise Conflict(f"the route for {match!r} is defined in the config file: edit it there")
        rest = tuple(m for m in self._state.served if m != match)
        problem = self._rules_problem(lambda model: self._served_by(rest, model))
        if problem and not self._rules_problem(self.serves):  # this deletion would cause it
            raise Conflict(
                f"the runtime rules use the route {match!r}: {problem}; change them first"
            )
        await store.delete_route(match, actor)
        await self.refresh(store)

    # -- rules -------------------------------------------------------------------------

    def _live_rules(self) -> LiveRules:
        if self.rules is None:  # pragma: no cover - bootstrap always gives them
            raise NotFound("routing rules are not followed by this server")
        return self.rules

    def serves(self, model: str) -> bool:
        """Whether a route in force serves `model` (every name does without routes)."""
        return self._served_by(self._state.served, model)

    @staticmethod
    def _served_by(served: tuple[str, ...], model: str) -> bool:
        return not served or any(fnmatchcase(model, match) for match in served)

    def _rules_problem(self, serves: Callable[[str], bool]) -> str | None:
        """Why the runtime rules in force name a model no route serves (None: they don't,
        or the file's rules are in force: those are checked against the file's routes)."""
        rules = self.rules
        if rules is None or rules.in_force.source != "runtime":
            return None
        try:
            rules.check(rules.in_force.rules, serves)
        except InvalidRequest as exc:
            return str(exc)
        return None

    def rules_json(self) -> dict[str, Any]:
        rules = self._live_rules()
        out = rules.in_force.to_json(rules.config_rules)
        if out["problem"] is None:  # e.g. a route deleted by a node of an older version
            out["problem"] = self._rules_problem(self.serves)
        return out

    async def set_rules(self, store: Store, rules: Any, actor: str) -> None:
        """Replace the runtime rules with the ordered list `rules`, checked first."""
        await self.refresh(store)
        self._live_rules().check(rules, self.serves)
        await store.put_rules(rules, actor)
        await self.refresh(store)

    async def reset_rules(self, store: Store, actor: str) -> None:
        """Back to the config file's rules."""
        self._live_rules()
        await store.put_rules(None, actor)
        await self.refresh(store)


def _provider_json(config: ProviderConfig, source: str) -> dict[str, Any]:
    """A provider as the API shows it: never its API key or header values (either may be
    a secret), the key's fingerprint and the header names."""
    out = {
        "name": config.name,
        "type": config.type,
        "source": source,
        "base_url": config.base_url,
        "api_key_fingerprint": fingerprint(config.api_key) if config.api_key else None,
        "header_names": sorted(config.headers),
    }
    defaults = ProviderConfig.model_fields
    for name in sorted(RUNTIME_FIELDS - {"base_url", "headers"}):
        value = getattr(config, name, None)
        out[name] = defaults[name].default if value is None else value
    return out


def _route_json(match: str, settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "match": match,
        "source": source,
        "targets": settings.get("targets", []),
        "fallbacks": settings.get("fallbacks", []),
        "retries": settings.get("retries"),
        "deadline_s": settings.get("deadline_s"),
    }
