"""The routing rule language, pure: parsing, checks at load, matching (no server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from capgate.config import ConfigError, parse_config
from capgate.core.limits import Limit, Metric, Scope, ScopeKind
from capgate.core.windows import parse_window
from capgate.rules.budget import BudgetView, Known
from capgate.rules.language import Comparison
from capgate.rules.parse import RuleError, parse_comparison, parse_rules
from capgate.rules.signals import RequestSignals
from capgate.store.records import LimitUsage

# Saturday 2026-12-05 10:30 UTC
SAT_1030 = datetime(2026, 12, 5, 10, 30, tzinfo=UTC).timestamp()


def signals(body: dict[str, Any] | None = None, **kw: Any) -> RequestSignals:
    values: dict[str, Any] = {
        "model": "claude-opus-4-5", "key": "alice-laptop", "user": "alice", "team": "research",
        "org": "acme", "input_bytes": 5_000, "input_tokens": 6_000, "max_tokens": 64_000,
        "stream": True, "now": SAT_1030,
    }  # fmt: skip
    headers = kw.pop("headers", {})
    values.update(kw)
    return RequestSignals(body or {"messages": []}, headers, **values)


def first(rules: list[dict[str, Any]], s: RequestSignals, known: Known | None = None) -> str | None:
    rule = parse_rules(rules).first(s, known or Known({}))
    return None if rule is None else rule.name


def test_comparisons() -> None:
    assert parse_comparison("< 2000", "x") == Comparison("<", 2000)
    assert parse_comparison(">=1_000", "x") == Comparison(">=", 1000)
    assert parse_comparison(512, "x") == Comparison("==", 512)
    assert parse_comparison("!= 0", "x").holds(3)
    table = [("<", 5, 4, True), ("<", 5, 5, False), ("<=", 5, 5, True), (">", 5, 5, False),
             (">=", 5, 5, True), ("==", 5, 5, True), ("!=", 5, 5, False)]  # fmt: skip
    for op, value, amount, holds in table:
        assert Comparison(op, value).holds(amount) is holds, (op, value, amount)
    for bad in ("about 2000", "< -1", "<< 3", "2e3", True, -1, None, "< 20.5"):
        with pytest.raises(ValueError, match="is not a comparison"):
            parse_comparison(bad, "when.max_tokens")


def test_first_match_wins_and_conditions_all_hold() -> None:
    rules = [
        {"name": "small", "when": {"max_tokens": "<= 1024"}, "then": {"model": "haiku"}},
        {"name": "opus-research", "when": {"model": "*opus*", "team": ["research", "x"]},
         "then": {"model": "sonnet"}},
        {"name": "catch-all", "then": {"fallback": ["gpt-4o", "sonnet"]}},
    ]  # fmt: skip
    assert first(rules, signals(max_tokens=512)) == "small"  # both hold: the first decides
    assert first(rules, signals()) == "opus-research"
    assert first(rules, signals(team="sales")) == "catch-all"
    assert first(rules, signals(team=None)) == "catch-all"  # no team: a team condition fails
    assert first(rules[:2], signals(model="claude-sonnet-4-5")) is None
    fallback = parse_rules(rules).rules[2].then
    assert fallback.fallback == ("gpt-4o", "sonnet") and fallback.kind == "fallback"


def test_each_condition() -> None:
    def holds(when: dict[str, Any], **kw: Any) -> bool:
        return first([{"name": "r", "when": when, "then": {"model": "m"}}], signals(**kw)) == "r"

    assert holds({"key": "alice-*"}) and not holds({"key": "bob"})
    assert holds({"user": "alice"}) and not holds({"user": "alice"}, user=None)
    assert holds({"org": "acme"}) and not holds({"org": "other"})
    assert holds({"input_tokens": "> 5999"}) and not holds({"input_tokens": "< 6000"})
    assert holds({"input_bytes": "== 5000"}) and not holds({"input_bytes": "> 5000"})
    assert holds({"stream": True}) and not holds({"stream": True}, stream=False)
    assert holds({"header": {"X-Capgate-Tier": "prem*"}}, headers={"x-capgate-tier": "premium"})
    assert not holds({"header": {"x-capgate-tier": "prem*"}}, headers={"x-capgate-tier": "free"})
    assert not holds({"header": {"x-capgate-tier": "*"}})  # absent: does not hold
    assert holds({"time": "09:00-18:00"}) and not holds({"time": "11:00-18:00"})
    assert holds({"time": {"hours": "22:00-11:00", "days": "fri"}})  # overnight from Friday
    assert not holds({"time": {"hours": "09:00-18:00", "days": "mon-fri"}})
    # 10:30 UTC is 19:30 in Tokyo (UTC+9)
    assert holds({"time": {"hours": "19:00-20:00", "timezone": "Asia/Tokyo"}})
    assert not holds({"time": {"hours": "09:00-18:00", "timezone": "Asia/Tokyo"}})


def test_tools_images_thinking_read_from_the_body() -> None:
    def holds(when: dict[str, Any], body: dict[str, Any]) -> bool:
        return first([{"name": "r", "when": when, "then": {"model": "m"}}], signals(body)) == "r"

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    in_tool_result = {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [image]}]}]}  # fmt: skip
    openai_image = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:"}}]}]}  # fmt: skip
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    assert holds({"images": True}, in_tool_result) and holds({"images": True}, openai_image)
    assert holds({"images": False}, plain) and not holds({"images": True}, plain)
    assert holds({"images": True}, {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "x"}]}]})  # fmt: skip
    assert holds({"tools": True}, {"tools": [{"name": "Bash"}]})
    assert holds({"tools": False}, {"tools": []}) and holds({"tools": True}, {"functions": [{}]})
    assert holds({"thinking": True}, {"thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert holds({"thinking": True}, {"thinking": {"type": "adaptive"}})
    assert holds({"thinking": False}, {"thinking": {"type": "disabled"}})
    assert holds({"thinking": True}, {"reasoning_effort": "high"})
    assert holds({"thinking": True}, {"reasoning": {"effort": "low"}})
    assert holds({"thinking": False}, {"reasoning": {"effort": "none"}})


def _usage(
    metric: Metric, window: str, max_: int, used: int, model: str | None = None
) -> LimitUsage:
    return LimitUsage(Limit(metric, parse_window(window), max_, model), used, 0, 0)


def test_budget_left_share_and_amount() -> None:
    share = [{"name": "low", "when": {"budget_left": {"scope": "team", "metric": "cost",
              "below": "20%"}}, "then": {"model": "sonnet"}}]  # fmt: skip
    month = 100 * 10**9

    def team(*limits: LimitUsage) -> Known:
        return Known({ScopeKind.TEAM: limits})

    assert first(share, signals(), team(_usage(Metric.COST_USD, "month", month, 80 * 10**9 + 1)))
    assert not first(share, signals(), team(_usage(Metric.COST_USD, "month", month, 80 * 10**9)))
    assert not first(share, signals(), Known({}))  # nothing known: does not hold
    assert not first(share, signals(), team(_usage(Metric.TOKENS, "month", 100, 99)))
    # a limit on other models does not speak for this one
    on_haiku = _usage(Metric.COST_USD, "month", month, month, "*haiku*")
    assert not first(share, signals(), team(on_haiku))
    amount = [{"name": "low", "when": {"budget_left": {"scope": "key", "metric": "cost",
               "below": "$5", "window": "day"}}, "then": {"model": "sonnet"}}]  # fmt: skip
    key = Known({ScopeKind.KEY: [_usage(Metric.COST_USD, "month", 10**12, 10**12)]})
    assert not first(amount, signals(), key)  # the month is spent, but the rule reads days
    day = Known({ScopeKind.KEY: [_usage(Metric.COST_USD, "day", 10 * 10**9, 5 * 10**9 + 1)]})
    assert first(amount, signals(), day)
    assert parse_rules(share).budget_scopes == {ScopeKind.TEAM}


def test_budget_view_reads_once_then_in_the_background() -> None:
    reads: list[str] = []
    spent = [0]
    now = [1000.0]
    limit = Limit(Metric.COST_USD, parse_window("month"), 100)

    async def read(scope: Scope, at: float) -> list[LimitUsage]:
        reads.append(scope.name)
        return [LimitUsage(limit, spent[0], 0, 0)]

    team = Scope(ScopeKind.TEAM, "t1", "research", limits=(limit,))

    async def main() -> None:
        view = BudgetView(read, clock=lambda: now[0], refresh_s=2.0)
        kinds = frozenset({ScopeKind.TEAM})
        known = await view.of([team], kinds)
        assert reads == ["research"] and known.left(ScopeKind.TEAM)[0].used == 0  # type: ignore[index]
        spent[0] = 90
        known = await view.of([team], kinds)  # fresh: no read
        assert reads == ["research"] and known.left(ScopeKind.TEAM)[0].used == 0  # type: ignore[index]
        now[0] += 2.5
        known = await view.of([team], kinds)  # stale: read in the background, old figure now
        assert known.left(ScopeKind.TEAM)[0].used == 0  # type: ignore[index]
        await asyncio.sleep(0)
        known = await view.of([team], kinds)
        assert reads == ["research", "research"]
        assert known.left(ScopeKind.TEAM)[0].used == 90  # type: ignore[index]
        assert (await view.of([team], frozenset({ScopeKind.ORG}))).left(ScopeKind.TEAM) is None

    asyncio.run(main())


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "a", "then": {"model": "m"}, "if": {}}, "rules[0] (a): unknown field 'if'"),
        ({"name": "a b", "then": {"model": "m"}}, "rules[0]: name: required"),
        (
            {"name": "a", "when": {"colour": "red"}, "then": {"model": "m"}},
            "rules[0] (a): when: unknown condition 'colour'",
        ),
        (
            {"name": "a", "when": {"max_tokens": "small"}, "then": {"model": "m"}},
            "rules[0] (a): when.max_tokens: 'small' is not a comparison",
        ),
        (
            {"name": "a", "when": {"tools": "yes"}, "then": {"model": "m"}},
            "when.tools: must be true or false",
        ),
        ({"name": "a", "when": {"time": "9-17"}, "then": {"model": "m"}}, "use HH:MM"),
        (
            {
                "name": "a",
                "when": {"time": {"hours": "09:00-17:00", "timezone": "Mars/Olympus"}},
                "then": {"model": "m"},
            },
            "Mars/Olympus",
        ),
        (
            {
                "name": "a",
                "when": {"budget_left": {"scope": "galaxy", "below": "5%"}},
                "then": {"model": "m"},
            },
            "budget_left.scope: one of key, user, team, org",
        ),
        (
            {
                "name": "a",
                "when": {"budget_left": {"scope": "team", "below": "120%"}},
                "then": {"model": "m"},
            },
            "at most 100%",
        ),
        (
            {
                "name": "a",
                "when": {"budget_left": {"scope": "team", "metric": "tokens", "below": "lots"}},
                "then": {"model": "m"},
            },
            "is not a share or a whole amount",
        ),
        ({"name": "a", "then": {"model": "m", "refuse": "no"}}, "exactly one of"),
        ({"name": "a"}, "then: required"),
        ({"name": "a", "then": {"refuse": "no", "status": 500}}, "403 or 429"),
        ({"name": "a", "then": {"model": "m", "status": 429}}, "then.status: only with refuse"),
        ({"name": "a", "then": {"model": "claude-*"}}, "is a glob"),
        ({"name": "a", "then": {"teleport": "x"}}, "unknown action 'teleport'"),
    ],
)
def test_bad_rules_are_named(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules([rule])
    assert message in str(err.value)


def test_config_checks_rules_against_routes() -> None:
    base = {
        "providers": [{"name": "up", "type": "mock", "base_url": "http://127.0.0.1:9"}],
        "models": [{"match": "claude-*", "targets": [{"provider": "up"}]}],
    }
    ok = parse_config({**base, "rules": [{"name": "r", "then": {"model": "claude-haiku-4-5"}}]}, {})
    assert ok.compiled_rules().rules[0].then.model == "claude-haiku-4-5"
    with pytest.raises(
        ConfigError, match=r"rules\[1\] \(r2\): then.fallback: no route serves the model 'gpt-4o'"
    ):
        parse_config({**base, "rules": [{"name": "r", "then": {"model": "claude-x"}},
                                        {"name": "r2", "then": {"fallback": "gpt-4o"}}]}, {})  # fmt: skip
    with pytest.raises(ConfigError, match="the name 'r' is used twice"):
        parse_config({**base, "rules": [{"name": "r", "then": {"model": "claude-x"}}] * 2}, {})
    # no `models:` in the file: every name is served (the first provider, runtime routes)
    free = parse_config({"providers": base["providers"], "rules": [
        {"name": "r", "then": {"model": "anything"}}]}, {})  # fmt: skip
    assert free.compiled_rules()
