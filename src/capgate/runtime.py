"""Settings an admin may change while the server runs: price overrides, credit weights,
the default timezone of new scopes, and the alerts' default rules and private targets.

The config file gives each its starting value; the dashboard (`PATCH /admin/settings`)
stores overrides in the database, field by field. Every process polls that row, so an
edit reaches all processes on the file within a second; the process that made it applies
it at once. The gateway holds the one `PricingTable` and sees new prices and weights from
its next request on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from capgate.alerts.rules import parse_defaults
from capgate.config import Config
from capgate.core.windows import zone
from capgate.errors import StoreUnavailable
from capgate.pricing import PricingTable
from capgate.store.base import SettingsChanged

log = logging.getLogger(__name__)

FIELDS = (
    "pricing", "credit_weights", "timezone", "alert_rules", "alerts_allow_private_targets"
)  # fmt: skip
POLL_SECONDS = 1.0
CHANGE_TRIES = 20  # another process's change between our read and our write: read again


class SettingsSource(Protocol):
    async def get_settings(self) -> dict[str, Any]: ...


class SettingsWriter(SettingsSource, Protocol):
    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
        expected: dict[str, Any] | None = None,
    ) -> None: ...


class RuntimeSettings:
    def __init__(self, config: Config) -> None:
        self._base: dict[str, Any] = {
            "pricing": {name: p.as_entry() for name, p in config.pricing.items()},
            "credit_weights": dict(config.server.credit_weights),
            "timezone": config.server.timezone,
            "alert_rules": list(config.server.alert_rules),
            "alerts_allow_private_targets": config.server.alerts_allow_private_targets,
        }
        self._stored: dict[str, Any] = {}
        self.pricing = self._table(self._base)
        # Bumped by every `apply`: a read of the store begun before one may be older than
        # what was applied (an admin's change made here meanwhile), so it is dropped.
        self._applied = 0
        self._changing = asyncio.Lock()  # one admin change at a time: none lost
        self._watcher: asyncio.Task[None] | None = None

    @property
    def timezone(self) -> str:
        return str(self.effective()["timezone"])

    def effective(self, stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
        stored = self._stored if stored is None else stored
        return {name: stored.get(name, self._base[name]) for name in FIELDS}

    def sources(self) -> dict[str, str]:
        return {name: "dashboard" if name in self._stored else "config" for name in FIELDS}

    @property
    def stored(self) -> dict[str, Any]:
        return dict(self._stored)

    def merged(
        self, changes: Mapping[str, Any], stored: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The stored overrides (`stored`, else those applied here) after `changes` (a
        field set to None goes back to the config file's value), checked: raises
        ValueError naming the bad field."""
        stored = dict(self._stored if stored is None else stored)
        for name, value in changes.items():
            if name not in FIELDS:
                raise ValueError(f"{name}: not a runtime setting")
            if value is None:
                stored.pop(name, None)
            else:
                stored[name] = value
        effective = self.effective(stored)
        try:
            zone(effective["timezone"])
        except ValueError as exc:
            raise ValueError(f"timezone: {exc}") from None
        self._table(effective)  # raises on a bad price or weight
        parse_defaults(effective["alert_rules"])  # raises on a bad rule
        return stored

    def apply(self, stored: Mapping[str, Any]) -> None:
        effective = self.effective(stored)
        self.pricing.adopt(self._table(effective))
        self._stored = dict(stored)
        self._applied += 1

    async def change(self, store: SettingsWriter, changes: Mapping[str, Any], actor: str) -> None:
        """An admin's change: stored (with its audit entry), then applied here at once.
        Raises ValueError naming a bad field, changing nothing."""
        async with self._changing:
            for _ in range(CHANGE_TRIES):
                current = await store.get_settings()  # on top of what others stored
                stored = self.merged(changes, current)
                before, after = self.effective(current), self.effective(stored)
                try:  # only if nobody stored another change since `current` was read
                    await store.put_settings(stored, before, after, actor, expected=current)
                except SettingsChanged:
                    continue
                self.apply(stored)
                return
            raise StoreUnavailable("the runtime settings change too fast to save; try again")

    @staticmethod
    def _table(effective: Mapping[str, Any]) -> PricingTable:
        weights = effective["credit_weights"]
        for glob, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"credit_weights.{glob}: must be a whole number >= 0")
        return PricingTable.load(effective["pricing"], weights)

    # -- following other processes -----------------------------------------------------

    async def refresh(self, source: SettingsSource) -> None:
        applied = self._applied
        stored = await source.get_settings()
        if applied != self._applied:  # read before a change applied here: maybe older
            return
        if stored != self._stored:
            try:
                self.apply(stored)
            except ValueError:  # written by a newer version? keep what works
                log.exception("cannot apply the stored settings; keeping the current ones")

    def watch(self, source: SettingsSource) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                try:
                    await self.refresh(source)
                except Exception:
                    log.exception("reading the stored settings failed")

        self._watcher = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
