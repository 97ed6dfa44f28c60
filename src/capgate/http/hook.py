"""The hook endpoints (`/hook/v1/...`, hook mode): what the managed hook on a developer's
machine asks before each prompt (gate) and tool call (check), the usage it reports, the
machine's status; enrolment with an install code. Authenticated with the machine's token
(`cgh-...`); a gateway key is refused here, as a machine token is at the gateway.
The decisions are `capgate.hook`'s (pure); this module parses, calls the store, answers.
OpenTelemetry, the served client files and the lease expiry are in `hook_extra.py`."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from capgate.config import ServerConfig
from capgate.core.engine import Amounts, Refusal, check_access
from capgate.core.limits import Scope, Status
from capgate.core.money import Price, Usage
from capgate.core.schedules import closed_schedules
from capgate.errors import (
    AuthenticationFailed,
    CapgateError,
    InvalidRequest,
    PayloadTooLarge,
    StoreUnavailable,
)
from capgate.hook import gate as g
from capgate.hook.bodies import Gate, parse_check, parse_enrol, parse_gate, parse_tamper
from capgate.hook.person import (
    logout_of,
    metadata_of,
    refusal_of,
    status_of,
    stop_reason,
    switch_reason,
    timezone_of,
)
from capgate.hook.report import Report, parse_report
from capgate.hook.view import cache_document, limit_row
from capgate.http.admin_io import json_response
from capgate.http.auth import CacheRefresher, presented_key
from capgate.http.dialects import error_response
from capgate.keys import hook_display, hook_token_id_of, key_hash, matches, new_hook_token
from capgate.logs import Line
from capgate.pricing import PricingTable
from capgate.store.base import (
    Enrolment,
    Outcome,
    RequestInfo,
    RequestQuery,
    Reservation,
    Store,
    unheld,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

MAX_BODY = 5 * 1024 * 1024
TOUCH_EVERY_S = 60.0  # last_seen written at most this often per machine (and process)
REFRESH_EVERY_S = 1.0  # a check sees a kill made by another process within this time
# A prompt's lease, settled: one prompt, its credits (held), no tokens, no cost.
PROMPT_DONE = Outcome(200, "ok", Usage(), 0, 0.0)
SURE_SOURCES = (None, "event", "transcript")  # a model named by these is not a guess
# A prompt the hook admitted offline: one prompt, its credits (`unheld`'s worst), no tokens.
OFFLINE_PROMPT = Outcome(200, "ok", Usage(), 0, 0.0, flags=("offline",))


class InvalidCode(CapgateError):
    status = 401
    kind = "invalid_code"
    retryable = False


class Throttled(CapgateError):
    status = 429
    kind = "rate_limit_error"
    retryable = False


def guarded(handler: Handler) -> Handler:
    """Errors as `{"error": {"type", "message"}}` with their status."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CapgateError as exc:
            return error_response("admin", exc)

    return run


