"""Routing and the call path in-process, with fake providers (`capgate.providers.fake`):
retries, fallbacks, re-reservation at another price, a stream cut before and after its
first byte, a client that goes away, refusals in each door's dialect, and the seams
where route policies and answer caches plug in. A real SQLite store, a real gateway
served by aiohttp in this process; the router's rng is seeded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from capgate.config import RouteConfig, ServerConfig, TargetConfig
from capgate.core.engine import Refusal
from capgate.core.limits import Limit, Metric, Scope, ScopeKind
from capgate.core.money import Usage
from capgate.core.windows import WindowKind
from capgate.errors import LimitExceeded, PermissionDenied, UpstreamFailed
from capgate.http.call import first_byte_deadlines
from capgate.http.dialects import CLAUDE_CODE, CODEX, for_client
from capgate.http.extensions import CachedAnswer, CallFacts, Extensions, FinalAnswer
from capgate.http.gateway import Gateway
from capgate.http.generate import GenerateAPI
from capgate.keys import key_hash, new_key
from capgate.pricing import PricingTable
from capgate.provider_config import ProviderConfig
from capgate.providers.base import Endpoint
from capgate.providers.fake import FakeAnswer, FakeProvider
from capgate.routing import Breakers, Plan, Router
from capgate.store.base import RequestQuery, ScopeFields
from capgate.store.records import LedgerEntry
from capgate.store.sqlite import SQLiteStore

SONNET, HAIKU = "claude-sonnet-4-5", "claude-haiku-4-5"
PRICES = PricingTable.load()


def message(model: str, text: str = "hi", inp: int = 10, out: int = 5) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": inp, "output_tokens": out},
        }
    )  # fmt: skip


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def stream_events(model: str, inp: int = 10, out: int = 5) -> list[bytes]:
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
             "content": [], "usage": {"input_tokens": inp, "output_tokens": 1}}  # fmt: skip
    return [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": out}}),
        event("message_stop", {}),
    ]  # fmt: skip


def ok(endpoint: Endpoint, body: bytes) -> FakeAnswer:
    """A well-behaved provider: the asked model answers, streamed when asked."""
    data = orjson.loads(body)
    if data.get("stream"):
        return FakeAnswer(pieces=stream_events(data["model"]), content_type="text/event-stream")
    return FakeAnswer(pieces=[message(data["model"])])


def failing(status: int) -> Callable[[Endpoint, bytes], FakeAnswer]:
    err = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "boom"}})
    return lambda endpoint, body: FakeAnswer(status, [err])


@dataclass
class World:
    client: TestClient[Any, Any]
    store: SQLiteStore
    gateway: Gateway
    key: str  # the caller's raw key

    async def post(self, path: str, body: dict[str, Any], **headers: str) -> Any:
        headers = {"authorization": f"Bearer {self.key}", **headers}
        return await self.client.post(path, json=body, headers=headers)

    async def ledger(self) -> list[LedgerEntry]:
        await self.gateway.drain()
        return list(await self.store.query_requests(RequestQuery(key="k")))

    async def settled(self, tries: int) -> list[LedgerEntry]:
        """The ledger once it has an entry (a request the client left settles after)."""
        for _ in range(tries):
            entries = await self.ledger()
            if entries:
                return entries
            await asyncio.sleep(0.01)
        return []


@dataclass
class Setup:
    providers: Sequence[FakeProvider]
    routes: list[RouteConfig] = field(default_factory=list)
    limits: tuple[Limit, ...] = ()
    extensions: Extensions | None = None
    cooldown_after: int = 3


def run(setup: Setup, tmp_path: Path, test: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "capgate.db"))
        await store.start()
        key_id, raw = new_key()
        await store.create_scope(
            ScopeKind.KEY, "k", ScopeFields(limits=setup.limits), scope_id=key_id,
            secret_hash=key_hash(raw),
        )  # fmt: skip
        settings = ServerConfig(retry_backoff_s=0.001)
        configs = {
            p.name: ProviderConfig(
                name=p.name, type="anthropic", cooldown_after=setup.cooldown_after
            )
            for p in setup.providers
        }
        providers = {p.name: p for p in setup.providers}
        router = Router(setup.routes, providers, configs, settings, rng=random.Random(7))
        gateway = Gateway(
            store, router, PRICES, settings, extensions=setup.extensions, rng=random.Random(7)
        )
        app = web.Application()
        app.add_routes(gateway.routes())
        app.add_routes(GenerateAPI(gateway, settings).routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            await test(World(client, store, gateway, raw))
        finally:
            await client.close()
            await gateway.drain()
            await store.close()

    asyncio.run(main())


def route(
    *targets: str, fallbacks: Sequence[tuple[str, str]] = (), retries: int = 0
) -> RouteConfig:
    return RouteConfig(
        match="*",
        targets=[TargetConfig(provider=t) for t in targets],
        fallbacks=[TargetConfig(provider=p, model=m) for p, m in fallbacks],
        retries=retries,
    )


ASK = {"model": SONNET, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def cost(model: str, inp: int, out: int) -> int:
    price = PRICES.lookup(model)
    assert price is not None
    return price.cost_nano(Usage(inp, out))


# -- retries and fallbacks ---------------------------------------------------------------


def test_a_retryable_failure_is_retried_on_the_same_target(tmp_path: Path) -> None:
    answers = iter([failing(529), ok])
    a = FakeProvider("a", lambda e, b: next(answers)(e, b))

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", ASK)
        assert response.status == 200, await response.text()
        (entry,) = await w.ledger()
        assert (entry.attempts, entry.outcome, entry.provider) == (2, "ok", "a")
        assert entry.cost_nano == cost(SONNET, 10, 5)  # the failed try is not billed

    run(Setup([a], [route("a", retries=1)]), tmp_path, test)
    assert len(a.sent) == 2


def test_a_fallback_at_another_price_is_reserved_and_charged_at_its_own(tmp_path: Path) -> None:
    a, b = FakeProvider("a", failing(500)), FakeProvider("b", ok)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", ASK)
        assert response.status == 200
        assert orjson.loads(await response.read())["model"] == HAIKU
        (entry,) = await w.ledger()
        assert (entry.provider, entry.upstream_model, entry.attempts) == ("b", HAIKU, 2)
        assert entry.cost_nano == cost(HAIKU, 10, 5)

    run(Setup([a, b], [route("a", fallbacks=[("b", HAIKU)])]), tmp_path, test)
    assert orjson.loads(b.sent[0].body)["model"] == HAIKU


def test_a_fallback_the_budget_cannot_pay_is_not_called(tmp_path: Path) -> None:
    # $0.01 pays Haiku's worst case for this request, not Sonnet's (3x dearer).
    budget = (Limit(Metric.COST_USD, WindowKind.DAY, 10_000_000),)
    a, b = FakeProvider("a", failing(500)), FakeProvider("b", ok)
    ask = {**ASK, "model": HAIKU, "max_tokens": 1500}

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", ask)
        assert response.status == 500
        (entry,) = await w.ledger()
        assert "refused" in (entry.error or "") and entry.cost_nano == 0

    run(Setup([a, b], [route("a", fallbacks=[("b", SONNET)])], budget), tmp_path, test)
    assert b.sent == []


def test_a_stream_cut_before_its_first_byte_falls_over(tmp_path: Path) -> None:
    broken = FakeAnswer(pieces=[UpstreamFailed("reset")], content_type="text/event-stream")
    a, b = FakeProvider("a", lambda e, body: broken), FakeProvider("b", ok)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        text = await response.text()
        assert response.status == 200 and "message_stop" in text
        (entry,) = await w.ledger()
        assert (entry.provider, entry.outcome, entry.attempts) == ("b", "ok", 2)

    run(Setup([a, b], [route("a", fallbacks=[("b", SONNET)])]), tmp_path, test)


def test_a_stream_cut_after_its_first_byte_is_charged_what_was_relayed(tmp_path: Path) -> None:
    events = stream_events(SONNET, inp=10)
    cut = FakeAnswer(
        pieces=[*events[:3], UpstreamFailed("reset")], content_type="text/event-stream"
    )
    a, b = FakeProvider("a", lambda e, body: cut), FakeProvider("b", ok)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        text = await response.text()
        assert "message_start" in text and "message_stop" not in text
        (entry,) = await w.ledger()
        assert (entry.provider, entry.outcome, entry.input_tokens) == ("a", "error", 10)
        assert 0 < entry.output_tokens <= 100

    run(Setup([a, b], [route("a", fallbacks=[("b", SONNET)])]), tmp_path, test)
    assert b.sent == []  # after the first byte, no fallback


def test_a_stream_that_surely_generated_more_is_charged_its_worst_case(tmp_path: Path) -> None:
    """A break that says all was generated (a CLI run stopped midway) is charged the
    reservation, not what was relayed."""
    events = stream_events(SONNET, inp=10)
    stopped = UpstreamFailed("stopped", charge_all=True)
    cut = FakeAnswer(pieces=[*events[:3], stopped], content_type="text/event-stream")
    a = FakeProvider("a", lambda e, body: cut)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        assert "message_stop" not in await response.text()
        (entry,) = await w.ledger()
        assert (entry.outcome, entry.error, entry.output_tokens) == ("error", "stopped", 100)

    run(Setup([a]), tmp_path, test)


@dataclass
class CompleteAnswer(FakeAnswer):
    """An answer read to its end already (`complete`, as a pooled connection's): its
    final events wait to leave with the end of the stream, in one write."""

    complete: bool = True


def test_final_events_pass_on_when_the_upstream_breaks_off_after_them(tmp_path: Path) -> None:
    pieces = [*stream_events(SONNET), UpstreamFailed("reset")]
    broken = CompleteAnswer(pieces=pieces, content_type="text/event-stream")
    a = FakeProvider("a", lambda e, body: broken)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        assert "message_stop" in await response.text()
        (entry,) = await w.ledger()
        assert (entry.outcome, entry.input_tokens, entry.output_tokens) == ("ok", 10, 5)

    run(Setup([a]), tmp_path, test)


def test_a_silent_provider_times_out_and_its_worst_case_is_carried(tmp_path: Path) -> None:
    silent = FakeAnswer(pieces=stream_events(SONNET), content_type="text/event-stream", delay_s=5)
    a = FakeProvider("a", lambda e, body: silent, first_byte_timeout_s=0.05)
    b = FakeProvider("b", ok)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        assert response.status == 200
        await response.read()
        (entry,) = await w.ledger()
        # The first attempt may have been billed upstream: its worst case is kept.
        assert entry.provider == "b" and entry.cost_nano > cost(SONNET, 10, 5)
        assert entry.output_tokens == 100 + 5

    run(Setup([a, b], [route("a", fallbacks=[("b", SONNET)])]), tmp_path, test)


def test_a_client_gone_midstream_stops_the_upstream_and_is_charged(tmp_path: Path) -> None:
    release = asyncio.Event()
    answers: list[FakeAnswer] = []

    async def slow(endpoint: Endpoint, body: bytes) -> FakeAnswer:
        class Slow(FakeAnswer):
            async def chunks(self) -> AsyncIterator[bytes]:
                events = stream_events(SONNET)
                yield events[0]
                await release.wait()
                for piece in events[1:]:
                    await asyncio.sleep(0.01)
                    yield piece

        answer = Slow(content_type="text/event-stream")
        answers.append(answer)
        return answer

    a = FakeProvider("a", slow)

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", {**ASK, "stream": True})
        assert b"message_start" in await response.content.readany()
        response.close()  # the client goes away
        release.set()
        (entry,) = await w.settled(200)
        assert (entry.status, entry.outcome) == (499, "cancelled")
        assert entry.input_tokens == 10
        assert answers[0].closed

    run(Setup([a]), tmp_path, test)


def test_breakers_cool_a_failing_provider_down(tmp_path: Path) -> None:
    a, b = FakeProvider("a", failing(500)), FakeProvider("b", ok)

    async def test(w: World) -> None:
        for _ in range(3):
            assert (await w.post("/v1/messages", ASK)).status == 200
        assert len(a.sent) == 2  # cooled down after 2 failures in a row
        assert len(b.sent) == 3

    run(Setup([a, b], [route("a", fallbacks=[("b", SONNET)])], cooldown_after=2), tmp_path, test)


# -- refusals, each in its door's dialect ------------------------------------------------

NOTHING = (Limit(Metric.REQUESTS, WindowKind.DAY, 0),)


def test_a_refusal_is_rendered_once_in_each_dialect(tmp_path: Path) -> None:
    a = FakeProvider("a", ok, frozenset({"anthropic", "openai"}))
    chat = {"model": SONNET, "messages": [{"role": "user", "content": "hi"}]}

    async def test(w: World) -> None:
        response = await w.post("/v1/messages", ASK)
        assert response.status == 402
        data = await response.json()
        assert data["type"] == "error" and data["error"]["type"] == "billing_error"
        for path, body in (
            ("/v1/chat/completions", chat),
            ("/v1/responses", {"model": SONNET, "input": "hi"}),
        ):
            response = await w.post(path, body)
            assert response.status == 402
            assert (await response.json())["error"]["code"] == "budget_exceeded"
        response = await w.post("/generate", {"userPrompt": "hi", "model": SONNET})
        assert response.status == 402
        assert "Daily request limit" in (await response.json())["error"]
        assert response.headers["x-capgate-refusal"] == "limit_exceeded"
        # Known clients get the status they show at once; the refusal itself is unchanged.
        response = await w.post("/v1/messages", ASK, **{"user-agent": "claude-cli/2.0"})
        assert response.status == 429
        assert (await response.json())["error"]["message"].startswith("capgate: ")
        response = await w.post("/v1/chat/completions", chat, originator="codex_exec")
        assert response.status == 400
        assert len(await w.ledger()) == 6  # each refusal recorded once
        assert {e.outcome for e in await w.ledger()} == {"refused"}

    run(Setup([a], limits=NOTHING), tmp_path, test)
    assert a.sent == []


def test_a_bad_key_and_a_bad_body_are_refused_in_the_dialect(tmp_path: Path) -> None:
    a = FakeProvider("a", ok, frozenset({"anthropic", "openai"}))

    async def test(w: World) -> None:
        response = await w.client.post("/v1/messages", json=ASK)
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
        response = await w.post("/v1/chat/completions", {"model": SONNET})
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
        response = await w.client.post("/generate", json={"userPrompt": "hi"})
        assert response.status == 401 and "error" in await response.json()

    run(Setup([a]), tmp_path, test)


# -- the provider port ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_chat_provider_gets_the_output_field_it_takes(tmp_path: Path, field: str) -> None:
    def chat_ok(endpoint: Endpoint, body: bytes) -> FakeAnswer:
        answer = {"id": "c", "object": "chat.completion", "model": SONNET,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 10, "completion_tokens": 5}}  # fmt: skip
        return FakeAnswer(pieces=[orjson.dumps(answer)])

    a = FakeProvider("a", chat_ok, frozenset({"openai"}), chat_output_field=field)

    async def test(w: World) -> None:
        chat = {"model": SONNET, "messages": [{"role": "user", "content": "hi"}]}
        assert (await w.post("/v1/chat/completions", chat)).status == 200
        assert (await w.post("/v1/messages", ASK)).status == 200  # translated to Chat

    run(Setup([a], [route("a")]), tmp_path, test)
    sent = [orjson.loads(s.body) for s in a.sent]
    assert [field in body for body in sent] == [True, True]
    assert sent[1][field] == 100


# -- the seams: route policies and answer caches ---------------------------------------------


class ToHaiku:
    def __init__(self, router: list[Router]) -> None:
        self.router = router
        self.seen: list[CallFacts] = []

    async def route(self, facts: CallFacts, plan: Plan) -> Plan:
        self.seen.append(facts)
        if facts.headers.get("x-refuse"):
            raise PermissionDenied("refused by a rule", headers={"x-capgate-refusal": "rule"})
        return self.router[0].plan(HAIKU, facts.endpoint)


def test_a_route_policy_may_change_the_model_or_refuse(tmp_path: Path) -> None:
    a = FakeProvider("a", ok)
    routers: list[Router] = []
    policy = ToHaiku(routers)

    async def test(w: World) -> None:
        routers.append(w.gateway._router)
        response = await w.post("/v1/messages", ASK)
        assert response.status == 200
        (entry,) = await w.ledger()
        assert (entry.model, entry.upstream_model) == (SONNET, HAIKU)
        assert entry.cost_nano == cost(HAIKU, 10, 5)
        response = await w.post("/v1/messages", ASK, **{"x-refuse": "1"})
        assert response.status == 403
        assert (await response.json())["error"]["message"] == "refused by a rule"
        assert response.headers["x-capgate-refusal"] == "rule"
        assert len(await w.ledger()) == 1  # refused before anything was held

    run(Setup([a], extensions=Extensions(policies=(policy,))), tmp_path, test)
    facts = policy.seen[0]
    assert (facts.model, facts.max_output, facts.tools, facts.images) == (SONNET, 100, False, False)


class Remembering:
    def __init__(self) -> None:
        self.kept: dict[str, FinalAnswer] = {}

    def wanted(self, key: Scope, headers: Mapping[str, str]) -> bool:
        return True

    async def lookup(self, facts: CallFacts) -> CachedAnswer | None:
        found = self.kept.get(orjson.dumps(facts.body).decode())
        if found is None:
            return None
        return CachedAnswer(found.body, found.content_type, found.usage, 0, found.model)

    def remember(self, facts: CallFacts, answer: FinalAnswer) -> None:
        self.kept[orjson.dumps(facts.body).decode()] = answer


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cache_answers_instead_of_forwarding(tmp_path: Path, stream: bool) -> None:
    a = FakeProvider("a", ok)
    cache = Remembering()
    ask = {**ASK, "stream": stream}

    async def test(w: World) -> None:
        first = await w.post("/v1/messages", ask)
        second = await w.post("/v1/messages", ask)
        assert await first.read() == await second.read()
        assert second.headers["content-type"].startswith(first.headers["content-type"][:16])
        forwarded, hit = sorted(await w.ledger(), key=lambda e: e.id)
        assert forwarded.cost_nano == cost(SONNET, 10, 5)
        assert (hit.outcome, hit.cost_nano, hit.output_tokens) == ("ok", 0, 5)
        assert (forwarded.cache, hit.cache, hit.attempts) == ("miss", "hit", 0)

    run(Setup([a], extensions=Extensions(cache=cache)), tmp_path, test)
    assert len(a.sent) == 1


def test_an_error_shown_to_a_client_leaves_the_raised_one_as_it_was() -> None:
    refusal = Refusal("limit_exceeded", "Daily request limit", "key", "k")
    error = LimitExceeded(refusal, 0.0)
    shown = for_client(error, CODEX)
    assert (shown.status, error.status) == (400, 402)
    assert isinstance(shown, LimitExceeded) and shown.refusal is refusal
    shown = for_client(error, CLAUDE_CODE)
    assert shown.message == "capgate: Daily request limit"
    assert error.message == "Daily request limit"
    assert for_client(error, None) is error


# -- the router alone: its rng and its breakers' clock ----------------------------------------


def test_the_router_picks_by_weight_and_skips_a_cooling_provider() -> None:
    now = [1000.0]
    a, b = FakeProvider("a", ok), FakeProvider("b", ok)
    configs = {p.name: ProviderConfig(name=p.name, type="anthropic", cooldown_after=2,
                                      cooldown_s=30) for p in (a, b)}  # fmt: skip
    weighted = RouteConfig(
        match="*",
        targets=[TargetConfig(provider="a", weight=1), TargetConfig(provider="b", weight=3)],
    )
    breakers = Breakers(configs, clock=lambda: now[0])
    router = Router([weighted], {"a": a, "b": b}, configs, rng=random.Random(3), breakers=breakers)
    picks = [router.plan(SONNET, Endpoint.MESSAGES).first.provider.name for _ in range(400)]
    assert 60 < picks.count("a") < 140  # a quarter of 400, give or take
    for _ in range(2):
        breakers.failed("b", "boom")
    assert {router.plan(SONNET, Endpoint.MESSAGES).first.provider.name for _ in range(50)} == {"a"}
    now[0] += 31  # the cooldown is over
    picks = [router.plan(SONNET, Endpoint.MESSAGES).first.provider.name for _ in range(50)]
    assert "b" in picks


def test_first_byte_timeouts_of_different_lengths_each_fire_on_time(tmp_path: Path) -> None:
    """One timer watches every call's first-byte deadline (`first_byte_deadlines`): a
    shorter one that comes later still fires at its time, and the longer one still fires
    after it. A timed-out call with nowhere else to go is a 504 in the door's dialect, and
    settled."""

    async def never(endpoint: Endpoint, body: bytes) -> FakeAnswer:
        await asyncio.sleep(30)  # not even the head: send itself waits
        return FakeAnswer(pieces=[message(SONNET)])

    long = FakeProvider("long", never, first_byte_timeout_s=1.0)
    short = FakeProvider("short", never, first_byte_timeout_s=0.1)
    routes = [
        RouteConfig(match=HAIKU, targets=[TargetConfig(provider="long")], retries=0),
        RouteConfig(match=SONNET, targets=[TargetConfig(provider="short")], retries=0),
    ]

    async def timed(w: World, model: str) -> tuple[float, Any, dict[str, Any]]:
        began = asyncio.get_running_loop().time()
        response = await w.post("/v1/messages", {**ASK, "model": model})
        body = orjson.loads(await response.read())
        return asyncio.get_running_loop().time() - began, response, body

    async def test(w: World) -> None:
        slow = asyncio.create_task(timed(w, HAIKU))
        await asyncio.sleep(0.2)  # the long deadline is watched first
        took, response, body = await timed(w, SONNET)
        assert response.status == 504 and 0.1 <= took < 0.6
        assert body["type"] == "error" and "sent nothing within 0.1 s" in body["error"]["message"]
        assert not slow.done()
        took, response, body = await slow
        assert response.status == 504 and 1.0 <= took < 1.5
        assert "sent nothing within 1 s" in body["error"]["message"]
        entries = sorted(await w.ledger(), key=lambda e: e.provider)
        assert [(e.provider, e.status, e.outcome) for e in entries] == [
            ("long", 504, "error"),
            ("short", 504, "error"),
        ]

    run(Setup([long, short], routes), tmp_path, test)


def test_a_client_gone_before_the_first_byte_is_cancelled_not_timed_out(tmp_path: Path) -> None:
    """Cancelled while it waits for the first byte, a call settles as cancelled (499) at
    once and its watch ends: no timeout comes after."""
    started = asyncio.Event()

    async def never(endpoint: Endpoint, body: bytes) -> FakeAnswer:
        started.set()
        await asyncio.sleep(30)
        return FakeAnswer(pieces=[message(SONNET)])

    a = FakeProvider("a", never, first_byte_timeout_s=0.3)

    async def test(w: World) -> None:
        asking = asyncio.create_task(w.post("/v1/messages", ASK))
        await started.wait()
        asking.cancel()  # the client goes away
        (entry,) = await w.settled(100)
        assert (entry.status, entry.outcome) == (499, "cancelled")
        assert len(w.gateway._path.first_bytes) == 0  # nothing left watched
        await asyncio.sleep(0.4)  # past the deadline: nothing fires, nothing more settles
        assert len(await w.ledger()) == 1

    run(Setup([a], [route("a")]), tmp_path, test)


def test_a_first_byte_cancel_the_provider_converts_is_taken_back(tmp_path: Path) -> None:
    """A provider that turns the deadline's cancel into a failure of its own (or swallows
    it) fails the attempt as it says, and the retry on the same task starts clean: the
    deadline's cancel is taken back however the attempt ended."""
    counts: list[int] = []

    async def converts(endpoint: Endpoint, body: bytes) -> FakeAnswer:
        task = asyncio.current_task()
        assert task is not None
        counts.append(task.cancelling())
        if len(counts) == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise UpstreamFailed("gave up") from None
        return FakeAnswer(pieces=[message(SONNET)])

    a = FakeProvider("a", converts, first_byte_timeout_s=0.1)

    async def test(w: World) -> None:
        r = await w.post("/v1/messages", ASK)
        assert r.status == 200, await r.read()
        (entry,) = await w.ledger()
        assert (entry.status, entry.attempts) == (200, 2)
        assert counts == [0, 0]  # the second attempt is not left cancelled

    run(Setup([a], [route("a", retries=1)]), tmp_path, test)


