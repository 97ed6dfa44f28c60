"""The PostgreSQL store's admin side (pg_admin, pg_queries, pg_insights, pg_dashboard,
pg_feed) against SQLite's, on a real PostgreSQL: the same rows seeded into both engines
give the same answers, read for read; the same admin changes give the same scopes, errors
and audit log; admin changes from two stores on one database stay consistent; the live
feed never passes an id that a transaction still holds.

The PostgreSQL databases are created with an ICU collation (`en-US`), where text sorts
differently from SQLite's byte order, so a query that forgets `COLLATE "C"` shows here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

import pgcluster
from capgate.core.engine import Amounts
from capgate.core.limits import Scope, ScopeKind, Status, parse_limit_spec
from capgate.core.money import Usage
from capgate.core.windows import window_at
from capgate.errors import CapgateError
from capgate.store import pg_feed
from capgate.store.base import Outcome, RequestInfo, RequestQuery, Reservation, ScopeFields
from capgate.store.pg import PostgresStore
from capgate.store.records import USAGE_GROUPS, scope_json
from capgate.store.sqlite import SQLiteStore
from conftest import ADMIN_KEY, Capgate, Upstream, gateway_config, start_capgate
from test_dashboard_api import Feed, ask, login

DAY0 = 1_764_979_200.0  # a UTC midnight
NOW = DAY0 + 2 * 86400 + 13 * 3600 + 17.25


def icu_database(postgres: pgcluster.Cluster) -> str:
    name = f"a_{uuid.uuid4().hex[:12]}"
    postgres.sql(
        f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
        "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )
    return postgres.url_of(name)


async def open_pg(url: str, state: Path) -> PostgresStore:
    store = PostgresStore(url, lease_seconds=3600, state_dir=state, clock=lambda: NOW)
    await store.start()
    return store


async def open_sqlite(path: Path) -> SQLiteStore:
    store = SQLiteStore(str(path), lease_seconds=3600, clock=lambda: NOW)
    await store.start()
    return store


async def close(lite: SQLiteStore, pg: PostgresStore) -> None:
    await lite.close()
    await pg.close()


async def fetchval(url: str, statement: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


# -- the same rows in both ------------------------------------------------------------

_COLUMNS = (
    "id", "request_id", "created_at", "key_id", "key_name", "user", "team", "model",
    "provider", "upstream_model", "endpoint", "stream", "status", "outcome", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_nano", "latency_ms",
    "ttft_ms", "attempts", "refusal", "error", "max_tokens_clamped", "flags",
)  # fmt: skip

_REFUSALS = (
    {"code": "limit_exceeded", "limit": {"metric": "cost_usd", "window": "day", "max": "5"}},
    {"code": "limit_exceeded", "limit": {"metric": "requests", "window": "minute", "max": 10}},
    {"code": "limit_exceeded", "limit": {"metric": "concurrent", "window": "total", "max": 2}},
    {"code": "limit_exceeded", "limit": {"metric": "cost_usd", "window": "rolling-5m"}},
    {"code": "paused", "limit": None},
    {"code": "model_not_allowed"},
)
# Names whose byte order differs from a locale's (case, punctuation, accents), and NULL.
_KEYS = (("ka1", "k-alpha"), ("kb2", "K-beta"), ("kc3", "k_gamma"), ("kd4", "é-key"))
_USERS = ("alice", "Bob", "_carol", None)
_TEAMS = ("research", "Zeta", None)
_MODELS = ("claude-sonnet-4", "Claude-Opus", "gpt-5", "_mini")


def ledger_rows(count: int = 240, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for n in range(1, count + 1):
        key_id, key_name = rng.choice(_KEYS)
        outcome = rng.choice(("ok", "ok", "ok", "error", "refused", "lease_expired", "cancelled"))
        refused = outcome == "refused"
        latency = None if rng.random() < 0.05 else round(rng.uniform(1, 900), rng.choice((0, 3, 6)))
        created = DAY0 + rng.uniform(0, 3 * 86400)
        if n == 5:
            created = DAY0 + 86400 - 0.0004  # SQLite's 'unixepoch' rounds it to the next day
        if n == 6:
            created = DAY0 + 86400 - 0.0006  # ... but not this one
        flags = rng.choice((None, None, "over_reservation", "usage_unreadable,late_settlement"))
        rows.append(
            (
                n, f"req-{n % 200}", created, key_id, key_name, rng.choice(_USERS),
                rng.choice(_TEAMS), rng.choice(_MODELS), rng.choice(("anthropic", "openai")),
                rng.choice(_MODELS), "/v1/messages", rng.randint(0, 1),
                429 if refused else rng.choice((200, 200, 500)), outcome,
                0 if refused else rng.randint(0, 5000), 0 if refused else rng.randint(0, 3000),
                rng.randint(0, 900), rng.randint(0, 90),
                0 if refused else rng.randint(0, 10**10), latency,
                None if rng.random() < 0.5 else rng.uniform(1, 90), rng.randint(0, 3),
                orjson.dumps(rng.choice(_REFUSALS)).decode() if refused else None,
                rng.choice((None, "upstream said no")), rng.choice((None, 256)),
                None if refused else flags,
            )
        )  # fmt: skip
    # Groups that cost nothing tie on cost: ordered by name (bytes), NULL first.
    for n, name in enumerate(("b0", "B0", "_0", None), start=count + 1):
        rows.append(
            (
                n, f"free-{n}", DAY0 + 4000 + n, name, name, name, name, name, name, name,
                "/v1/messages", 0, 200, "ok", 1, 1, 0, 0, 0, 5.0, None, 1, None, None, None,
                None,
            )
        )  # fmt: skip
    return rows


async def seed_scopes(store: Any) -> None:
    """Scopes through the store's own admin methods (the audit log follows)."""

    def limits(*specs: str) -> tuple[Any, ...]:
        return tuple(parse_limit_spec(spec) for spec in specs)

    await store.create_scope(
        ScopeKind.ORG, "Org", ScopeFields(limits=limits("cost=100/month")), scope_id="o1"
    )
    await store.create_scope(
        ScopeKind.TEAM,
        "research",
        ScopeFields(org="Org", limits=limits("cost=50/day", "requests=100/rolling-5m")),
        scope_id="t1",
    )
    await store.create_scope(ScopeKind.TEAM, "Zeta", ScopeFields(), scope_id="t2")
    for user in ("alice", "Bob", "_carol"):
        await store.create_scope(
            ScopeKind.USER, user, ScopeFields(limits=limits("cost=7/day")), scope_id=f"u-{user}"
        )
    teams = {"k-alpha": "research", "K-beta": "Zeta", "k_gamma": None, "é-key": "research"}
    users = {"k-alpha": "alice", "K-beta": "Bob", "k_gamma": "_carol", "é-key": "Bob"}
    for key_id, name in _KEYS:
        await store.create_scope(
            ScopeKind.KEY,
            name,
            ScopeFields(
                team=teams[name],
                user=users[name],
                limits=limits("cost=5/day", "requests=10/minute", "opus*:output_tokens=1000/hour"),
                metadata={"owner": name.upper()},
            ),
            scope_id=key_id,
            secret_hash=bytes.fromhex("00ff") + key_id.encode(),
            prefix=f"cg-{key_id}",
        )
    await store.create_scope(
        ScopeKind.PROVIDER,
        "anthropic",
        ScopeFields(limits=limits("cost=1000/month")),
        scope_id="p1",
    )


