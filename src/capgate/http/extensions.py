"""The two places on the request path where routing rules and answer caches plug in.

    client -> auth -> parse -> router.plan -> [RoutePolicy.route ...] -> price, reserve
           -> Call.run: [AnswerCache.lookup] -> attempts -> relay -> settle
                        -> [AnswerCache.remember]

- A `RoutePolicy` sees the request's `CallFacts` and the router's `Plan` before anything
  is priced or held, and returns the plan to follow (the same, another model or target,
  another fallback) or raises a `CapgateError` to refuse (rendered in the client's
  dialect by its door; in the access log and metrics like any error before admission,
  not in the ledger: nothing was held).
- An `AnswerCache` is asked right after admission, once the request is reserved: a hit
  answers instead of forwarding, and is settled like any answer (at the cost the hit
  says, often 0), so a paused key, a model not allowed, a rate or concurrency limit
  apply to hits too and the ledger has every answer. After a successful forwarded
  answer it is told the final answer (the whole body, or the stream's bytes as the
  client got them).

Both are off by default: with no policy and no cache, `CallFacts` are never computed and
the path is the one without them (one `if` each).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from capgate.core.limits import Scope
from capgate.core.money import Usage
from capgate.providers.base import Endpoint
from capgate.routing import Plan


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a rule or a cache may look at, computed once per request. The body is the
    client's, parsed: read it, never change it."""

    request_id: str
    endpoint: Endpoint  # the door the client called
    model: str  # as the client asked
    key: Scope
    stream: bool
    input_bound: int  # input tokens at most, from the body's bytes
    input_bytes: int  # the body's size
    max_output: int | None  # as the client asked (None: capgate sets its default)
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    now: float  # wall clock, seconds
    cacheable: bool = False  # the cache wanted it: asked for an answer, told the answer

    @property
    def user(self) -> str | None:
        user = self.key.extra.get("user")
        return user if isinstance(user, str) else None

    @property
    def team(self) -> str | None:
        team = self.key.extra.get("team")
        return team if isinstance(team, str) else None

    @property
    def tools(self) -> bool:
        return bool(self.body.get("tools"))

    @property
    def thinking(self) -> bool:
        thinking = self.body.get("thinking") or self.body.get("reasoning")
        if isinstance(thinking, Mapping):
            return thinking.get("type") != "disabled"
        return bool(thinking) or "reasoning_effort" in self.body

    @property
    def images(self) -> bool:
        """Whether any message or input item carries an image."""
        turns = self.body.get("messages", self.body.get("input"))
        return isinstance(turns, list) and any(_has_image(t) for t in turns)


def _has_image(turn: Any) -> bool:
    content = turn.get("content") if isinstance(turn, Mapping) else None
    if not isinstance(content, list):
        return False
    return any(isinstance(part, Mapping) and part.get("type") in _IMAGE_TYPES for part in content)


_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})


class RoutePolicy(Protocol):
    async def route(self, facts: CallFacts, plan: Plan) -> Plan:
        """The plan to follow: `plan` itself, or another one. Raise a CapgateError to
        refuse the request (nothing is held yet)."""
        ...


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer a cache gives instead of forwarding. `body` is what the client gets:
    a JSON answer, or a whole event stream (content type text/event-stream)."""

    body: bytes
    content_type: str
    usage: Usage  # what the ledger records
    cost_nano: int  # what is charged (0: a free hit)
    model: str | None = None
    status: int = 200
    saved_nano: int = 0  # what the answer cost when it was made (the ledger's saved_usd)
    mark: str = "hit"  # the x-capgate-cache header: hit, or hit-similar (a paraphrase's)


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """A forwarded request's successful answer, as the client got it."""

    body: bytes  # the JSON answer, or the stream's bytes (events) in order
    content_type: str
    usage: Usage
    cost_nano: int
    model: str | None
    provider: str
    upstream_model: str


class AnswerCache(Protocol):
    def wanted(self, key: Scope, headers: Mapping[str, str]) -> bool:
        """Whether this key's request may be answered from or kept in the cache, asked
        before anything is computed for it (cheap when not). Raise a CapgateError for a
        bad request (nothing is held yet)."""
        ...

    async def lookup(self, facts: CallFacts) -> CachedAnswer | None:
        """An answer for this request, or None (forward it)."""
        ...

    def remember(self, facts: CallFacts, answer: FinalAnswer) -> None:
        """A successful answer, told after it was settled; must not block (queue any
        writing)."""
        ...


@dataclass(frozen=True, slots=True)
class Extensions:
    """What is plugged in; the default is nothing."""

    policies: tuple[RoutePolicy, ...] = ()
    cache: AnswerCache | None = None

    @property
    def any(self) -> bool:
        return bool(self.policies) or self.cache is not None