class _Watched:
    """A stand-in for a Call in its first-byte deadlines: `Call._late` marks it timed out
    and cancels its task, this stand-in itself, which notes when it was found late."""

    def __init__(self, fails: bool = False) -> None:
        self.late_at: float | None = None
        self.fails = fails
        self._timed_out = False
        self._task = self

    def cancel(self) -> None:
        self.late_at = asyncio.get_running_loop().time()
        if self.fails:
            raise RuntimeError("boom")


class _Counted(float):
    """A deadline that counts how often it is compared."""

    seen = 0

    def __lt__(self, other: object) -> bool:
        _Counted.seen += 1
        return float(self) < other  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        _Counted.seen += 1
        return float(self) <= other  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        _Counted.seen += 1
        return float(self) > other  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        _Counted.seen += 1
        return float(self) >= other  # type: ignore[operator]


def test_first_byte_deadlines_due_one_by_one_cost_a_heap_not_a_scan() -> None:
    """Many calls whose deadlines come due at staggered times (an upstream that accepts
    and stalls): each firing looks at the calls due, not at every call, so n deadlines
    cost O(n log n) comparisons, not O(n²)."""
    n = 600

    async def main() -> None:
        fb = first_byte_deadlines()
        loop = asyncio.get_running_loop()
        calls = [_Watched() for _ in range(n)]
        start = loop.time() + 0.05
        for i, call in enumerate(calls):
            fb.add(call, loop, _Counted(start + i * 0.0002))  # type: ignore[arg-type]
        while any(c.late_at is None for c in calls):
            await asyncio.sleep(0.01)
        assert all(c.late_at >= start + i * 0.0002 for i, c in enumerate(calls))  # type: ignore[operator]
        assert len(fb) == 0

    _Counted.seen = 0
    asyncio.run(main())
    assert _Counted.seen < 40 * n, _Counted.seen  # a scan per firing: ~n²/2 (over 10^5)


