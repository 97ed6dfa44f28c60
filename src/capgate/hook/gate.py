"""The gate's decisions, pure: which lease a prompt has, which model it is decided for,
what it holds, and what a person is told when it is refused (which limit, used / max,
when it resets, and what is left on the other models)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from capgate.core.engine import Amounts, Refusal
from capgate.core.limits import Limit, Metric, format_usd
from capgate.core.money import Price, Usage
from capgate.core.windows import NEVER, Rolling, WindowKind, format_reset
from capgate.store.base import HOOK_LEASE_PREFIX
from capgate.store.records import LimitUsage

# Agent -> the ledger's provider for its entries.
AGENTS = {"claude": "claude-code", "codex": "codex"}
# Agent -> the names whose prices bound what a model missing from the price table costs.
PRICE_FAMILIES = {"claude": "claude-", "codex": "gpt-"}
CALL_PREFIX = "hc-"
_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")
_ALIASES = ("opus", "sonnet", "haiku")


def lease_id(machine: str, agent: str, session: str, prompt: str) -> str:
    """A prompt's lease (and prompt entry) id: the same for a retried gate of the same
    machine (its key id), and another machine's prompt can never take it."""
    digest = hashlib.sha256(f"{machine}|{agent}|{session}|{prompt}".encode()).hexdigest()
    return HOOK_LEASE_PREFIX + digest[:32]


def call_request_id(provider_id: str) -> str:
    """A reported call's ledger request id, from the provider's request id (Claude's
    `requestId` / OTel `request_id`, Codex's `response_id`) or else the message id."""
    return CALL_PREFIX + provider_id


def of_family(agent: str, model: str) -> bool:
    """Whether `model` is one `agent` runs: Claude models for Claude Code, OpenAI's for
    Codex."""
    if agent == "claude":
        return model.startswith("claude-")
    return model.startswith(("gpt-", "codex-")) or bool(re.match(r"^o\d", model))


def family_models(agent: str, names: Iterable[str]) -> list[str]:
    """The agent's priced models, by their plain names (no date, no `-latest`)."""
    return sorted({n for n in names if of_family(agent, n) and not _DATED.search(n)})


def dearest(models: Iterable[str], price_of: Callable[[str], Price | None]) -> list[str]:
    """`models` that have a price, the dearest first (output rate, then input, then name)."""
    priced = [(price_of(m), m) for m in models]
    ranked = sorted(
        ((p.output, p.input, m) for p, m in priced if p is not None),
        key=lambda t: (-t[0], -t[1], t[2]),
    )
    return [m for _, _, m in ranked]


def family_ceiling(
    agent: str, names: Iterable[str], price_of: Callable[[str], Price | None]
) -> Price | None:
    """What a model with no price is charged for `agent`: per token kind, the dearest rate
    of its family in the table (`claude-*` for Claude Code, `gpt-*` for Codex), so a model
    the table does not know yet is never cheaper than any it knows. None: no such model."""
    prices = [
        p for n in names if n.startswith(PRICE_FAMILIES[agent]) and (p := price_of(n)) is not None
    ]
    if not prices:
        return None
    return Price(
        input=max(p.input for p in prices),
        output=max(p.output for p in prices),
        cache_write=max(p.cache_write for p in prices),
        cache_write_1h=max(p.cache_write_1h for p in prices),
        cache_read=max(p.cache_read for p in prices),
    )


def resolve(
    agent: str, guess: str | None, names: Sequence[str], price_of: Callable[[str], Price | None]
) -> str | None:
    """The priced model a hook's guess names: itself, or an alias (`sonnet`, `opus`,
    `claude-opus`...) as the dearest priced model of the agent's family containing it."""
    if not guess:
        return None
    if price_of(guess) is not None:
        return guess
    word = next((a for a in _ALIASES if a in guess.lower()), None)
    if agent != "claude" or word is None:
        return None
    matching = [m for m in family_models(agent, names) if word in m]
    found = dearest(matching, price_of)
    return found[0] if found else None


def prompt_worst(
    price: Price | None, credits: int, input_tokens: int, output_tokens: int
) -> Amounts:
    """What an admitted prompt holds until its calls are reported: one request (prompt),
    the model's credits, the estimated tokens, their cost at the model's rates."""
    cost = 0 if price is None else price.cost_nano(Usage(input_tokens, output_tokens))
    return Amounts(1, input_tokens, output_tokens, cost, credits)


# -- what a person reads --------------------------------------------------------------------