async def read_json(request: web.Request, limit: int = MAX_BODY) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is over {limit // (1024 * 1024)} MB")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over {limit // (1024 * 1024)} MB")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON") from None


class HookAPI:
    def __init__(
        self,
        store: Store,
        pricing: PricingTable,
        settings: ServerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pricing = pricing
        self.settings = settings
        self.clock = clock
        self._touched: dict[str, tuple[float, str | None]] = {}
        self._refresher = CacheRefresher(store)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/hook/v1/enrol", guarded(self.enrol)),
            web.post("/hook/v1/gate", guarded(self.gate)),
            web.post("/hook/v1/check", guarded(self.check)),
            web.post("/hook/v1/report", guarded(self.report)),
            web.get("/hook/v1/status", guarded(self.status)),
            web.post("/hook/v1/tamper", guarded(self.tamper)),
        ]

    # -- who is asking ----------------------------------------------------------------

    async def machine(self, request: web.Request) -> Scope:
        """The machine whose token the request carries; AuthenticationFailed (401) for
        anything else: no token, a gateway key, an unknown or revoked machine."""
        raw = presented_key(request.headers)
        key_id = hook_token_id_of(raw) if raw else None
        if raw is None or key_id is None:
            raise AuthenticationFailed(
                "Send this machine's capgate hook token (cgh-...) as Authorization: Bearer."
            )
        entry = self.store.key_by_id(key_id)
        if entry is None:  # maybe enrolled a moment ago, through another process
            await self._refresher.refresh()
            entry = self.store.key_by_id(key_id)
        if entry is None or not matches(raw, entry[1]) or "hook" not in metadata_of(entry[0]):
            raise AuthenticationFailed("Invalid hook token: this machine is not enrolled.")
        if entry[0].status is Status.REVOKED:
            raise AuthenticationFailed("This machine has been revoked by an administrator.")
        return entry[0]

    async def _touch(self, key: Scope, version: str | None) -> None:
        now = self.clock()
        last = self._touched.get(key.id)
        if last is not None and now - last[0] < TOUCH_EVERY_S and version in (None, last[1]):
            return
        self._touched[key.id] = (now, version or (last[1] if last else None))
        await self.store.touch_hook_machine(key.id, version)

    def scopes(self, key: Scope) -> list[Scope]:
        return [key, *self.store.scopes_above(key)]

    # -- enrolment --------------------------------------------------------------------

    async def enrol(self, request: web.Request) -> web.Response:
        now = self.clock()
        client = "hook:" + (request.remote or "unknown")
        wait = await self.store.login_blocked(client, now)
        if wait is not None:
            raise Throttled(
                "Too many wrong install codes from this address; try again later.",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        try:
            body = parse_enrol(await read_json(request, 64 * 1024))
        except InvalidRequest as exc:
            if not str(exc).startswith("code:"):
                raise
            body = None
        key_id, raw = new_hook_token()
        enrolled = None
        if body is not None:
            enrolment = Enrolment(
                body.hostname, body.os, body.os_user, body.agents, body.hook_version,
                key_id, key_hash(raw), hook_display(raw),
            )  # fmt: skip
            enrolled = await self.store.enrol_hook_machine(key_hash(body.code), enrolment)
        if enrolled is None:
            await self.store.login_failed(client, now)
            raise InvalidCode(
                "This install code is unknown, used or expired: ask your capgate admin "
                "for a new one (capgate hook code --user NAME)."
            )
        scope, code = enrolled
        return json_response(
            {"token": raw, "machine": scope.name, "user": code.user, "server_time": now}
        )

    # -- the gate (UserPromptSubmit) --------------------------------------------------

    async def gate(self, request: web.Request) -> web.Response:
        key = await self.machine(request)
        body = parse_gate(await read_json(request))
        await self._touch(key, body.hook_version)
        if body.report is not None:
            await self.record(key, body.report, ())
        lease = g.lease_id(key.id, body.agent, body.session_id, body.prompt_id)
        lock, users = self._locks.get(lease, (asyncio.Lock(), 0))
        self._locks[lease] = (lock, users + 1)  # a retried gate waits for the first
        try:
            async with lock:
                answer = await self._gate(key, body.agent, body, lease)
        finally:
            lock, users = self._locks[lease]
            if users == 1:
                del self._locks[lease]
            else:
                self._locks[lease] = (lock, users - 1)
        return json_response(answer)

    async def _gate(self, key: Scope, agent: str, body: Gate, lease: str) -> dict[str, Any]:
        now = self.clock()
        scopes = self.scopes(key)
        model = self.decide(agent, body.model, body.model_source, scopes)
        worst = self.worst(agent, model)
        if await self.store.lease_held(lease):  # a retried gate: the same answer
            return await self._answer(key, agent, "allow", None, lease, model, now)
        done = await self.store.query_requests(RequestQuery(request_id=lease, limit=1))
        if done:
            if done[0].outcome != "refused" or done[0].refusal is None:
                return await self._answer(key, agent, "allow", None, lease, done[0].model, now)
            refusal = refusal_of(done[0].refusal)
            message = await self.refused_message(key, agent, refusal, done[0].model or model, now)
            return await self._answer(key, agent, "block", message, None, done[0].model, now)
        for earlier in await self.store.session_leases(key.id, body.session_id):
            if earlier != lease:  # the session's next prompt: the one before it ended
                await self.store.settle_lease(earlier, PROMPT_DONE)
        info = RequestInfo(
            lease, key.id, model, g.AGENTS[agent], model, "hook/prompt", False, now, None,
            body.session_id, body.prompt_id,
        )  # fmt: skip
        if self.pricing.lookup(model) is None and not self.settings.allow_unpriced_models:
            refusal = Refusal(
                "unpriced",
                f'Model "{model}" has no price in capgate\'s price table, so its cost cannot '
                "be counted; ask your admin to price it (or use a priced model).",
                "key",
                key.name,
            )
            message = await self.refused_message(key, agent, refusal, model, now)
            return await self._answer(key, agent, "block", message, None, model, now)
        if self.pricing.lookup(model) is None:
            self._unpriced(key, agent, model, "gate")
        try:
            decision = await self.store.reserve(info, worst)
        except StoreUnavailable:
            # The same gate retried through another process at the same moment made the
            # lease first (its id is taken): the same answer; anything else is a 503.
            if await self.store.lease_held(lease):
                return await self._answer(key, agent, "allow", None, lease, model, now)
            raise
        if isinstance(decision, Reservation):
            return await self._answer(key, agent, "allow", None, lease, model, now)
        message = await self.refused_message(key, agent, decision, model, now)
        return await self._answer(key, agent, "block", message, None, model, now)

    def decide(
        self, agent: str, guess: str | None, source: str | None, scopes: Sequence[Scope]
    ) -> str:
        """The model a prompt is decided for: the hook's model when it is known (aliases
        resolved); with only a guess that has no price, or none, the dearest priced model
        of the agent's family that every scope allows (conservative)."""
        names = self.pricing.models()
        resolved = g.resolve(agent, guess, names, self.pricing.lookup)
        if resolved is not None:
            return resolved
        if guess and source in SURE_SOURCES:
            return guess
        return self.default_model(agent, scopes) or guess or "unknown"

    def default_model(self, agent: str, scopes: Sequence[Scope]) -> str | None:
        models = g.dearest(g.family_models(agent, self.pricing.models()), self.pricing.lookup)
        allowed = [m for m in models if all(s.allows_model(m) for s in scopes)]
        found = allowed or models
        return found[0] if found else None

    def price(self, agent: str, model: str) -> tuple[Price | None, bool]:
        """What `model`'s tokens cost, and whether it is missing from the price table:
        then the dearest rates of the agent's family, so a new model is never free."""
        price = self.pricing.lookup(model)
        if price is not None:
            return price, False
        return g.family_ceiling(agent, self.pricing.models(), self.pricing.lookup), True

    def _unpriced(self, key: Scope, agent: str, model: str, where: str) -> None:
        log.warning(
            Line(
                "hook_unpriced_model",
                {
                    "model": model,
                    "agent": agent,
                    "machine": key.name,
                    "at": where,
                    "charged_as": f"the dearest {g.PRICE_FAMILIES[agent]}* rates",
                },
            )
        )

    def worst(self, agent: str, model: str) -> Amounts:
        return g.prompt_worst(
            self.price(agent, model)[0],
            self.pricing.credits_for(model),
            self.settings.hook_estimate_input_tokens,
            self.settings.hook_estimate_output_tokens,
        )

    async def standing(self, key: Scope, now: float) -> list[g.Standing]:
        out = []
        for scope in self.scopes(key):
            for usage in await self.store.counters(scope, now):
                out.append(g.Standing(f"{scope.kind.value}:{scope.name}", usage))
        return out

    async def refused_message(
        self, key: Scope, agent: str, refusal: Refusal, model: str, now: float
    ) -> str:
        scopes = self.scopes(key)
        standing = await self.standing(key, now)
        alternatives: list[str] = []
        worst = functools.partial(self.worst, agent)
        if refusal.code in ("limit_exceeded", "model_not_allowed", "outside_schedule", "unpriced"):
            candidates = g.dearest(
                g.family_models(agent, self.pricing.models()), self.pricing.lookup
            )
            alternatives = g.alternatives(
                model,
                candidates,
                standing,
                worst,
                lambda m: check_access(scopes, (m, m), now) is None,
            )
        return g.block_message(refusal, standing, worst(model), timezone_of(scopes), alternatives)

    async def _answer(
        self,
        key: Scope,
        agent: str,
        decision: str,
        message: str | None,
        lease: str | None,
        model: str | None,
        now: float,
    ) -> dict[str, Any]:
        cache = await self.cache(key, now)
        return {
            "decision": decision,
            "message": message,
            "lease": lease,
            "model": model,
            "logout": cache["logout"],
            "cache": cache,
        }

    async def cache(self, key: Scope, now: float) -> dict[str, Any]:
        scopes = self.scopes(key)
        agents = metadata_of(key)["hook"].get("agents") or ["claude"]
        names = self.pricing.models()
        family = [m for a in agents for m in g.family_models(a, names)]
        allowed = [m for m in family if all(s.allows_model(m) for s in scopes)]
        prices = {m: p for m in allowed if (p := self.pricing.lookup(m)) is not None}
        blocked = {}
        for m in allowed:
            closed = [s for scope in scopes for s in closed_schedules(scope.schedules, (m,), now)]
            if closed:
                blocked[m] = "; ".join(s.describe() for s in closed)
        restricted = any(scope.models for scope in scopes)
        return cache_document(
            now=now,
            offline_s=self.settings.hook_offline_s,
            status=status_of(scopes, now),
            logout=logout_of(scopes),
            timezone=timezone_of(scopes),
            default_model=self.default_model(agents[0], scopes),
            weights=self.pricing.weights(),
            estimate=(
                self.settings.hook_estimate_input_tokens,
                self.settings.hook_estimate_output_tokens,
            ),
            prices=prices,
            models=allowed if restricted else [],
            blocked=blocked,
            standing=await self.standing(key, now),
        )

    # -- checks during a turn (PreToolUse, PreModelSwitch, PreCompact) ---------------

    async def check(self, request: web.Request) -> web.Response:
        key = await self.machine(request)
        body = parse_check(await read_json(request))
        await self._touch(key, None)
        if body.report is not None:
            await self.record(key, body.report, ())
        if self._refresher.age >= REFRESH_EVERY_S:
            await self._refresher.refresh()  # a kill made through another process
            entry = self.store.key_by_id(key.id)
            key = entry[0] if entry is not None else key
        now = self.clock()
        scopes = self.scopes(key)
        names = self.pricing.models()
        model = g.resolve(body.agent, body.model, names, self.pricing.lookup) or body.model
        standing = await self.standing(key, now)
        message = stop_reason(scopes, model, standing, now)
        if message is None and body.to_model is not None:
            target = g.resolve(body.agent, body.to_model, names, self.pricing.lookup)
            worst = functools.partial(self.worst, body.agent)
            message = switch_reason(scopes, target or body.to_model, standing, worst, now)
        cache = await self.cache(key, now)
        return json_response(
            {
                "decision": "stop" if message else "allow",
                "message": message,
                "logout": cache["logout"],
                "cache": cache,
            }
        )

    # -- reports ----------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.Response:
        key = await self.machine(request)
        body = parse_report(await read_json(request), "body")
        await self._touch(key, None)
        recorded, duplicates = await self.record(key, body, ())
        return json_response({"recorded": recorded, "duplicates": duplicates})

    async def record(
        self, key: Scope, report: Report, extra_flags: tuple[str, ...]
    ) -> tuple[int, int]:
        """Count the report's calls once each (by provider request id), then settle the
        leases of the prompts they belong to, of the prompts that ended, and of the whole
        session when it ended. (recorded, duplicates)."""
        now = self.clock()
        scopes = self.scopes(key)
        provider = g.AGENTS[report.agent]
        flags = ("hook_report", *extra_flags)
        items = []
        unpriced = set()
        for call in report.calls:
            info = RequestInfo(
                g.call_request_id(call.id), key.id, call.model, provider, call.model,
                "hook/call", False, now, None, report.session_id, call.prompt_id,
            )  # fmt: skip
            price, missing = self.price(report.agent, call.model)
            cost = 0 if price is None else price.cost_nano(call.usage)
            marks = (*flags, "unpriced_model") if missing else flags
            outcome = Outcome(200, "ok", call.usage, cost, 0.0, flags=marks, requests=0)
            items.append((unheld(info, Amounts(), scopes, now), outcome))
            if missing:
                unpriced.add(call.model)
        done = await self.store.record_unheld(items) if items else []
        await self.record_offline(key, report, scopes, now)
        for model in sorted(unpriced):
            self._unpriced(key, report.agent, model, "report")
        ended = {
            g.lease_id(key.id, report.agent, report.session_id, p) for p in report.ended_prompts
        }
        ended |= {
            g.lease_id(key.id, report.agent, report.session_id, c.prompt_id)
            for c in report.calls
            if c.prompt_id
        }
        if report.session_end:
            ended |= set(await self.store.session_leases(key.id, report.session_id))
        for lease in sorted(ended):
            await self.store.settle_lease(lease, PROMPT_DONE)
        recorded = sum(done)
        return recorded, len(done) - recorded

    async def record_offline(
        self, key: Scope, report: Report, scopes: list[Scope], now: float
    ) -> None:
        """Count each prompt the hook admitted from its cache once, as the gate would have
        (its `hp-` id, requests 1, its model's credits), even past a limit, flag `offline`.
        A prompt whose lease is still held is counted by that lease; one with an entry
        (gated online, or listed in an earlier report) is not counted again."""
        items = []
        for prompt in report.offline_prompts:
            lease = g.lease_id(key.id, report.agent, report.session_id, prompt.prompt_id)
            if await self.store.lease_held(lease):
                continue
            model = self.decide(report.agent, prompt.model, prompt.model_source, scopes)
            # in the window it was made in, believed at most `hook_offline_s` back
            oldest = now - self.settings.hook_offline_s
            at = now if prompt.at is None else min(now, max(float(prompt.at), oldest))
            info = RequestInfo(
                lease, key.id, model, g.AGENTS[report.agent], model, "hook/prompt", False, at,
                None, report.session_id, prompt.prompt_id,
            )  # fmt: skip
            worst = Amounts(credits=self.pricing.credits_for(model))
            items.append((unheld(info, worst, scopes, at), OFFLINE_PROMPT))
        if items:
            await self.store.record_unheld(items)

    # -- status, tamper ---------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        key = await self.machine(request)
        now = self.clock()
        scopes = self.scopes(key)
        cache = await self.cache(key, now)
        return json_response(
            {
                "user": key.extra.get("user"),
                "machine": key.name,
                "timezone": timezone_of(scopes),
                "status": status_of(scopes, now),
                "limits": [limit_row(s) for s in await self.standing(key, now)],
                "models": {
                    "allowed": cache["models"],
                    "blocked": cache["blocked_models"],
                    "default": cache["default_model"],
                },
                "server_time": now,
            }
        )

    async def tamper(self, request: web.Request) -> web.Response:
        key = await self.machine(request)
        files, version = parse_tamper(await read_json(request))
        await self._touch(key, version)
        await self.store.mark_hook_tampered(key.id, files)
        return json_response({"recorded": True})