async def counters_and_reservations(store: Any) -> list[tuple[str, int, int, int]]:
    """Counter rows for every scope's limits at NOW (and a rolling bucket before it)."""
    rows = []
    rng = random.Random(3)
    for kind in ScopeKind:
        for scope in await store.list_scopes(kind):
            for limit in scope.limits:
                window = window_at(limit.window, NOW, scope.timezone)
                counter = scope.counter_id(limit)
                rows.append((counter, window.start, rng.randint(0, 10**9), rng.randint(0, 10**6)))
                if window.read_from is not None:
                    rows.append((counter, window.read_from, rng.randint(0, 10**9), 7))
    return rows


async def seed(lite: SQLiteStore, pg: PostgresStore, path: Path) -> None:
    await seed_scopes(lite)
    await seed_scopes(pg)
    rows = ledger_rows()
    counters = await counters_and_reservations(lite)
    # Held by each store's own process, alive: no sweep takes them.
    held = [(f"res-{n}", NOW - n, "[]", "{}") for n in range(3)]
    names = ", ".join('"user"' if c == "user" else c for c in _COLUMNS)
    conn = sqlite3.connect(path, isolation_level=None)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO requests ({names.replace(chr(34), '')}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))})",
            rows,
        )
        conn.executemany("INSERT INTO counters VALUES (?, ?, ?, ?)", counters)
        conn.executemany(
            "INSERT INTO reservations (id, created_at, charges, info, owner) "
            "VALUES (?, ?, ?, ?, ?)",
            [(*row, lite.owner) for row in held],
        )
        conn.execute("COMMIT")
    conn.close()
    marks = ", ".join(f"${n}" for n in range(1, len(_COLUMNS) + 1))
    pconn = await asyncpg.connect(pg.url)
    try:
        await pconn.executemany(f"INSERT INTO requests ({names}) VALUES ({marks})", rows)
        await pconn.execute(
            "SELECT setval(pg_get_serial_sequence('requests', 'id'), $1)", len(rows)
        )
        await pconn.executemany(
            "INSERT INTO counters (counter, window_start, settled, reserved) "
            "VALUES ($1, $2, $3, $4)",
            counters,
        )
        await pconn.executemany(
            "INSERT INTO reservations (id, created_at, charges, info, owner) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(*row, pg.owner) for row in held],
        )
    finally:
        await pconn.close()


