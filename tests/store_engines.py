"""The store engines the contract suite (tests/test_store_contract.py) runs against.

`make_store` is parametrized over the engines: each test gets a function that builds a
new, unstarted store on one fresh database of that engine (call it twice for two
processes or nodes sharing it). The stores run in the test's own event loop, no HTTP.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from capgate.store.base import Store
from capgate.store.sqlite import SQLiteStore

ENGINES = ("sqlite", "postgres")

MakeStore = Callable[[], Store]


@pytest.fixture(params=ENGINES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    if request.param == "sqlite":
        path = str(tmp_path / "capgate.db")
        return lambda: SQLiteStore(path)
    try:
        pg = importlib.import_module("capgate.store.pg")
    except ImportError:
        pytest.skip("PostgreSQL store not built yet")
    url = request.getfixturevalue("postgres").new_database()
    return lambda: pg.PostgresStore(url)


def run(make: MakeStore, test: Callable[[Store], Awaitable[None]]) -> None:
    """Start a store, run `test` with it, close it."""

    async def main() -> None:
        store = make()
        await store.start()
        try:
            await test(store)
        finally:
            await store.close()

    asyncio.run(main())


def run_two(make: MakeStore, test: Callable[[Store, Store], Awaitable[None]]) -> None:
    """Two stores on one database, as two processes (or nodes) would have them."""

    async def main() -> None:
        first, second = make(), make()
        await first.start()
        try:
            await second.start()
            try:
                await test(first, second)
            finally:
                await second.close()
        finally:
            await first.close()

    asyncio.run(main())
