"""Reports of model calls (`POST /hook/v1/report`, and the `report` a gate or check
carries), validated whole before anything is recorded, and priced by capgate's own
price table. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capgate.core.money import Price, Usage
from capgate.errors import InvalidRequest

MAX_CALLS = 1000
MAX_TOKENS = 2**40  # each token field is below this
MAX_TEXT = 256  # ids and model names
AGENT_NAMES = ("claude", "codex")


@dataclass(frozen=True, slots=True)
class Call:
    """One model call: its provider id (dedup), the prompt it belongs to, its usage."""

    id: str
    prompt_id: str | None
    model: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class OfflinePrompt:
    """A prompt the hook admitted from its cache while the server was unreachable: the
    server counts it once (as the gate would have), when the queued report arrives."""

    prompt_id: str
    model: str | None  # the hook's guess, None when it had none
    model_source: str | None
    at: float | None  # when, on the server's clock (the hook's estimate)


@dataclass(frozen=True, slots=True)
class Report:
    agent: str
    session_id: str
    calls: tuple[Call, ...]
    ended_prompts: tuple[str, ...]
    session_end: bool
    offline_prompts: tuple[OfflinePrompt, ...] = ()


def text(value: Any, where: str, *, optional: bool = False) -> str | None:
    """A non-empty string of at most MAX_TEXT characters (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise InvalidRequest(
            f"{where}: expected a non-empty string of at most {MAX_TEXT} characters"
        )
    return value


def agent_of(value: Any) -> str:
    if value not in AGENT_NAMES:
        raise InvalidRequest('agent: expected "claude" or "codex"')
    return str(value)


def tokens(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS:
        raise InvalidRequest(f"{where}: expected a whole number from 0 to 2^40 - 1")
    return value


def parse_call(item: Any, where: str) -> Call:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: expected an object")
    call_id = text(item.get("id"), f"{where}.id", optional=True)
    message_id = text(item.get("message_id"), f"{where}.message_id", optional=True)
    ident = call_id or message_id
    if ident is None:
        raise InvalidRequest(f"{where}: needs an id or a message_id")
    write = tokens(item.get("cache_write", 0), f"{where}.cache_write")
    write_1h = tokens(item.get("cache_write_1h", 0), f"{where}.cache_write_1h")
    if write_1h > write:
        raise InvalidRequest(f"{where}: cache_write_1h is part of cache_write, so at most it")
    usage = Usage(
        tokens(item.get("input", 0), f"{where}.input"),
        tokens(item.get("output", 0), f"{where}.output"),
        tokens(item.get("cache_read", 0), f"{where}.cache_read"),
        write - write_1h,
        write_1h,
    )
    prompt = text(item.get("prompt_id"), f"{where}.prompt_id", optional=True)
    model = text(item.get("model"), f"{where}.model")
    assert model is not None
    return Call(ident, prompt, model, usage)


def parse_offline(item: Any, where: str) -> OfflinePrompt:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: expected an object")
    prompt = text(item.get("prompt_id"), f"{where}.prompt_id")
    assert prompt is not None
    model = item.get("model") or None  # "" from hooks that had no guess
    at = item.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
        raise InvalidRequest(f"{where}.at: expected a time in Unix seconds")
    source = text(item.get("model_source"), f"{where}.model_source", optional=True)
    return OfflinePrompt(
        prompt, text(model, f"{where}.model", optional=True), source, None if at is None else at
    )


def parse_report(body: Any, where: str = "report") -> Report:
    """The report, or InvalidRequest naming the first bad field (nothing is recorded)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where}: expected a JSON object")
    calls = body.get("calls", [])
    if not isinstance(calls, list) or len(calls) > MAX_CALLS:
        raise InvalidRequest(f"{where}.calls: expected a list of at most {MAX_CALLS} calls")
    ended = body.get("ended_prompts", [])
    if not isinstance(ended, list) or len(ended) > MAX_CALLS:
        raise InvalidRequest(f"{where}.ended_prompts: expected a list of prompt ids")
    session_end = body.get("session_end", False)
    if not isinstance(session_end, bool):
        raise InvalidRequest(f"{where}.session_end: expected true or false")
    cost_state = body.get("cost_state")
    if cost_state is not None and not isinstance(cost_state, dict):
        raise InvalidRequest(f"{where}.cost_state: expected an object")
    offline = body.get("offline_prompts", [])
    if not isinstance(offline, list) or len(offline) > MAX_CALLS:
        raise InvalidRequest(f"{where}.offline_prompts: expected a list of at most {MAX_CALLS}")
    session = text(body.get("session_id"), f"{where}.session_id")
    assert session is not None
    return Report(
        agent_of(body.get("agent")),
        session,
        tuple(parse_call(c, f"{where}.calls[{i}]") for i, c in enumerate(calls)),
        tuple(str(text(p, f"{where}.ended_prompts[{i}]")) for i, p in enumerate(ended)),
        session_end,
        tuple(parse_offline(p, f"{where}.offline_prompts[{i}]") for i, p in enumerate(offline)),
    )


def cost_nano(call: Call, price_of: Callable[[str], Price | None]) -> int | None:
    """The call's exact cost by capgate's price table (5-minute and 1-hour cache writes
    at their own rates), or None when its model has no price."""
    price = price_of(call.model)
    return None if price is None else price.cost_nano(call.usage)