def shown(scopes: list[Scope]) -> list[dict[str, Any]]:
    return [scope_json(scope) for scope in scopes]


# -- reads ------------------------------------------------------------------------------

QUERIES = (
    RequestQuery(),
    RequestQuery(limit=7),
    RequestQuery(limit=5, cursor=100),
    RequestQuery(key="K-beta"),
    RequestQuery(team="research", since=DAY0 + 3600, until=DAY0 + 86400),
    RequestQuery(user="_carol", model="gpt-5"),
    RequestQuery(provider="openai", outcome="refused"),
    RequestQuery(status=500),
    RequestQuery(request_id="req-17"),
    RequestQuery(since=DAY0 + 86400 - 0.0004, until=DAY0 + 86400 + 600),
    RequestQuery(key="nobody"),
)


def test_reads_equal_sqlite_for_the_same_rows(postgres: pgcluster.Cluster, tmp_path: Path) -> None:
    async def test() -> None:
        path = tmp_path / "s.db"
        lite, pg = await open_sqlite(path), await open_pg(icu_database(postgres), tmp_path)
        try:
            await seed(lite, pg, path)
            for kind in ScopeKind:
                assert shown(await pg.list_scopes(kind)) == shown(await lite.list_scopes(kind))
                for scope in await lite.list_scopes(kind):
                    got = await pg.get_scope(kind, scope.name)
                    assert scope_json(got) == scope_json(scope)
                    assert await pg.members(kind, scope.name) == await lite.members(
                        kind, scope.name
                    )
                    assert await pg.counters(got, NOW) == await lite.counters(scope, NOW)
            for query in QUERIES:
                assert await pg.query_requests(query) == await lite.query_requests(query), query
                assert await pg.summary(query) == await lite.summary(query), query
                for group in (None, "key", "user", "model", "outcome"):
                    for grain in (60, 900):
                        pg_rows = await pg.series_rows(query, group, grain)
                        lite_rows = await lite.series_rows(query, group, grain)
                        assert sorted(pg_rows, key=repr) == sorted(lite_rows, key=repr)
            for group in USAGE_GROUPS:
                for since, until in ((None, None), (DAY0 + 7200, DAY0 + 2 * 86400)):
                    expected = await lite.usage(group, since, until)
                    assert await pg.usage(group, since, until) == expected, group
            days = [row.group for row in await pg.usage("day", None, None)]
            assert len(days) == 3  # the row 0.4 ms before midnight counted on the next day
            assert await pg.key_activity(DAY0 + 86400, DAY0) == await lite.key_activity(
                DAY0 + 86400, DAY0
            )
            for ledger in (True, False):
                a, b = (
                    await pg.metrics_snapshot(NOW, ledger),
                    await lite.metrics_snapshot(NOW, ledger),
                )
                assert (a.reservations_held, a.ledger) == (b.reservations_held, b.ledger)
                assert [(scope_json(s), u) for s, u in a.limits] == [
                    (scope_json(s), u) for s, u in b.limits
                ]
            assert await pg.audit(5) == await lite.audit(5)
            assert await pg.audit(1000) == await lite.audit(1000)
            assert await pg.events_after(0, 0) == await lite.events_after(0, 0)
            assert await pg.events_after(230, 3, limit=4) == await lite.events_after(230, 3, 4)
            assert await pg.latest_ids() == await lite.latest_ids()
        finally:
            await close(lite, pg)

    asyncio.run(test())


