"""Helpers for the in-process PostgresStore tests: scopes written straight into the
database (as an admin change does: bump the configuration version), a node killed
without a goodbye, and the books (counters against the ledger)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from capgate.core.limits import Limit
from capgate.store.pg import PostgresStore
from capgate.store.pg_schema import migrate


async def add_scope(
    url: str,
    kind: str,
    name: str,
    limits: tuple[Limit, ...] = (),
    *,
    team: str | None = None,
    clamp: bool = True,
    status: str = "active",
) -> str:
    """Create (or replace) a scope; its id."""
    scope_id = secrets.token_hex(6)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)  # as a node's start does
        async with conn.transaction():
            now = time.time()
            await conn.execute("DELETE FROM scopes WHERE kind=$1 AND name=$2", kind, name)
            await conn.execute(
                'INSERT INTO scopes (kind, id, name, status, limits, team, created_at, '
                "updated_at, clamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                kind, scope_id, name, status,
                orjson.dumps([limit.to_json() for limit in limits]).decode(), team, now,
                int(clamp),
            )  # fmt: skip
            await conn.execute(
                "UPDATE meta SET v = (v::bigint + 1)::text WHERE k = 'config_version'"
            )
    finally:
        await conn.close()
    return scope_id


async def sql(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


async def execute(url: str, statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


async def books(url: str) -> dict[str, int]:
    """What the ledger and the counters say of cost, and what is still held."""
    rows = await sql(
        url,
        "SELECT (SELECT coalesce(sum(cost_nano), 0) FROM requests) AS ledger, "
        "(SELECT coalesce(sum(settled), 0) FROM counters WHERE counter LIKE 'key:%:cost%') "
        "AS counted, (SELECT coalesce(sum(reserved), 0) FROM counters) AS reserved, "
        "(SELECT count(*) FROM reservations) AS reservations, "
        "(SELECT count(*) FROM requests) AS entries",
    )
    return {k: int(v) for k, v in dict(rows[0]).items()}


def node(url: str, state: Path, **options: Any) -> PostgresStore:
    return PostgresStore(url, state_dir=state, statement_timeout_s=5.0, **options)


async def crash(store: PostgresStore) -> None:
    """Stop a node as `kill -9` would: no settlement, no goodbye; its connections drop
    (the liveness lock with them) and its local lock file is freed."""
    for task in (store._heartbeat, store._lifeline._task):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    store._closing = True
    for retry in store._retries.values():
        if retry is not None:
            retry.cancel()
    backend = None
    if store._lifeline._conn is not None:
        backend = store._lifeline._conn.get_server_pid()
        store._lifeline._conn.terminate()
    if store._pool is not None:
        store._pool.terminate()
    store._journal.close()
    store._alive.release()
    # The server frees the liveness lock once its backend has seen the socket close and
    # exited, not when our side closes it: wait for that, as a sweeper would see it.
    deadline = time.monotonic() + 10
    while backend is not None:
        rows = await sql(store.url, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend)
        if rows[0][0] == 0:
            break
        assert time.monotonic() < deadline, "the crashed node's backend did not exit"
        await asyncio.sleep(0.02)
