"""Which provider serves a model name, under which upstream model name, and what to try
when it fails.

A `models` entry whose glob matches the asked model picks one of its targets by weight
(among the providers not cooling down); its `fallbacks` follow in order. A target without
`model` passes the asked name through. A model no entry matches goes to the first
provider that speaks the endpoint's format. A target whose provider speaks the other
format (Anthropic Messages <-> OpenAI Chat Completions) is reached through translation.

The circuit breaker (`Breakers`) is per process: each server process learns on its own
that a provider is failing, after `cooldown_after` failures in a row.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from capgate.config import RouteConfig, ServerConfig, TargetConfig
from capgate.errors import InvalidRequest, NotFound
from capgate.logs import UPSTREAM, Line, scrub
from capgate.metrics import UPSTREAM_BUCKETS, Buckets
from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint, Provider

# The endpoint of the other format that a request can be translated to.
_COUNTERPART = {Endpoint.MESSAGES: Endpoint.CHAT, Endpoint.CHAT: Endpoint.MESSAGES}


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str
    endpoint: Endpoint  # what the provider is called with; differs when translating
    config: ProviderConfig

    def same_target(self, other: Route) -> bool:
        return self.provider is other.provider and self.upstream_model == other.upstream_model


@dataclass(frozen=True, slots=True)
class Plan:
    """What to try for one request, in order: the picked target, then the fallbacks."""

    routes: tuple[Route, ...]
    retries: int  # further tries on the same target after a failure
    deadline_s: float  # for all attempts together
    deterministic: bool = False  # no weighted pick made: the same every time
    rule: str | None = None  # the routing rule that made this plan (capgate.rules)

    @property
    def first(self) -> Route:
        return self.routes[0]


@dataclass(slots=True)
class _Health:
    failures: int = 0  # in a row
    cooling_until: float = 0.0
    last_error: str | None = None
    last_failure_at: float | None = None
    total_failures: int = 0
    cooldowns: int = 0
    # How long attempts took, from sending to the end of the relayed answer (for /metrics).
    ok_s: Buckets = field(default_factory=lambda: Buckets(UPSTREAM_BUCKETS))
    failed_s: Buckets = field(default_factory=lambda: Buckets(UPSTREAM_BUCKETS))


class Breakers:
    """A circuit breaker per provider: `cooldown_after` failures in a row cool it down for
    `cooldown_s`; any success closes it again."""

    def __init__(
        self, configs: Mapping[str, ProviderConfig], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._configs = dict(configs)
        self._clock = clock
        self._health = {name: _Health() for name in configs}
        self._latest_end = 0.0  # when the last cooldown started so far ends

    def adopt(self, configs: Mapping[str, ProviderConfig]) -> None:
        """The providers changed at runtime: new ones start healthy, kept ones keep their
        health, removed ones are forgotten (a request still in flight on one reports to
        nobody)."""
        self._configs.update(configs)
        self._health = {name: self._health.get(name) or _Health() for name in configs}

    def cooling(self, provider: str) -> bool:
        health = self._health.get(provider)
        return health is not None and health.cooling_until > self._clock()

    def any_cooling(self) -> bool:
        """Whether some provider may be cooling down (cheap: one comparison)."""
        return self._latest_end > self._clock()

    def failed(self, provider: str, error: str, seconds: float | None = None) -> None:
        health = self._health.get(provider)
        if health is None:  # removed at runtime while this request was in flight
            return
        if seconds is not None:
            health.failed_s.observe(seconds)
        config = self._configs[provider]
        now = self._clock()
        health.failures += 1
        health.total_failures += 1
        health.last_error = error[:300]
        health.last_failure_at = time.time()
        opens = health.failures >= config.cooldown_after and health.cooling_until <= now
        UPSTREAM.warning(
            Line("upstream_failed", {"provider": provider, "failures_in_a_row": health.failures,
                                     "error": scrub(error)})
        )  # fmt: skip
        if opens:
            health.cooling_until = now + config.cooldown_s
            health.cooldowns += 1
            self._latest_end = max(self._latest_end, health.cooling_until)
            UPSTREAM.warning(
                Line("breaker_open", {"provider": provider, "cooldown_s": config.cooldown_s,
                                      "failures_in_a_row": health.failures})
            )  # fmt: skip

    def succeeded(self, provider: str, seconds: float | None = None) -> None:
        health = self._health.get(provider)
        if health is None:
            return
        if seconds is not None:
            health.ok_s.observe(seconds)
        if health.failures:
            if health.failures >= self._configs[provider].cooldown_after:
                UPSTREAM.warning(Line("breaker_closed", {"provider": provider}))
            health.failures = 0
            health.cooling_until = 0.0

    def durations(self) -> dict[tuple[str, ...], Buckets]:
        """How long upstream attempts took, by (provider, "ok" | "error")."""
        out: dict[tuple[str, ...], Buckets] = {}
        for name, health in self._health.items():
            out[(name, "ok")], out[(name, "error")] = health.ok_s, health.failed_s
        return out

    def state(self) -> list[dict[str, Any]]:
        """Each provider's health, for /admin/routing."""
        now, wall = self._clock(), time.time()
        out = []
        for name, health in self._health.items():
            left = max(0.0, health.cooling_until - now)
            out.append(
                {
                    "provider": name,
                    "type": self._configs[name].type,
                    "state": "cooling" if left > 0 else "ok",
                    "cooling_until": wall + left if left > 0 else None,
                    "cooling_seconds_left": round(left, 3),
                    "failures_in_a_row": health.failures,
                    "total_failures": health.total_failures,
                    "cooldowns": health.cooldowns,
                    "last_error": health.last_error,
                    "last_failure_at": health.last_failure_at,
                }
            )
        return out