# -- admin changes ----------------------------------------------------------------------


async def _outcome(call: Awaitable[Any]) -> Any:
    """What an admin call gives: its result (scopes as the admin API shows them), or its
    error's type and message."""
    try:
        result = await call
    except CapgateError as exc:
        return type(exc).__name__, str(exc)
    if isinstance(result, Scope):
        return scope_json(result)
    return result


async def admin_script(store: Any) -> list[Any]:
    """The same admin changes, good and bad, on either engine."""
    key, team, user, org = ScopeKind.KEY, ScopeKind.TEAM, ScopeKind.USER, ScopeKind.ORG
    five = (parse_limit_spec("cost=5/day"),)
    steps: list[Awaitable[Any]] = [
        store.create_scope(team, "research", ScopeFields(org="nope")),  # no such org
        store.create_scope(org, "Org", ScopeFields(), scope_id="o"),
        store.create_scope(team, "research", ScopeFields(org="Org", limits=five), scope_id="t"),
        store.create_scope(team, "research", ScopeFields()),  # exists
        store.create_scope(user, "alice", ScopeFields(), scope_id="u"),
        store.create_scope(key, "k1", ScopeFields(team="research", user="alice"), scope_id="i1"),
        store.create_scope(key, "k2", ScopeFields(team="reserach"), scope_id="i2"),  # typo
        store.create_scope(key, "K0", ScopeFields(team="research"), scope_id="i0"),
        store.update_scope(key, "k1", ScopeFields(limits=five, metadata={"a": [1, 2]})),
        store.update_scope(key, "k1", ScopeFields(clear=frozenset({"user"}))),
        store.update_scope(key, "k1", ScopeFields(clear=frozenset({"models"}))),  # not clearable
        store.update_scope(key, "missing", ScopeFields()),
        store.set_status(key, "k1", Status.PAUSED),
        store.set_status(key, "k1", Status.ACTIVE),
        store.set_status(key, "K0", Status.REVOKED),
        store.set_status(key, "K0", Status.ACTIVE),  # revocation is final
        store.reset_usage(team, "research"),
        store.reset_usage(team, "nobody"),
        store.delete_scope(team, "research"),  # still named by k1 and K0
        store.delete_scope(org, "Org"),  # still named by research
        store.members(team, "research"),
        store.members(org, "Org"),
        store.members(user, "alice"),
        store.members(key, "k1"),
        store.delete_scope(key, "K0"),
        store.delete_scope(key, "K0"),  # gone
        store.update_scope(key, "k1", ScopeFields(team="Zeta")),  # no such team
    ]
    out = [await _outcome(step) for step in steps]
    out.append(shown(await store.list_scopes(key)))
    out.append(shown(await store.list_scopes(team)))
    return out