def test_a_sub_millisecond_first_byte_deadline_fires_once_on_uvloop() -> None:
    """uvloop's timers work in ms and may fire up to 0.5 ms early: what the timer was set
    for counts as due then, so it does not spin re-arming at zero delay."""

    async def main() -> None:
        fb = first_byte_deadlines()
        fires = 0
        fire = fb._fire

        def counted() -> None:
            nonlocal fires
            fires += 1
            fire()

        fb._fire = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        for wait in (0.0025, 0.0105, 0.0304, 0.1005):
            fires = 0
            call = _Watched()
            fb.add(call, loop, loop.time() + wait)  # type: ignore[arg-type]
            while call.late_at is None:
                await asyncio.sleep(0)
            assert fires <= 3, (wait, fires)

    uvloop.run(main())


def test_a_call_that_fails_to_time_out_leaves_the_others_watched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error while one late call is handled is logged; the timer still fires for the
    others due with it and after it."""

    async def main() -> None:
        fb = first_byte_deadlines()
        loop = asyncio.get_running_loop()
        now = loop.time()
        broken, together, after = _Watched(fails=True), _Watched(), _Watched()
        fb.add(broken, loop, now + 0.05)  # type: ignore[arg-type]
        fb.add(together, loop, now + 0.05)  # type: ignore[arg-type]
        fb.add(after, loop, now + 0.1)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert broken.late_at is not None and together.late_at is not None
        assert after.late_at is not None and after.late_at >= now + 0.1
        assert len(fb) == 0

    asyncio.run(main())
    assert "timing out a call's first byte failed" in caplog.text