class Router:
    def __init__(
        self,
        routes: list[RouteConfig],
        providers: Mapping[str, Provider],
        configs: Mapping[str, ProviderConfig],
        settings: ServerConfig | None = None,
        rng: random.Random | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._routes = routes
        self._providers = dict(providers)
        self._configs = dict(configs)
        self._settings = settings or ServerConfig()
        self._rng = rng or random.Random()
        self.breakers = breakers or Breakers(configs)
        # Plans that involve no random pick, by (model, endpoint): valid while no provider
        # is cooling down (cooldowns reorder them). Bounded: model names come from clients.
        self._fixed: dict[tuple[str, Endpoint], Plan] = {}

    def adopt(
        self,
        routes: list[RouteConfig],
        providers: Mapping[str, Provider],
        configs: Mapping[str, ProviderConfig],
    ) -> None:
        """Serve from these routes and providers from the next plan on (runtime changes;
        `capgate.live_routing`). Plans already made keep their provider objects."""
        self.breakers.adopt(configs)
        self._routes = routes
        self._providers = dict(providers)
        self._configs = dict(configs)
        self._fixed = {}

    def plan(self, model: str, endpoint: Endpoint) -> Plan:
        cooling = self.breakers.any_cooling()
        if not cooling:
            fixed = self._fixed.get((model, endpoint))
            if fixed is not None:
                return fixed
        plan = self._plan(model, endpoint)
        if not cooling and len(self._fixed) < 10_000 and plan.deterministic:
            self._fixed[(model, endpoint)] = plan
        return plan

    def _plan(self, model: str, endpoint: Endpoint) -> Plan:
        settings = self._settings
        for route in self._routes:
            if fnmatchcase(model, route.match):
                retries = settings.retries if route.retries is None else route.retries
                deadline = route.deadline_s or settings.request_deadline_s
                routes, fixed = self._candidates(route, model, endpoint)
                return Plan(routes, retries, deadline, fixed)
        for name, provider in self._providers.items():
            if provider.supports(endpoint):
                only = Route(provider, model, endpoint, self._configs[name])
                return Plan((only,), settings.retries, settings.request_deadline_s, True)
        raise NotFound(f'no provider is configured for model "{model}" on this endpoint')

    def resolve(self, model: str, endpoint: Endpoint) -> Route:
        """The target a request would go to first."""
        return self.plan(model, endpoint).first

    def _route(self, target: TargetConfig, model: str, endpoint: Endpoint) -> Route | None:
        provider = self._providers[target.provider]
        upstream = target.model or model
        config = self._configs[target.provider]
        if provider.supports(endpoint):
            return Route(provider, upstream, endpoint, config)
        other = _COUNTERPART.get(endpoint)
        if other is not None and provider.supports(other):
            return Route(provider, upstream, other, config)
        return None

    def _candidates(
        self, route: RouteConfig, model: str, endpoint: Endpoint
    ) -> tuple[tuple[Route, ...], bool]:
        """The routes to try in order, and whether the order involved no random pick."""
        targets = [(t, r) for t in route.targets if (r := self._route(t, model, endpoint))]
        fallbacks = [r for t in route.fallbacks if (r := self._route(t, model, endpoint))]
        if not targets and not fallbacks:
            names = ", ".join(t.provider for t in [*route.targets, *route.fallbacks])
            raise InvalidRequest(
                f'model "{model}" is routed to {names}, which cannot serve {endpoint.dialect} '
                f"requests on this endpoint"
            )
        ordered: list[Route] = []
        if targets:
            healthy = [(t, r) for t, r in targets if not self.breakers.cooling(t.provider)]
            pool = healthy or targets
            if len(pool) == 1:
                picked = pool[0][1]
            else:
                picked = self._rng.choices(pool, weights=[t.weight for t, _ in pool])[0][1]
            ordered.append(picked)
        for candidate in fallbacks:
            if not any(candidate.same_target(r) for r in ordered):
                ordered.append(candidate)
        # Cooling targets go last: tried only when everything healthy has failed too.
        cooling = self.breakers.cooling
        ordered.sort(key=lambda r: cooling(r.provider.name))
        return tuple(ordered), len(targets) <= 1

    def describe(self) -> dict[str, Any]:
        """For /admin/routing: the providers' health and the routes as configured."""
        routes = [
            {
                "match": r.match,
                "targets": [t.model_dump() for t in r.targets],
                "fallbacks": [t.model_dump() for t in r.fallbacks],
                "retries": self._settings.retries if r.retries is None else r.retries,
                "deadline_s": r.deadline_s or self._settings.request_deadline_s,
            }
            for r in self._routes
        ]
        return {"providers": self.breakers.state(), "models": routes}

    def listed_models(self, priced: list[str]) -> list[str]:
        """Model names worth showing in /v1/models: literal route names and priced models
        some route or provider can serve."""
        names = {r.match for r in self._routes if not any(c in r.match for c in "*?[")}
        for name in priced:
            if any(fnmatchcase(name, r.match) for r in self._routes) or not self._routes:
                names.add(name)
        return sorted(names)
