"""The ledger's `rule` column (docs/routing.md) on every engine: written with a settled
entry, a refused one, and read back; kept by the settlement journal."""

from __future__ import annotations

import time
from dataclasses import replace

from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Metric, Scope, ScopeKind
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.keys import display_prefix, key_hash, new_key
from capgate.store import journal
from capgate.store.base import Outcome, RequestInfo, RequestQuery, Reservation, ScopeFields, Store
from store_engines import MakeStore, make_store, run

__all__ = ["make_store"]


def info(request_id: str, key: Scope, rule: str | None) -> RequestInfo:
    return RequestInfo(
        request_id, key.id, "claude-opus-4-5", "p", "claude-haiku-4-5", "messages", True,
        time.time(), rule=rule,
    )  # fmt: skip


def test_the_rule_is_on_the_ledger_entry(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        key_id, raw = new_key()
        key = await store.create_scope(
            ScopeKind.KEY, "k", ScopeFields(limits=(Limit(Metric.REQUESTS, WindowKind.MINUTE, 2),)),
            scope_id=key_id, secret_hash=key_hash(raw), prefix=display_prefix(raw),
        )  # fmt: skip
        outcome = Outcome(200, "ok", Usage(10, 5), 1000, 3.0)
        for request_id, rule in (("r1", "background"), ("r2", None)):
            res = await store.reserve(info(request_id, key, rule), Amounts(1, 10, 5, 1000))
            assert isinstance(res, Reservation)
            await store.settle(res, outcome)
        refused = await store.reserve(info("r3", key, "night"), Amounts(1))
        assert isinstance(refused, Refusal)
        got = {e.request_id: e.rule for e in await store.query_requests(RequestQuery())}
        assert got == {"r1": "background", "r2": None, "r3": "night"}

    run(make_store, test)


def test_the_journal_keeps_the_rule() -> None:
    key = Scope(ScopeKind.KEY, "id1", "k")
    for rule, session in (("background", None), (None, None), ("x", "s1")):
        request = replace(info("r1", key, rule), session=session, prompt=session and "p1")
        res = Reservation("r1", request, (), Amounts(1), key)
        back, _ = journal.decode(journal.encode(res, Outcome(200, "ok", None, 0, 1.0)))
        assert (back.info.rule, back.info.session, back.info.prompt) == (
            rule,
            session,
            session and "p1",
        )