def test_admin_changes_equal_sqlite(postgres: pgcluster.Cluster, tmp_path: Path) -> None:
    async def test() -> None:
        lite, pg = (
            await open_sqlite(tmp_path / "s.db"),
            await open_pg(icu_database(postgres), tmp_path),
        )
        try:
            assert await admin_script(pg) == await admin_script(lite)
            assert await pg.audit(1000) == await lite.audit(1000)
            version = await pg.get_meta("config_version")
            assert version == await lite.get_meta("config_version")
            assert version == str(len(await pg.audit(1000)))  # one bump per change, no more
        finally:
            await close(lite, pg)

    asyncio.run(test())


def test_reset_usage_keeps_holds_and_other_scopes(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    async def test() -> None:
        path = tmp_path / "s.db"
        lite, pg = await open_sqlite(path), await open_pg(icu_database(postgres), tmp_path)
        try:
            await seed(lite, pg, path)
            for store in (lite, pg):
                await store.reset_usage(ScopeKind.KEY, "k-alpha")
            alpha = await pg.get_scope(ScopeKind.KEY, "k-alpha")
            usage = await pg.counters(alpha, NOW)
            assert [u.used for u in usage] == [0, 0, 0]
            assert all(u.reserved > 0 for u in usage)  # what requests hold stays
            for kind in ScopeKind:
                for scope in await lite.list_scopes(kind):
                    assert await pg.counters(scope, NOW) == await lite.counters(scope, NOW)
            beta = await pg.get_scope(ScopeKind.KEY, "K-beta")
            assert any(u.used for u in await pg.counters(beta, NOW))
        finally:
            await close(lite, pg)

    asyncio.run(test())


# -- sessions, settings, meta, the login throttle ---------------------------------------


async def small_writes(store: Any) -> list[Any]:
    out: list[Any] = []
    session = await store.create_session(b"\x01" * 32, "admin", "tag", 60.0)
    out += [session, await store.get_session(b"\x01" * 32), await store.get_session(b"\x02")]
    await store.create_session(b"\x03" * 32, "admin", "tag", -1.0)  # born expired
    out.append(await store.get_session(b"\x03" * 32))
    await store.delete_session(b"\x01" * 32)
    out.append(await store.get_session(b"\x01" * 32))
    out.append(await store.get_settings())
    await store.put_settings({"timezone": "Europe/Paris"}, {"tz": "UTC"}, {"tz": "Paris"}, "me")
    out.append(await store.get_settings())
    out += [await store.get_meta("admin_key_hash"), await store.get_meta("config_version")]
    await store.set_meta("admin_key_hash", "abc")
    await store.set_meta("admin_key_hash", "def")
    out.append(await store.get_meta("admin_key_hash"))
    for n in range(10):
        await store.login_failed("10.0.0.1", NOW - 500 + n)
        out.append(await store.login_blocked("10.0.0.1", NOW))
    await store.login_failed("10.0.0.2", NOW - 700)
    out.append(await store.login_blocked("10.0.0.1", NOW + 101))  # the oldest left the window
    out.append(await store.login_blocked("10.0.0.2", NOW))
    await store.login_succeeded("10.0.0.1")
    out.append(await store.login_blocked("10.0.0.1", NOW))
    out.append(await store.audit(10))
    return out


def test_sessions_settings_meta_and_throttle_equal_sqlite(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    async def test() -> None:
        lite, pg = (
            await open_sqlite(tmp_path / "s.db"),
            await open_pg(icu_database(postgres), tmp_path),
        )
        try:
            got = await small_writes(pg)
            assert got == await small_writes(lite)
            assert got[18:22] == [None, pytest.approx(100.0), None, None]  # the 10th blocks
            left = await fetchval(pg.url, "SELECT COUNT(*) FROM login_failures")
            assert left == 1  # 10.0.0.2's, older than the window, goes with the next failure
        finally:
            await close(lite, pg)

    asyncio.run(test())


# -- two stores on one database -----------------------------------------------------------


def test_admin_changes_from_two_stores_stay_consistent(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    async def test() -> None:
        url = icu_database(postgres)
        one, two = await open_pg(url, tmp_path / "a"), await open_pg(url, tmp_path / "b")
        try:
            await one.create_scope(ScopeKind.TEAM, "t", ScopeFields())
            # The same name created 20 times at once from both: exactly one wins.
            made = await asyncio.gather(
                *(
                    _outcome(store.create_scope(ScopeKind.KEY, "same", ScopeFields(team="t")))
                    for store in (one, two) * 10
                )
            )
            assert sum(isinstance(m, dict) for m in made) == 1
            assert all(m[0] == "Conflict" for m in made if not isinstance(m, dict))
            # A key naming team x, created while x is deleted elsewhere: never a dangling
            # name (the delete is refused, or the create is).
            for n in range(15):
                await one.create_scope(ScopeKind.TEAM, f"x{n}", ScopeFields())
                created, deleted = await asyncio.gather(
                    _outcome(one.create_scope(ScopeKind.KEY, f"k{n}", ScopeFields(team=f"x{n}"))),
                    _outcome(two.delete_scope(ScopeKind.TEAM, f"x{n}")),
                )
                assert isinstance(created, dict) != (deleted is None), (created, deleted)
            # Updates from both: each audit entry's before is the previous one's after.
            await asyncio.gather(
                *(
                    store.update_scope(
                        ScopeKind.TEAM, "t", ScopeFields(metadata={"n": n}, timezone="UTC")
                    )
                    for n, store in enumerate((one, two) * 10)
                )
            )
            chain = [a for a in reversed(await one.audit(1000)) if a.target == "team:t"]
            assert len(chain) == 21
            for earlier, later in itertools.pairwise(chain):
                assert later.before == earlier.after
            audits = await two.audit(1000)
            version = await two.get_meta("config_version")
            assert version == str(len(audits))  # one bump per committed change
            keys = {s.name: s for s in await two.list_scopes(ScopeKind.KEY)}
            teams = {s.name for s in await two.list_scopes(ScopeKind.TEAM)}
            assert all(k.extra["team"] in teams for k in keys.values())
        finally:
            await one.close()
            await two.close()

    asyncio.run(test())


# -- the live feed ----------------------------------------------------------------------


def test_live_feed_never_passes_an_id_still_in_flight(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    async def test() -> None:
        url = icu_database(postgres)
        pg = await open_pg(url, tmp_path)
        insert = (
            "INSERT INTO requests (request_id, created_at, status, outcome) "
            "VALUES ($1, 1.0, 200, 'ok') RETURNING id"
        )
        slow = await asyncpg.connect(url)
        fast = await asyncpg.connect(url)
        try:
            for n in range(3):
                await fast.fetchval(insert, f"r{n}")
            assert await pg.latest_ids() == (3, 0)
            held = slow.transaction()
            await held.start()
            assert await slow.fetchval(insert, "slow") == 4  # not committed yet
            assert await fast.fetchval(insert, "fast") == 5  # committed
            for _ in range(4):  # across several grace periods: 4 may still come
                batch = await pg.events_after(3, 0)
                assert batch.entries == ()
                assert (await pg.latest_ids())[0] == 3
                await asyncio.sleep(pg_feed.GRACE_S)
            await held.commit()
            batch = await pg.events_after(3, 0)
            assert [e.request_id for e in batch.entries] == ["slow", "fast"]
            # A rolled-back id never comes: after the grace the feed goes past it.
            gone = slow.transaction()
            await gone.start()
            assert await slow.fetchval(insert, "undone") == 6
            await gone.rollback()
            assert await fast.fetchval(insert, "after") == 7
            deadline = asyncio.get_running_loop().time() + 5
            while not (batch := await pg.events_after(5, 0)).entries:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            assert [e.id for e in batch.entries] == [7]
            assert await pg.latest_ids() == (7, 0)
        finally:
            await slow.close()
            await fast.close()
            await pg.close()

    asyncio.run(test())


# -- two gateway nodes on one database, through HTTP -----------------------------------


def _node(tmp_path: Path, upstream: Upstream, url: str, name: str) -> Capgate:
    return start_capgate(
        tmp_path,
        gateway_config(upstream),
        args=("--database-url", url),
        env={"CAPGATE_STATE_DIR": str(tmp_path / name)},
    )


def _shared_metrics(node: Capgate) -> list[str]:
    """The /metrics lines read from the database (not this process's own counters)."""
    text = httpx.get(node.url + "/metrics", timeout=10).text
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(("capgate_limit_", "capgate_reservations_held", "capgate_ledger_"))
    )


def test_the_admin_side_across_two_nodes(
    postgres: pgcluster.Cluster, upstream: Upstream, tmp_path: Path
) -> None:
    url = postgres.new_database()
    one, two = _node(tmp_path, upstream, url, "one"), _node(tmp_path, upstream, url, "two")
    feed = Feed(one.url, {"authorization": f"Bearer {ADMIN_KEY}"})
    try:
        team = two.admin("POST", "/admin/teams", json={"name": "t1", "limits": [
            {"metric": "requests", "window": "day", "max": 3}]})  # fmt: skip
        assert team.status_code == 201, team.text
        key = one.create_key("k1", team="t1")  # the team two made, checked on one
        assert ask(two.url, key).status_code == 200
        assert ask(one.url, key).status_code == 200
        # One's feed shows what two recorded and changed.
        feed.wait_for(lambda e: e[0] == "request" and e[1]["key"] == "k1")
        feed.wait_for(lambda e: e[0] == "audit" and e[1]["target"] == "team:t1")
        assert two.admin("DELETE", "/admin/teams/t1").status_code == 409  # k1 names it
        for path in ("/admin/requests", "/admin/usage?group_by=key", "/admin/summary",
                     "/admin/audit", "/admin/keys/k1", "/admin/teams/t1", "/admin/keys"):  # fmt: skip
            assert one.admin("GET", path).json() == two.admin("GET", path).json(), path
        assert _shared_metrics(one) == _shared_metrics(two)
        used = [line for line in _shared_metrics(one) if line.startswith("capgate_limit_used")]
        assert any('scope="t1"' in line and line.endswith(" 2.0") for line in used), used
        # A dashboard session opened on one works on two; failures count on both.
        client, _ = login(one.url)
        cookie = client.cookies["capgate_session"]
        client.close()
        with httpx.Client(base_url=two.url, trust_env=False, timeout=30) as other:
            other.cookies.set("capgate_session", cookie)
            assert other.get("/admin/keys").status_code == 200
        for node in (one, two) * 5:
            with httpx.Client(base_url=node.url, trust_env=False, timeout=30) as http:
                assert http.post("/dashboard/login", json={"password": "x"}).status_code == 401
        with httpx.Client(base_url=one.url, trust_env=False, timeout=30) as http:
            assert http.post("/dashboard/login", json={"password": ADMIN_KEY}).status_code == 429
        # A runtime setting changed on one is what two shows.
        changed = one.admin("PATCH", "/admin/settings", json={"timezone": "Europe/Berlin"})
        assert changed.status_code == 200, changed.text
        assert two.admin("GET", "/admin/settings").json()["timezone"] == "Europe/Berlin"
    finally:
        feed.close()
        one.close()
        two.close()


@contextlib.asynccontextmanager
async def two_nodes(url: str, tmp_path: Path) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two nodes are: each its own state folder."""
    one = PostgresStore(url, state_dir=tmp_path / "one")
    two = PostgresStore(url, state_dir=tmp_path / "two")
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


WORST = Amounts(1, 1000, 2000, 30_000_000)
USED = Outcome(200, "ok", Usage(100, 50), 1_000_000, 12.5, 3.0)


async def serve_until(
    store: PostgresStore, key: Scope, lane: int, stop: asyncio.Event, refusals: bool
) -> int:
    """Reserve and settle requests of `key` on `store` without pause until `stop`: how
    many were made. `refusals`: a refusal is expected now and then (else it fails)."""
    n = 0
    while not stop.is_set():
        n += 1
        request = RequestInfo(f"r{lane}-{n}", key.id, "m", "anthropic", "m", "messages", False, NOW)
        held = await store.reserve(request, WORST)
        if isinstance(held, Reservation):
            await store.settle(held, USED)
        else:
            assert refusals, held
    return n


def test_admin_changes_under_load_from_another_node(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    """Node one reserves and settles without pause while node two pauses, resumes, resets
    and changes the limits of the same key and team: no deadlock, no error on either
    side, every request one ledger entry, nothing left held."""

    async def test() -> None:
        async with two_nodes(postgres.new_database(), tmp_path) as (one, two):
            day = (parse_limit_spec("cost=1000/day"), parse_limit_spec("requests=100000/day"))
            await two.create_scope(ScopeKind.TEAM, "t", ScopeFields(limits=day))
            key = await two.create_scope(
                ScopeKind.KEY, "k", ScopeFields(team="t", limits=day), scope_id="kid"
            )
            stop = asyncio.Event()

            async def changes() -> None:
                for n in range(12):
                    await two.set_status(ScopeKind.KEY, "k", Status.PAUSED)
                    await two.reset_usage(ScopeKind.TEAM, "t")
                    await two.set_status(ScopeKind.KEY, "k", Status.ACTIVE)
                    await two.reset_usage(ScopeKind.KEY, "k")
                    limits = (parse_limit_spec(f"cost={1000 + n}/day"), day[1])
                    await two.update_scope(ScopeKind.TEAM, "t", ScopeFields(limits=limits))
                stop.set()

            lanes = asyncio.gather(*(serve_until(one, key, n, stop, True) for n in range(8)))
            await changes()
            made = sum(await lanes)
            await one.flush()
            entries = await one.query_requests(RequestQuery(limit=100_000))
            assert len(entries) == made and made > 50
            assert {e.outcome for e in entries} <= {"ok", "refused"}
            assert any(e.outcome == "refused" for e in entries)  # while paused
            assert (await one.metrics_snapshot(NOW, ledger=False)).reservations_held == 0
            for usage in await two.counters(await two.get_scope(ScopeKind.KEY, "k"), time.time()):
                assert usage.reserved == 0
            assert len(await two.audit(1000)) == 2 + 5 * 12  # every change, once

    asyncio.run(test())


def test_keys_created_in_bulk_on_another_node_do_not_fail_requests(
    postgres: pgcluster.Cluster, tmp_path: Path
) -> None:
    """An admin script creates hundreds of keys on node two (each a configuration change
    every node must see) while node one serves one key without pause: each of node one's
    reservations may have to plan again on the new configuration, but none fails for it
    (it used to give up after ten stale plans: a 503 for a change unrelated to its key)."""

    async def test() -> None:
        async with two_nodes(postgres.new_database(), tmp_path) as (one, two):
            day = (parse_limit_spec("requests=1000000/day"),)
            key = await two.create_scope(
                ScopeKind.KEY, "k", ScopeFields(limits=day), scope_id="kid"
            )
            stop = asyncio.Event()

            async def creates(lane: int) -> None:
                for n in range(60):
                    await two.create_scope(ScopeKind.KEY, f"bulk-{lane}-{n}", ScopeFields())

            lanes = asyncio.gather(*(serve_until(one, key, n, stop, False) for n in range(8)))
            try:
                await asyncio.gather(*(creates(lane) for lane in range(6)))
            finally:
                stop.set()
            made = sum(await lanes)
            await one.flush()
            assert made > 50
            assert len(await one.query_requests(RequestQuery(limit=100_000))) == made
            assert len(await one.list_scopes(ScopeKind.KEY)) == 1 + 6 * 60

    asyncio.run(test())
