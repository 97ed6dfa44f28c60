"""The alerts' pure parts (alerts/rules.py, payload.py, setup.py, targets.py, sender's
backoff): which alerts rules fire and how they are named, the signature, the checks."""

from __future__ import annotations

import asyncio

import pytest

from capgate.alerts.payload import alert_body, render, sign, verify
from capgate.alerts.rules import (
    Rule,
    parse_defaults,
    parse_rule,
    provider_alerts,
    refusal_alert,
    rules_of,
    spend_alert,
    threshold_alerts,
)
from capgate.alerts.sender import MAX_BACKOFF_S, backoff
from capgate.alerts.setup import AlertSetup, parse_webhook
from capgate.alerts.targets import GuardedResolver, PrivateTarget, check_url
from capgate.core.limits import Limit, Metric, Scope, ScopeKind, usd_to_nano
from capgate.core.windows import NEVER, WindowKind, parse_window
from capgate.store.records import LimitUsage

TEAM = Scope(kind=ScopeKind.TEAM, id="t1", name="eng")
DAY = Limit(Metric.COST_USD, WindowKind.DAY, usd_to_nano("10.00"))
DEFAULTS = parse_defaults([{"type": "threshold", "percents": [50, 80, 100]}])


def at(used: int, limit: Limit = DAY, resets_at: int = 86400) -> tuple[Scope, LimitUsage]:
    return TEAM, LimitUsage(limit, used, 0, resets_at)


@pytest.mark.parametrize(
    ("used", "fired"),
    [
        (usd_to_nano("4.999999999"), []),
        (usd_to_nano("5.00"), [50]),
        (usd_to_nano("7.999999999"), [50]),  # exact: one nano-dollar short of 80 %
        (usd_to_nano("8.00"), [50, 80]),
        (usd_to_nano("12.00"), [50, 80, 100]),
    ],
)
def test_thresholds_fire_at_exact_percents_of_settled_usage(used: int, fired: list[int]) -> None:
    alerts = threshold_alerts([at(used)], (), DEFAULTS, now=1000)
    assert [a.data["threshold_percent"] for a in alerts] == fired


def test_reserved_amounts_do_not_fire_a_threshold() -> None:
    usage = LimitUsage(DAY, usd_to_nano("1.00"), usd_to_nano("9.00"), 86400)
    assert threshold_alerts([(TEAM, usage)], (), DEFAULTS, 1000) == []


def test_a_threshold_is_named_by_scope_limit_window_and_percent() -> None:
    [alert] = threshold_alerts([at(usd_to_nano("5"))], (), DEFAULTS, 1000)
    assert alert.key == "threshold:team:t1:cost_usd:day:*:86400:50"
    assert alert.expires_at == 86400  # forgotten once the window is over
    [next_day] = threshold_alerts([at(usd_to_nano("5"), resets_at=172800)], (), DEFAULTS, 90000)
    assert next_day.key != alert.key  # a new window fires again
    total = Limit(Metric.COST_USD, WindowKind.TOTAL, usd_to_nano("10"))
    [never] = threshold_alerts([at(usd_to_nano("5"), total, NEVER)], (), DEFAULTS, 1000)
    assert never.expires_at == NEVER and never.data["resets_at"] is None
    rolling = Limit(Metric.COST_USD, parse_window("rolling-1h"), usd_to_nano("10"))
    one = threshold_alerts([at(usd_to_nano("5"), rolling, 1010)], (), DEFAULTS, 1000)
    two = threshold_alerts([at(usd_to_nano("5"), rolling, 1020)], (), DEFAULTS, 1010)
    assert one[0].key == two[0].key  # a rolling window: once per span, not per bucket


def test_a_scopes_own_rule_replaces_the_default_and_metrics_are_chosen() -> None:
    own = parse_rule({"type": "threshold", "scope": "team:eng", "percents": [90], "metric": "*"})
    requests = Limit(Metric.REQUESTS, WindowKind.DAY, 100)
    rows = [at(usd_to_nano("8.5")), at(95, requests)]
    assert threshold_alerts(rows, (), DEFAULTS, 1000)[-1].data["metric"] == "cost_usd"
    assert [a.data["metric"] for a in threshold_alerts(rows, (own,), DEFAULTS, 1000)] == [
        "requests"
    ]


def test_default_rate_rules_are_about_all_traffic_and_own_rules_replace_defaults() -> None:
    defaults = parse_defaults(
        [{"type": "refusal_rate", "percent": 10}, {"type": "provider_down"}, {"type": "threshold"}]
    )
    own = parse_rule({"type": "provider_down", "scope": "*", "id": "p", "every_minutes": 5})
    assert [r.percent for r in rules_of("*", "refusal_rate", (), defaults)] == [10]
    assert rules_of("team:eng", "refusal_rate", (), defaults) == []  # not per scope
    assert len(rules_of("team:eng", "threshold", (), defaults)) == 1  # thresholds are
    assert rules_of("*", "provider_down", (own,), defaults) == [own]


