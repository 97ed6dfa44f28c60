"""The pricing table: the bundled data file, then the admin's overrides on top."""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any

import yaml

from capgate.core.money import Price

_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


class PricingTable:
    def __init__(
        self,
        prices: Mapping[str, Price],
        globs: Mapping[str, Price],
        version: str,
        overridden: frozenset[str] = frozenset(),
    ):
        self._prices = dict(prices)
        self._globs = dict(globs)  # override keys with wildcards, tried in order
        self._overridden = overridden  # exact names the admin priced
        self.version = version
        self._cache: dict[str, Price | None] = {}

    @classmethod
    def load(cls, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PricingTable:
        text = resources.files("capgate").joinpath("data/pricing.yaml").read_text("utf-8")
        data = yaml.safe_load(text)
        prices: dict[str, Price] = {}
        for name, entry in data["models"].items():
            price = Price.from_per_million(entry)
            prices[name] = price
            for alias in entry.get("aliases", ()):
                prices[alias] = price
        globs: dict[str, Price] = {}
        for name, entry in (overrides or {}).items():
            try:
                price = Price.from_per_million(dict(entry))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"pricing.{name}: {exc}") from None
            if any(ch in name for ch in "*?["):
                globs[name] = price
            else:
                prices[name] = price
        exact = frozenset(n for n in (overrides or {}) if not any(c in n for c in "*?["))
        return cls(prices, globs, str(data.get("version", "")), exact)

    def lookup(self, model: str) -> Price | None:
        """The price of `model`. The admin's overrides win (exact name, then globs in
        order), then the bundled table by exact name, then without a date suffix
        (`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`)."""
        if model in self._cache:
            return self._cache[model]
        price = self._prices.get(model) if model in self._overridden else None
        if price is None:
            price = next((p for g, p in self._globs.items() if fnmatchcase(model, g)), None)
        if price is None:
            price = self._prices.get(model)
        if price is None:
            undated = _DATED.sub("", model)
            if undated != model:
                price = self._prices.get(undated)
        if len(self._cache) < 10_000:  # bounded: model names come from clients
            self._cache[model] = price
        return price

    def models(self) -> list[str]:
        return sorted(self._prices)
