"""RuntimeSettings against a store whose reads can be held: a settings poll that read the
row before an admin's change must not undo the change once its read returns (for up to a
second, every model would weigh what the old row said)."""

from __future__ import annotations

import asyncio
from typing import Any

from capgate.config import Config
from capgate.runtime import RuntimeSettings
from capgate.store.base import SettingsChanged


class HeldStore:
    """Settings in memory; `hold` makes the next read (or write) wait for `release`, the
    read returning what was stored when it began (slow on a loaded machine)."""

    def __init__(self) -> None:
        self.row: dict[str, Any] = {}
        self.hold: str | None = None  # "get" or "put"
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def _wait(self, op: str) -> None:
        if self.hold == op:
            self.hold = None
            self.held.set()
            await self.release.wait()

    async def get_settings(self) -> dict[str, Any]:
        row = dict(self.row)
        await self._wait("get")
        return row

    async def put_settings(
        self,
        settings: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        actor: str = "admin",
        expected: dict[str, Any] | None = None,
    ) -> None:
        await self._wait("put")
        if expected is not None and self.row != expected:  # as the stores check, in their write
            raise SettingsChanged
        self.row = dict(settings)


def test_a_poll_read_before_a_change_does_not_undo_it() -> None:
    async def run() -> None:
        runtime, store = RuntimeSettings(Config()), HeldStore()
        store.row = {"credit_weights": {}}  # an earlier change: every model weighs 1
        await runtime.refresh(store)
        assert runtime.pricing.credits_for("claude-opus-4-1") == 1
        store.hold = "get"
        poll = asyncio.create_task(runtime.refresh(store))  # reads the old row, held
        await store.held.wait()
        await runtime.change(store, {"credit_weights": None}, "admin")  # back to the file's
        assert runtime.pricing.credits_for("claude-opus-4-1") == 10
        store.release.set()
        await poll
        assert runtime.pricing.credits_for("claude-opus-4-1") == 10
        assert runtime.sources()["credit_weights"] == "config"
        await runtime.refresh(store)  # the next poll reads the row as it is
        assert runtime.pricing.credits_for("claude-opus-4-1") == 10

    asyncio.run(run())


def test_two_changes_at_once_both_count() -> None:
    """Each change starts from the stored row; two at once in one process: neither lost."""

    async def run() -> None:
        runtime, store = RuntimeSettings(Config()), HeldStore()
        store.hold = "put"
        first = asyncio.create_task(
            runtime.change(store, {"credit_weights": {"*opus*": 7}}, "admin")
        )
        await store.held.wait()  # the first change is writing the row
        second = asyncio.create_task(runtime.change(store, {"timezone": "Europe/Paris"}, "ops"))
        await asyncio.sleep(0.01)
        store.release.set()
        await asyncio.gather(first, second)
        assert store.row == {"credit_weights": {"*opus*": 7}, "timezone": "Europe/Paris"}
        assert runtime.stored == store.row
        assert runtime.pricing.credits_for("claude-opus-4-1") == 7

    asyncio.run(run())


def test_two_processes_changing_at_once_lose_neither() -> None:
    """Two processes (two RuntimeSettings on one store): one's change is being written
    when the other's lands. The first must not write the row it read before the second's
    change: its write is refused, and it merges again on the new row."""

    async def run() -> None:
        one, two, store = RuntimeSettings(Config()), RuntimeSettings(Config()), HeldStore()
        store.hold = "put"
        first = asyncio.create_task(one.change(store, {"credit_weights": {"*opus*": 7}}, "a"))
        await store.held.wait()  # read {} and is writing its row now
        await two.change(store, {"timezone": "Europe/Paris"}, "b")
        store.release.set()
        await first
        assert store.row == {"credit_weights": {"*opus*": 7}, "timezone": "Europe/Paris"}
        assert one.stored == store.row
        await two.refresh(store)
        assert two.pricing.credits_for("claude-opus-4-1") == 7

    asyncio.run(run())