_NOUN = {
    Metric.REQUESTS: ("prompt", "prompts"),
    Metric.CREDITS: ("credit", "credits"),
    Metric.TOKENS: ("token", "tokens"),
    Metric.INPUT_TOKENS: ("input token", "input tokens"),
    Metric.OUTPUT_TOKENS: ("output token", "output tokens"),
    Metric.CONCURRENT: ("prompt in flight", "prompts in flight"),
    Metric.COST_USD: ("dollar", "dollars"),
}
_ADJECTIVE = {
    WindowKind.MINUTE: "per-minute",
    WindowKind.HOUR: "hourly",
    WindowKind.DAY: "daily",
    WindowKind.WEEK: "weekly",
    WindowKind.MONTH: "monthly",
    WindowKind.TOTAL: "total",
}
_PERIOD = {
    WindowKind.MINUTE: "this minute",
    WindowKind.HOUR: "this hour",
    WindowKind.DAY: "today",
    WindowKind.WEEK: "this week",
    WindowKind.MONTH: "this month",
    WindowKind.TOTAL: "in total",
}


def amount_text(metric: Metric, amount: int) -> str:
    """`$1.23` for dollars, `12,345` for counts."""
    return format_usd(amount) if metric is Metric.COST_USD else f"{amount:,}"


def _with_noun(limit: Limit, amount: int) -> str:
    if limit.metric is Metric.COST_USD:
        return format_usd(amount)
    one, many = _NOUN[limit.metric]
    return f"{amount:,} {one if amount == 1 else many}"


def period(limit: Limit) -> str:
    if isinstance(limit.window, Rolling):
        return f"in the last {limit.window.value.removeprefix('rolling-')}"
    return _PERIOD[limit.window]


def limit_label(limit: Limit) -> str:
    """`daily prompt limit for claude-opus-*`."""
    if isinstance(limit.window, Rolling):
        adjective = f"rolling {limit.window.value.removeprefix('rolling-')}"
    else:
        adjective = _ADJECTIVE[limit.window]
    label = f"{adjective} {_NOUN[limit.metric][0]} limit"
    if limit.metric is Metric.COST_USD:
        label = f"{adjective} dollar limit"
    return label + (f" for {limit.model}" if limit.model else "")


def resets_text(limit: Limit, resets_at: int | None, timezone: str) -> str:
    if resets_at is None or resets_at >= NEVER:
        return "it does not reset (a total limit)"
    when = format_reset(resets_at, timezone)
    if isinstance(limit.window, Rolling):
        return f"the oldest of it leaves the window at {when}"
    return f"resets {when}"


@dataclass(frozen=True, slots=True)
class Standing:
    """One limit of one of the person's scopes as it stands now."""

    scope: str  # "user:alice"
    usage: LimitUsage


def block_message(
    refusal: Refusal,
    standing: Sequence[Standing],
    worst: Amounts,
    timezone: str,
    alternatives: Sequence[str] | None,
) -> str:
    """What a refused prompt shows: which limit, used / max, when it resets, and what is
    left on the other models (`alternatives`; None: not looked for)."""
    limit = refusal.limit
    if limit is None:  # paused, revoked, expired, a model not allowed, a schedule
        text = f"capgate: {refusal.message}"
    else:
        who = f'{refusal.scope_kind} "{refusal.scope_name}"'
        mine = next(
            (
                s.usage
                for s in standing
                if s.scope == f"{refusal.scope_kind}:{refusal.scope_name}"
                and s.usage.limit == limit
            ),
            None,
        )
        used = refusal.used if mine is None else mine.used
        held = 0 if mine is None else mine.reserved
        label = limit_label(limit)
        metric = limit.metric
        detail = (
            f"The {label} of {who} is reached: {amount_text(metric, used)} of "
            f"{_with_noun(limit, limit.max)} used"
        )
        if used < limit.max:
            if held:
                detail += f", {amount_text(metric, held)} held by prompts in flight"
            need = amount_text(metric, worst.of(metric))
            detail += f", and a prompt holds up to {need} until its usage is counted"
        text = f"capgate: {detail}; {resets_text(limit, refusal.resets_at, timezone)}."
    if alternatives:
        text += " " + " ".join(f"{a}." for a in alternatives)
    elif alternatives is not None and refusal.limit is not None and refusal.limit.model is None:
        text += " No other model fits either."
    return text


def alternatives(
    refused_model: str,
    candidates: Sequence[str],
    standing: Sequence[Standing],
    worst_of: Callable[[str], Amounts],
    allowed: Callable[[str], bool],
    most: int = 2,
) -> list[str]:
    """`Switch to MODEL: 14 of 20 prompts left today` for the first `most` candidates
    (dearest first) that are allowed now and whose prompt fits under every limit that
    applies to them; the figure is their tightest limit's."""
    out = []
    for model in candidates:
        if model == refused_model or not allowed(model):
            continue
        worst = worst_of(model)
        applying = [s.usage for s in standing if s.usage.limit.applies_to(model)]
        if any(u.remaining < worst.of(u.limit.metric) for u in applying):
            continue
        if not applying:
            out.append(f"Switch to {model}: no limit applies to it")
        else:
            tight = min(applying, key=lambda u: u.remaining / u.limit.max if u.limit.max else 0.0)
            left = amount_text(tight.limit.metric, tight.remaining)
            whole = _with_noun(tight.limit, tight.limit.max)
            out.append(f"Switch to {model}: {left} of {whole} left {period(tight.limit)}")
        if len(out) == most:
            break
    return out
