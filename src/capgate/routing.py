"""Which provider serves a model name, and under which upstream model name.

A `models` entry whose glob matches the asked model picks one of its targets by weight;
a target without `model` passes the asked name through. A model no entry matches goes to
the first provider that speaks the endpoint's format. (Fallbacks, retries and translation
between formats come with the routing issue.)
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from capgate.config import RouteConfig, TargetConfig
from capgate.errors import InvalidRequest, NotFound
from capgate.providers.base import Endpoint, Provider


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str


class Router:
    def __init__(
        self,
        routes: list[RouteConfig],
        providers: Mapping[str, Provider],
        rng: random.Random | None = None,
    ) -> None:
        self._routes = routes
        self._providers = dict(providers)
        self._rng = rng or random.Random()

    def resolve(self, model: str, endpoint: Endpoint) -> Route:
        for route in self._routes:
            if fnmatchcase(model, route.match):
                return self._pick(route, model, endpoint)
        for provider in self._providers.values():
            if provider.supports(endpoint):
                return Route(provider, model)
        raise NotFound(f'no provider is configured for model "{model}" on this endpoint')

    def _pick(self, route: RouteConfig, model: str, endpoint: Endpoint) -> Route:
        usable = [t for t in route.targets if self._providers[t.provider].supports(endpoint)]
        if not usable:
            names = ", ".join(t.provider for t in route.targets)
            raise InvalidRequest(
                f'model "{model}" is routed to {names}, which cannot serve '
                f"{endpoint.dialect} requests (format translation is not enabled)"
            )
        target: TargetConfig = (
            usable[0]
            if len(usable) == 1
            else self._rng.choices(usable, weights=[t.weight for t in usable])[0]
        )
        return Route(self._providers[target.provider], target.model or model)

    def listed_models(self, priced: list[str]) -> list[str]:
        """Model names worth showing in /v1/models: literal route names and priced models
        some route or provider can serve."""
        names = {r.match for r in self._routes if not any(c in r.match for c in "*?[")}
        for name in priced:
            if any(fnmatchcase(name, r.match) for r in self._routes) or not self._routes:
                names.add(name)
        return sorted(names)