def test_rate_rules() -> None:
    rule = parse_rule({"type": "refusal_rate", "scope": "key:k", "percent": 50, "minutes": 10})
    assert refusal_alert(rule, "key:k", 19, 19, 1000) is None  # below min_requests (20)
    assert refusal_alert(rule, "key:k", 20, 10, 1000) is None  # not above 50 %
    alert = refusal_alert(rule, "key:k", 20, 11, 1000)
    assert alert and alert.scope == ("key", "k") and alert.key.endswith(":600")
    by_provider = parse_rule({"type": "refusal_rate", "scope": "provider:anthropic"})
    assert refusal_alert(by_provider, "provider:anthropic", 40, 30, 1000) is not None
    spend = parse_rule({"type": "spend_rate", "scope": "*", "factor": 3, "floor_usd": "2"})
    week = usd_to_nano("168")  # $1 an hour on average
    assert spend_alert(spend, "*", usd_to_nano("3"), week, 7200) is None  # not above 3x
    assert spend_alert(spend, "*", usd_to_nano("3.01"), week, 7200) is not None
    assert spend_alert(spend, "*", usd_to_nano("1.99"), 0, 7200) is None  # under the floor


def test_provider_down_once_per_span() -> None:
    rules = parse_defaults([{"type": "provider_down", "every_minutes": 30}])
    state = [
        {"provider": "a", "state": "cooling", "failures_in_a_row": 3, "last_error": "x"},
        {"provider": "b", "state": "ok", "failures_in_a_row": 0, "last_error": None},
    ]
    [alert] = provider_alerts(rules, state, 1000)
    assert alert.scope == ("provider", "a")
    assert provider_alerts(rules, state, 1700)[0].key == alert.key
    assert provider_alerts(rules, state, 1900)[0].key != alert.key


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "nope", "scope": "*"}, "type"),
        ({"type": "threshold", "scope": "team"}, "scope"),
        ({"type": "threshold", "scope": "*", "percents": [0]}, "percents"),
        ({"type": "threshold", "scope": "*", "metric": "dollars"}, "metric"),
        ({"type": "threshold", "scope": "*", "factor": 2}, "factor"),
        ({"type": "refusal_rate", "scope": "org:o"}, "scope"),
        ({"type": "refusal_rate", "scope": "*", "percent": 0}, "percent"),
        ({"type": "spend_rate", "scope": "*", "floor_usd": "lots"}, "floor_usd"),
        ({"type": "provider_down", "scope": "team:t"}, "scope"),
    ],
)
def test_bad_rules_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        parse_rule(data)


def test_rules_and_webhooks_round_trip() -> None:
    rule = parse_rule({"type": "spend_rate", "scope": "user:u", "id": "r1", "floor_usd": "5"})
    hook = parse_webhook({"name": "h", "url": "https://example.com/x", "secret": "s" * 16})
    setup = AlertSetup((rule,), (hook,))
    assert AlertSetup.from_json(setup.to_json()) == setup
    assert isinstance(rule, Rule) and rule.floor_nano == usd_to_nano("5")
    big = parse_rule({"type": "spend_rate", "scope": "*", "floor_usd": "1234.5"})
    assert parse_rule(big.to_json()) == big  # no thousands separator in floor_usd
    with pytest.raises(ValueError, match=r"^secret:"):
        parse_webhook({"name": "h", "url": "https://example.com", "secret": "short"})


def test_signature_verifies_with_the_secret_only() -> None:
    body = b'{"id": "x"}'
    header = sign("whsec_right-secret", body, 1000)
    assert header.startswith("t=1000,v1=")
    assert verify("whsec_right-secret", header, body, 1100)
    assert not verify("whsec_wrong-secret", header, body, 1100)
    assert not verify("whsec_right-secret", header, body + b" ", 1100)
    assert not verify("whsec_right-secret", header, body, 1000 + 301)  # too old: a replay
    assert not verify("whsec_right-secret", "v1=abc", body, 1000)


def test_slack_format_is_text_only() -> None:
    [alert] = threshold_alerts([at(usd_to_nano("5"))], (), DEFAULTS, 1000)
    body = alert_body(alert, 1000)
    assert set(body) == {"id", "type", "created_at", "text", "scope", "data"}
    assert body["data"]["used"] == "5" and body["data"]["max"] == "10"  # as the admin API
    assert render(body, "slack") == '{"text":"capgate: ' + alert.text.replace('"', '\\"') + '"}'


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://10.0.0.1/", "http://192.168.1.1/", "http://[::1]/",
     "http://169.254.169.254/latest", "http://localhost:8080/", "http://0.0.0.0/"],
)  # fmt: skip
def test_private_targets_need_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="alerts_allow_private_targets"):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)


def test_target_urls_are_http() -> None:
    check_url("https://hooks.slack.com/services/x", allow_private=False)
    for bad in ("ftp://example.com/", "https:///nohost", "https://user:pw@example.com/"):
        with pytest.raises(ValueError, match=r"^url:"):
            check_url(bad, allow_private=True)


def test_backoff_doubles_and_is_bounded() -> None:
    assert [backoff(n, 10) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff(40, 10) == MAX_BACKOFF_S


def test_names_resolving_to_private_addresses_are_refused_when_sending() -> None:
    async def resolve() -> None:
        resolver = GuardedResolver()
        try:
            with pytest.raises(PrivateTarget, match="private address"):
                await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    asyncio.run(resolve())
