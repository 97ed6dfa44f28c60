"""What a model costs: the price table (the bundled data file, then the admin's overrides on
top) and the credit weights per model glob. Both can change while the server runs (the
dashboard's settings), so the gateway keeps one table and `adopt` swaps its contents."""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any

import yaml

from capgate.core.money import Price

_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")
_CACHE_MAX = 10_000  # bounded: model names come from clients
# Cloud ids of Anthropic models: Bedrock's `anthropic.claude-...-v1:0`, with an inference
# profile's prefix (`us.`, `eu.`, `apac.`, `global.`, `us-gov.`, ...) and maybe as an ARN,
# and Vertex AI's `claude-...@20250929`. They are priced as the model itself
# (docs/providers.md#prices).
_BEDROCK = re.compile(
    r"^(?:arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:(?:foundation-model|inference-profile)/)?"
    r"(?:[a-z]{2,6}(?:-[a-z]+)?\.)?anthropic\.(.+?)(?:-v\d+(?::\d+)?)?$"
)
_VERTEX = re.compile(r"^(claude-[^@]+)@(\d{8})$")
# Other vendors' Bedrock ids (Converse), priced by `vendor.model` without the version.
_BEDROCK_OTHER = re.compile(
    r"^(?:arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:(?:foundation-model|inference-profile)/)?"
    r"(?:[a-z]{2,6}(?:-[a-z]+)?\.)?((?:amazon|meta|mistral)\..+?)(?:-v\d+(?::\d+)?)?$"
)


class PricingTable:
    def __init__(
        self,
        prices: Mapping[str, Price],
        globs: Mapping[str, Price],
        version: str,
        overridden: frozenset[str] = frozenset(),
        credit_weights: Mapping[str, int] | None = None,
    ):
        self._prices = dict(prices)
        self._globs = dict(globs)  # override keys with wildcards, tried in order
        self._overridden = overridden  # exact names the admin priced
        self.version = version
        # Credits per request by glob over the routed model; first match wins, else 1.
        self._weights = dict(credit_weights or {})
        self._cache: dict[str, Price | None] = {}
        self._credits: dict[str, int] = {}

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        credit_weights: Mapping[str, int] | None = None,
    ) -> PricingTable:
        text = resources.files("capgate").joinpath("data/pricing.yaml").read_text("utf-8")
        # libyaml's loader when PyYAML has it: the same data, a tenth of the time (this
        # runs at the start of every `capgate local` report).
        if hasattr(yaml, "CSafeLoader"):
            data = yaml.load(text, Loader=yaml.CSafeLoader)
        else:
            data = yaml.safe_load(text)
        prices: dict[str, Price] = {}
        for name, entry in data["models"].items():
            price = Price.from_per_million(entry)
            prices[name] = price
            for alias in entry.get("aliases", ()):
                prices[alias] = price
        globs: dict[str, Price] = {}
        for name, entry in (overrides or {}).items():
            fields = dict(entry)
            bundled = prices.get(name)  # an override keeps the model's known context window
            if "context_window" not in fields and bundled is not None:
                fields["context_window"] = bundled.context_window
            try:
                price = Price.from_per_million(fields)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"pricing.{name}: {exc}") from None
            if any(ch in name for ch in "*?["):
                globs[name] = price
            else:
                prices[name] = price
        exact = frozenset(n for n in (overrides or {}) if not any(c in n for c in "*?["))
        return cls(prices, globs, str(data.get("version", "")), exact, credit_weights)

    def adopt(self, other: PricingTable) -> None:
        """Take `other`'s prices and weights, in place: whoever holds this table sees the
        new ones from its next lookup (all on the event loop, so never half of each)."""
        self._prices, self._globs = other._prices, other._globs
        self._overridden, self.version = other._overridden, other.version
        self._weights = other._weights
        self._cache, self._credits = {}, {}

    def lookup(self, model: str) -> Price | None:
        """The price of `model`. The admin's overrides win (exact name, then globs in
        order), then the bundled table by exact name, then without a date suffix
        (`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`), then a cloud id as the model
        it names (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` -> the same)."""
        if model in self._cache:
            return self._cache[model]
        price = self._prices.get(model) if model in self._overridden else None
        if price is None:
            price = next((p for g, p in self._globs.items() if fnmatchcase(model, g)), None)
        if price is None:
            price = self._bundled(model)
        if price is None and (cloud := cloud_model_name(model)) != model:
            price = self._bundled(cloud)
        if len(self._cache) < _CACHE_MAX:
            self._cache[model] = price
        return price

    def _bundled(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is None:
            undated = _DATED.sub("", model)
            if undated != model:
                price = self._prices.get(undated)
        return price

    def credits_for(self, model: str) -> int:
        """Credits a request of `model` costs: the first matching weight, else 1."""
        credits = self._credits.get(model)
        if credits is None:
            credits = next((w for g, w in self._weights.items() if fnmatchcase(model, g)), 1)
            if len(self._credits) < _CACHE_MAX:
                self._credits[model] = credits
        return credits

    def weights(self) -> dict[str, int]:
        """The credit weights by model glob, in order."""
        return dict(self._weights)

    def models(self) -> list[str]:
        return sorted(self._prices)


def cloud_model_name(model: str) -> str:
    """The Anthropic model a Bedrock or Vertex AI model id names (else `model`)."""
    if (found := _BEDROCK.match(model)) is not None:
        return found.group(1)
    if (found := _VERTEX.match(model)) is not None:
        return f"{found.group(1)}-{found.group(2)}"
    if (found := _BEDROCK_OTHER.match(model)) is not None:
        return found.group(1)
    return model
