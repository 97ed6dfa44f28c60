"""Hook mode's server side (issue #13), through plain HTTP as the hook on a machine calls
it: two real server processes on one database (a SQLite file; PostgreSQL nodes), install
codes, the gate and its leases, every limit kind with its message, 20 prompts at once,
reports counted once (transcript and OpenTelemetry), exact costs, lease expiry, checks,
status, and the doors refusing each other's credentials."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from capgate.core.limits import format_usd, usd_to_nano
from capgate.core.windows import WindowKind, format_reset, window_at
from capgate.hook.gate import lease_id
from conftest import Capgate, Upstream, gateway_config, start_capgate

LEASE_S = 4.0
SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5"
NANO = 1_000_000_000
# What a sonnet prompt holds: 20,000 input tokens at $3/Mtok + 2,000 output at $15/Mtok.
SONNET_PROMPT_NANO = 20_000 * 3_000 + 2_000 * 15_000  # $0.09


@dataclass
class Pair:
    one: Capgate
    two: Capgate
    engine: str


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def servers(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two server processes on one database (the lease made by one, settled by the other)."""
    tmp = tmp_path_factory.mktemp("hook")
    config = gateway_config(upstream, server={"hook_lease_s": LEASE_S})
    args: tuple[str, ...] = ()
    if request.param == "postgres":
        args = ("--database-url", request.getfixturevalue("postgres").new_database())
    one = start_capgate(tmp, config, args=args)
    two = start_capgate(tmp, config, db=one.db, args=args)
    try:
        yield Pair(one, two, request.param)
    finally:
        two.close()
        one.close()


_names = iter(range(1, 1_000_000))


def person(server: Capgate, **fields: Any) -> str:
    name = f"dev{next(_names)}"
    made = server.admin("POST", "/admin/users", json={"name": name, **fields})
    assert made.status_code == 201, made.text
    return name


def new_code(server: Capgate, user: str, **body: Any) -> dict[str, Any]:
    made = server.admin("POST", "/admin/hook/codes", json={"user": user, **body})
    assert made.status_code == 201, made.text
    return dict(made.json())


def enrol(
    server: Capgate, code: str, hostname: str = "laptop", client: httpx.Client | None = None
) -> httpx.Response:
    body = {
        "code": code, "hostname": hostname, "os": "linux", "os_user": "dev",
        "agents": ["claude"], "hook_version": "1.0",
    }  # fmt: skip
    if client is not None:
        return client.post(server.url + "/hook/v1/enrol", json=body)
    return httpx.post(server.url + "/hook/v1/enrol", json=body, timeout=30)


@dataclass
class Machine:
    token: str
    name: str
    user: str

    @property
    def key_id(self) -> str:
        return self.token[4:16]

    def post(self, server: Capgate, path: str, body: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.post(server.url + path, json=body, headers=headers, timeout=30)

    def gate(
        self, server: Capgate, session: str, prompt: str, model: str | None = SONNET
    ) -> dict[str, Any]:
        body = {
            "agent": "claude", "session_id": session, "prompt_id": prompt, "model": model,
            "model_source": "transcript" if model else None, "hook_version": "1.0",
        }  # fmt: skip
        answer = self.post(server, "/hook/v1/gate", body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def check(self, server: Capgate, **body: Any) -> dict[str, Any]:
        body = {"agent": "claude", "session_id": "s", "event": "PreToolUse", **body}
        answer = self.post(server, "/hook/v1/check", body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def report(
        self, server: Capgate, session: str, calls: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        answer = self.post(
            server,
            "/hook/v1/report",
            {"agent": "claude", "session_id": session, "calls": calls, **extra},
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def machine(server: Capgate, **user_fields: Any) -> Machine:
    user = person(server, **user_fields)
    answer = enrol(server, new_code(server, user)["code"], hostname=f"{user}-box")
    assert answer.status_code == 200, answer.text
    got = answer.json()
    return Machine(got["token"], got["machine"], got["user"])


def usage(server: Capgate, user: str) -> dict[str, tuple[int, int]]:
    """The user's limits: `metric[:model]` -> (used, reserved), nano-dollars for cost."""
    shown = server.admin("GET", f"/admin/users/{user}").json()
    out = {}
    for u in shown["usage"]:
        name = u["metric"] + (":" + u["model"] if u.get("model") else "")
        if u["metric"] == "cost_usd":
            out[name] = (usd_to_nano(u["used"]), usd_to_nano(u["reserved"]))
        else:
            out[name] = (u["used"], u["reserved"])
    return out


def call(ident: str, prompt: str | None, **tokens: int) -> dict[str, Any]:
    return {
        "id": ident,
        "message_id": "msg_" + ident,
        "prompt_id": prompt,
        "model": SONNET,
        **tokens,
    }


def today_reset(tz: str = "UTC") -> str:
    return format_reset(window_at(WindowKind.DAY, time.time(), tz).resets_at, tz)


# -- enrolment ------------------------------------------------------------------------------


def test_an_install_code_enrols_once_expires_and_wrong_ones_are_throttled(servers: Pair) -> None:
    one, two = servers.one, servers.two
    user = person(one)
    made = new_code(one, user, agents=["claude"])
    code = made["code"]
    assert code.startswith("cgi-") and len(code) == 4 + 32
    assert made["install"]["capgate"] == f"capgate hook install --server {one.url} --code {code}"
    assert made["install"]["curl"].startswith(f"curl -fsSL {one.url}/hook/install | sudo python3 -")
    first = enrol(two, code)  # redeemed through the other process
    assert first.status_code == 200, first.text
    got = first.json()
    assert got["token"].startswith("cgh-") and (got["machine"], got["user"]) == (
        f"{user}@laptop",
        user,
    )
    assert abs(got["server_time"] - time.time()) < 5
    again = enrol(one, code)
    assert again.status_code == 401 and again.json()["error"]["type"] == "invalid_code"
    (listed,) = [c for c in one.admin("GET", "/admin/hook/codes").json() if c["user"] == user]
    assert (listed["state"], listed["machine"], listed["id"]) == (
        "used",
        f"{user}@laptop",
        made["id"],
    )
    assert "code" not in listed
    machines = [m for m in two.admin("GET", "/admin/hook/machines").json() if m["user"] == user]
    assert [
        (m["name"], m["hostname"], m["os"], m["agents"], m["hook_version"]) for m in machines
    ] == [(f"{user}@laptop", "laptop", "linux", ["claude"], "1.0")]
    short = new_code(one, user, ttl_s=1)["code"]
    time.sleep(1.2)
    expired = enrol(one, short)
    assert expired.status_code == 401 and expired.json()["error"]["type"] == "invalid_code"
    deleted = new_code(one, user)
    assert one.admin("DELETE", f"/admin/hook/codes/{deleted['id']}").status_code == 204
    assert enrol(two, deleted["code"]).status_code == 401

    # Wrong codes from one address: 401 each, then 429 with Retry-After, on both processes.
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    with other:
        wrong = [enrol(one if n % 2 else two, f"cgi-{'a' * 32}", client=other) for n in range(10)]
        assert {r.status_code for r in wrong} == {401}
        blocked = enrol(two, new_code(one, user)["code"], client=other)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 500
    assert enrol(one, new_code(one, user)["code"]).status_code == 200  # another address


# -- the gate -------------------------------------------------------------------------------


def test_a_gate_holds_a_lease_that_a_report_on_the_other_process_settles(servers: Pair) -> None:
    one, two = servers.one, servers.two
    m = machine(one, limits=[
        {"metric": "requests", "window": "day", "max": 10},
        {"metric": "cost_usd", "window": "day", "max": "5"},
        {"metric": "credits", "window": "day", "max": 100},
    ])  # fmt: skip
    answer = m.gate(one, "s1", "p1")
    lease = lease_id(m.key_id, "claude", "s1", "p1")
    assert (answer["decision"], answer["lease"], answer["model"], answer["message"]) == (
        "allow",
        lease,
        SONNET,
        None,
    )
    cache = answer["cache"]
    assert cache["valid_until"] == cache["issued_at"] + 86_400 and cache["status"] == "active"
    assert cache["prices"][SONNET] == {
        "input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75", "cache_write_1h": "6"
    }  # fmt: skip
    assert cache["estimate"] == {"input": 20_000, "output": 2_000}
    held = {(x["metric"], x["used"]) for x in cache["limits"]}
    assert ("requests", 1) in held and ("cost_usd", SONNET_PROMPT_NANO) in held
    assert usage(two, m.user)["requests"] == (0, 1)
    assert usage(two, m.user)["credits"] == (0, 3)
    again = m.gate(two, "s1", "p1")  # a retried gate, on the other process: no second lease
    assert (again["decision"], again["lease"]) == ("allow", lease)
    assert usage(one, m.user)["requests"] == (0, 1)

    # One call of the prompt, with 5-minute and 1-hour cache writes: exact cost.
    tokens = {
        "input": 1000,
        "output": 500,
        "cache_read": 2000,
        "cache_write": 3000,
        "cache_write_1h": 1000,
    }
    first = m.report(two, "s1", [call("req_1", "p1", **tokens)])
    assert first == {"recorded": 1, "duplicates": 0}
    cost = 1000 * 3000 + 500 * 15000 + 2000 * 300 + 2000 * 3750 + 1000 * 6000  # nano-dollars
    assert cost == 24_600_000
    now = usage(one, m.user)
    assert now["requests"] == (1, 0) and now["credits"] == (3, 0)  # the prompt, not the call
    assert now["cost_usd"][1] == 0
    (entry,) = one.ledger(request_id="hc-req_1")
    assert (entry["cost_usd"], entry["session"], entry["prompt"], entry["flags"]) == (
        "0.0246",
        "s1",
        "p1",
        ["hook_report"],
    )
    assert (entry["input_tokens"], entry["cache_write_tokens"], entry["endpoint"]) == (
        1000,
        3000,
        "hook/call",
    )
    (prompt_entry,) = two.ledger(request_id=lease)
    assert (prompt_entry["outcome"], prompt_entry["endpoint"], prompt_entry["cost_usd"]) == (
        "ok",
        "hook/prompt",
        "0",
    )
    assert (prompt_entry["session"], prompt_entry["prompt"], prompt_entry["provider"]) == (
        "s1",
        "p1",
        "claude-code",
    )
    # The same report again, and the call through OpenTelemetry: counted once.
    assert m.report(one, "s1", [call("req_1", "p1", **tokens)]) == {"recorded": 0, "duplicates": 1}
    otel = m.post(two, "/v1/logs", otlp([api_request("req_1", "s1", "p1")]))
    assert otel.status_code == 200, otel.text
    assert len(one.ledger(request_id="hc-req_1")) == 1
    assert m.gate(one, "s1", "p1")["decision"] == "allow"  # settled: still the same answer
    assert usage(two, m.user)["requests"] == (1, 0)


def otlp(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceLogs": [{"resource": {"attributes": []}, "scopeLogs": [{"logRecords": records}]}]
    }


def api_request(request_id: str, session: str, prompt: str, **tokens: int) -> dict[str, Any]:
    attrs = {
        "event.name": "api_request", "session.id": session, "prompt.id": prompt,
        "model": SONNET, "request_id": request_id, "input_tokens": 630, "output_tokens": 9,
        "cache_read_tokens": 0, "cache_creation_tokens": 0, "cache_creation_1h_tokens": 0,
        "cost_usd": 0.002, **tokens,
    }  # fmt: skip
    return {
        "attributes": [
            {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else
             {"doubleValue": v} if isinstance(v, float) else {"stringValue": v}}
            for k, v in attrs.items()
        ]
    }  # fmt: skip


def closed_now() -> dict[str, str]:
    """A schedule for sonnet that is closed now (it opens in two hours)."""
    start = datetime.now(UTC) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return {
        "model": "claude-sonnet-*",
        "start": start.strftime("%H:%M"),
        "end": end.strftime("%H:%M"),
    }


@pytest.mark.parametrize(
    "kind", ["model_cap", "credits", "dollars", "prompts", "schedule", "paused", "killed"]
)
def test_a_prompt_over_a_limit_is_blocked_with_what_is_left(servers: Pair, kind: str) -> None:
    one, two = servers.one, servers.two
    models = [SONNET, HAIKU]
    limits = {
        "model_cap": [{"model": "claude-sonnet-*", "metric": "requests", "window": "day", "max": 1},
                      {"metric": "requests", "window": "day", "max": 20}],
        "credits": [{"metric": "credits", "window": "day", "max": 5}],
        "dollars": [{"metric": "cost_usd", "window": "day", "max": "0.12"}],
        "prompts": [{"metric": "requests", "window": "day", "max": 1}],
    }.get(kind, [])  # fmt: skip
    fields: dict[str, Any] = {"limits": limits, "models": models}
    if kind == "schedule":
        fields["schedules"] = [closed_now()]
    m = machine(one, **fields)
    if kind not in ("schedule", "paused", "killed"):
        # In the same session the next prompt ends this one (settled: used); in another
        # session it is still held.
        first_session = "s" if kind in ("model_cap", "prompts") else "s-other"
        assert m.gate(one, first_session, "p1")["decision"] == "allow"
    if kind == "paused":
        assert one.admin("POST", f"/admin/users/{m.user}/pause").status_code == 200
    if kind == "killed":
        assert (
            one.admin("POST", f"/admin/users/{m.user}/kill", json={"logout": True}).status_code
            == 200
        )
    answer = m.gate(two, "s", "p2")
    assert answer["decision"] == "block" and answer["lease"] is None, answer
    who = f'user "{m.user}"'
    reset = today_reset()
    expected = {
        "model_cap": f"capgate: The daily prompt limit for claude-sonnet-* of {who} is reached: 1 of "
        f"1 prompt used; resets {reset}. Switch to {HAIKU}: 19 of 20 prompts left today.",
        "credits": f"capgate: The daily credit limit of {who} is reached: 0 of 5 credits used, 3 held "
        f"by prompts in flight, and a prompt holds up to 3 until its usage is counted; resets {reset}. "
        f"Switch to {HAIKU}: 2 of 5 credits left today.",
        "dollars": f"capgate: The daily dollar limit of {who} is reached: $0.00 of $0.12 used, $0.09 "
        f"held by prompts in flight, and a prompt holds up to $0.09 until its usage is counted; "
        f"resets {reset}. Switch to {HAIKU}: $0.03 of $0.12 left today.",
        "prompts": f"capgate: The daily prompt limit of {who} is reached: 1 of 1 prompt used; resets "
        f"{reset}. No other model fits either.",
        "paused": f"capgate: The {who} is paused by an administrator; ask them to resume it.",
        "killed": f"capgate: The {who} is paused by an administrator; ask them to resume it.",
    }  # fmt: skip
    if kind == "schedule":
        assert answer["message"].startswith(
            f'capgate: Model "{SONNET}" may be used by {who} only daily '
        )
        assert answer["message"].endswith(f"Switch to {HAIKU}: no limit applies to it.")
        assert answer["cache"]["blocked_models"] == {
            SONNET: closed_now_text(fields["schedules"][0])
        }
    else:
        assert answer["message"] == expected[kind]
    assert answer["logout"] is (kind == "killed") and answer["cache"]["logout"] is (
        kind == "killed"
    )
    (refused,) = one.ledger(request_id=lease_id(m.key_id, "claude", "s", "p2"))
    assert (refused["outcome"], refused["session"], refused["prompt"]) == ("refused", "s", "p2")
    retried = m.gate(one, "s", "p2")  # the same answer, nothing new in the ledger
    assert (retried["decision"], retried["message"]) == ("block", answer["message"])
    assert len(two.ledger(request_id=lease_id(m.key_id, "claude", "s", "p2"))) == 1
    if kind == "killed":
        stop = m.check(two, prompt_id="p1", model=SONNET)
        assert (stop["decision"], stop["logout"]) == ("stop", True)
        assert one.admin("POST", f"/admin/users/{m.user}/resume").status_code == 200
        after = m.gate(two, "s", "p3")
        assert (after["decision"], after["logout"]) == ("allow", False)


def closed_now_text(schedule: dict[str, str]) -> str:
    return f"daily {schedule['start']}-{schedule['end']} UTC"


def test_twenty_prompts_at_once_against_a_budget_for_five(servers: Pair) -> None:
    """The gate's leases: 20 prompts of one person at once, on two processes, against a
    budget that pays five prompts' estimates: exactly five are admitted."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[{"metric": "cost_usd", "window": "day", "max": "0.45"}])

    def prompt(n: int) -> dict[str, Any]:
        return m.gate(one if n % 2 else two, f"session-{n}", "p")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(prompt, range(20)))
    admitted = [a for a in answers if a["decision"] == "allow"]
    assert len(admitted) == 5, [a["message"] for a in answers]
    assert usage(one, m.user)["cost_usd"] == (0, 5 * SONNET_PROMPT_NANO)
    refused = [e for e in one.ledger(user=m.user) if e["outcome"] == "refused"]
    assert len(refused) == 15 and {e["prompt"] for e in refused} == {"p"}
    # Each admitted prompt's first call costs more than its estimate: the calls are counted
    # in full (past the limit), and the overshoot is bounded by the prompts in flight.
    costs = []
    for n, a in enumerate(answers):
        if a["decision"] == "allow":
            session = f"session-{n}"
            got = m.report(two, session, [call(f"r-{n}", "p", input=30_000, output=2_000)])
            assert got["recorded"] == 1
            costs.append(30_000 * 3000 + 2_000 * 15_000)
    used, held = usage(one, m.user)["cost_usd"]
    assert (used, held) == (sum(costs), 0)
    assert used - 450_000_000 == 5 * (120_000_000 - 90_000_000)  # in flight x (call - estimate)
    assert m.gate(one, "session-late", "p")["decision"] == "block"


def test_a_lease_expires_and_a_session_end_settles_its_prompts(servers: Pair) -> None:
    one, two = servers.one, servers.two
    m = machine(one, limits=[{"metric": "requests", "window": "day", "max": 10}])
    assert m.gate(one, "s-exp", "p1")["decision"] == "allow"
    assert usage(two, m.user)["requests"] == (0, 1)
    deadline = time.time() + LEASE_S + 15
    while usage(two, m.user)["requests"] != (1, 0) and time.time() < deadline:
        time.sleep(0.3)
    assert usage(two, m.user)["requests"] == (1, 0)  # settled by a server, as its prompt
    (entry,) = one.ledger(request_id=lease_id(m.key_id, "claude", "s-exp", "p1"))
    assert (entry["outcome"], entry["input_tokens"], entry["cost_usd"]) == ("ok", 0, "0")
    # The next prompt of a session ends the one before; a session end ends the rest.
    assert m.gate(two, "s-end", "a")["decision"] == "allow"
    assert m.gate(one, "s-end", "b")["decision"] == "allow"
    assert usage(one, m.user)["requests"] == (2, 1)
    assert m.report(two, "s-end", [], session_end=True) == {"recorded": 0, "duplicates": 0}
    assert usage(one, m.user)["requests"] == (3, 0)


def test_prompts_admitted_offline_are_counted_once_even_past_a_limit(servers: Pair) -> None:
    """A queued report lists the prompts the hook admitted from its cache: each becomes the
    prompt entry the gate would have made (its `hp-` id, 1 request, its model's credits,
    flag `offline`), once, even past the limit; a prompt also gated online counts once."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[
        {"metric": "requests", "window": "day", "max": 2},
        {"metric": "credits", "window": "day", "max": 100},
    ])  # fmt: skip
    assert m.gate(one, "s-off", "p0")["decision"] == "allow"  # online, then the server fell
    at = time.time() - 60
    offline = [{"prompt_id": p, "model": SONNET, "model_source": "transcript", "at": at}
               for p in ("p0", "p1", "p2", "p3")]  # fmt: skip
    queued = {"calls": [call("req_off", "p1", input=10, output=2)], "offline_prompts": offline}
    assert m.report(two, "s-off", **queued) == {"recorded": 1, "duplicates": 0}
    assert m.report(one, "s-off", **queued) == {"recorded": 0, "duplicates": 1}  # resent
    m.report(two, "s-off", [], session_end=True)  # p0's lease: the one count of p0
    assert usage(one, m.user)["requests"] == (4, 0)  # past the limit of 2: they happened
    assert usage(one, m.user)["credits"] == (12, 0)
    prompts = [e for e in one.ledger(user=m.user) if e["endpoint"] == "hook/prompt"]
    assert sorted(e["prompt"] for e in prompts) == ["p0", "p1", "p2", "p3"]
    for entry in prompts:
        assert entry["request_id"] == lease_id(m.key_id, "claude", "s-off", entry["prompt"])
        assert (entry["model"], entry["outcome"], entry["input_tokens"]) == (SONNET, "ok", 0)
        assert entry["flags"] == ([] if entry["prompt"] == "p0" else ["offline"])
    assert m.gate(one, "s-off", "p3")["decision"] == "allow"  # counted: the same answer
    assert m.gate(two, "s-off", "p4")["decision"] == "block"  # 4 of 2 prompts used
    bad = {"agent": "claude", "session_id": "s-off", "calls": [call("req_x", "p9", input=1)],
           "offline_prompts": [{"prompt_id": "p9", "at": "yesterday"}]}  # fmt: skip
    refused = m.post(one, "/hook/v1/report", bad)
    assert refused.status_code == 400 and "offline_prompts[0].at" in refused.text
    assert one.ledger(request_id="hc-req_x") == []


# What a model missing from the price table costs: per token kind, the dearest rate of its
# agent's family in the bundled table, nano-dollars per token (claude-opus-4-0's for
# claude-*, gpt-5.4-pro's for gpt-*; no gpt-* model has a cheaper cache rate).
CLAUDE_CEILING = {
    "input": 15_000,
    "output": 75_000,
    "cache_read": 1_500,
    "5m": 18_750,
    "1h": 30_000,
}
GPT_CEILING = {"input": 30_000, "output": 180_000, "cache_read": 30_000}
CACHED_CALL = {"input": 1000, "output": 500, "cache_read": 2000, "cache_write": 3000,
               "cache_write_1h": 1000}  # fmt: skip


def claude_cost(ceiling: dict[str, int]) -> int:
    """CACHED_CALL's cost at `ceiling` (2,000 of its cache writes for 5 minutes, 1,000 for
    an hour)."""
    return (
        1000 * ceiling["input"] + 500 * ceiling["output"] + 2000 * ceiling["cache_read"]
        + 2000 * ceiling["5m"] + 1000 * ceiling["1h"]
    )  # fmt: skip


def test_a_call_of_an_unpriced_model_is_charged_at_its_familys_dearest_rates(
    servers: Pair,
) -> None:
    """A model the price table does not know is not free: each call is charged at the
    dearest rates of its agent's family, per token kind, and flagged `unpriced_model`."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[{"metric": "cost_usd", "window": "day", "max": "100"}])
    new_claude = {**call("nova-1", "p1", **CACHED_CALL), "model": "claude-nova-9"}
    assert m.report(two, "s", [new_claude]) == {"recorded": 1, "duplicates": 0}
    codex = {"agent": "codex", "session_id": "t", "calls": [
        {"id": "resp_1", "prompt_id": "turn1", "model": "gpt-9-nova", "input": 1000,
         "output": 100, "cache_read": 4000},
    ]}  # fmt: skip
    assert m.post(one, "/hook/v1/report", codex).status_code == 200
    claude_nano = claude_cost(CLAUDE_CEILING)
    assert claude_nano == 123_000_000
    gpt_nano = (
        1000 * GPT_CEILING["input"] + 100 * GPT_CEILING["output"] + 4000 * GPT_CEILING["cache_read"]
    )
    assert gpt_nano == 168_000_000
    got = {
        e["request_id"]: (e["model"], e["provider"], e["cost_usd"], e["flags"])
        for e in one.ledger(user=m.user)
    }
    assert got == {
        "hc-nova-1": ("claude-nova-9", "claude-code", "0.123", ["hook_report", "unpriced_model"]),
        "hc-resp_1": ("gpt-9-nova", "codex", "0.168", ["hook_report", "unpriced_model"]),
    }
    assert usage(two, m.user)["cost_usd"] == (claude_nano + gpt_nano, 0)
    # A priced model's call is not flagged.
    m.report(one, "s", [call("priced-1", "p1", input=10)])
    (priced,) = two.ledger(request_id="hc-priced-1")
    assert (priced["cost_usd"], priced["flags"]) == ("0.00003", ["hook_report"])


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_prompt_of_an_unpriced_model_holds_the_dearest_rates_and_is_logged(
    engine: str, request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> None:
    """With unpriced models allowed, the gate holds such a prompt's estimate at the dearest
    rates of the agent's family (not $0), and the server logs one line naming the model
    (never a token). An admin price ("claude-reader-x", cache reads dearer than any other)
    shows that the dearest rate is taken per token kind."""
    config = gateway_config(upstream, server={"allow_unpriced_models": True})
    config["pricing"] = {"claude-reader-x": {"input": "1", "output": "2", "cache_read": "5"}}
    args: tuple[str, ...] = ()
    if engine == "postgres":
        args = ("--database-url", request.getfixturevalue("postgres").new_database())
    log = tmp_path / "server.log"
    server = start_capgate(tmp_path, config, args=args, log=log)
    try:
        m = machine(server, limits=[{"metric": "cost_usd", "window": "day", "max": "1"}])
        answer = m.gate(server, "s", "p1", model="claude-nova-9")
        assert (answer["decision"], answer["model"]) == ("allow", "claude-nova-9"), answer
        held = 20_000 * CLAUDE_CEILING["input"] + 2_000 * CLAUDE_CEILING["output"]
        assert usage(server, m.user)["cost_usd"] == (0, held) and held == 450_000_000
        # A second prompt would hold as much again: over the $1 limit with the first.
        assert m.gate(server, "s-2", "p1", model="claude-nova-9")["decision"] == "allow"
        third = m.gate(server, "s-3", "p1", model="claude-nova-9")
        assert third["decision"] == "block", third
        new_claude = {**call("nova-2", "p1", **CACHED_CALL), "model": "claude-nova-9"}
        m.report(server, "s", [new_claude])
        nano = claude_cost({**CLAUDE_CEILING, "cache_read": 5_000})
        assert nano == 130_000_000
        (entry,) = server.ledger(request_id="hc-nova-2")
        assert (entry["cost_usd"], entry["flags"]) == ("0.13", ["hook_report", "unpriced_model"])
        assert usage(server, m.user)["cost_usd"] == (nano, held)  # the first prompt settled
    finally:
        server.close()
    lines = [line for line in log.read_text().splitlines() if "hook_unpriced_model" in line]
    assert len(lines) == 4, lines  # three gates, one report
    assert all("model=claude-nova-9" in line and m.user in line for line in lines)
    assert "at=report" in lines[-1]
    assert m.token not in log.read_text() and m.token[16:] not in log.read_text()


def test_a_check_stops_a_turn_over_its_dollars_and_refuses_a_switch(servers: Pair) -> None:
    one, two = servers.one, servers.two
    m = machine(one, limits=[
        {"metric": "cost_usd", "window": "day", "max": "0.20"},
        {"model": HAIKU, "metric": "requests", "window": "day", "max": 0},
    ])  # fmt: skip
    assert m.gate(one, "s", "p1")["decision"] == "allow"
    fine = m.check(two, prompt_id="p1", model=SONNET)
    assert (fine["decision"], fine["message"]) == ("allow", None)
    switch = m.check(two, prompt_id="p1", model=SONNET, event="PreModelSwitch", to_model=HAIKU)
    assert switch["decision"] == "stop"
    assert switch["message"].startswith(f"capgate: The daily prompt limit for {HAIKU} of user")
    # A call that spends past the limit: the next tool call stops the turn.
    m.report(one, "s", [call("big", "p1", input=0, output=14_000)])  # $0.21
    stop = m.check(two, prompt_id="p1", model=SONNET)
    assert stop["decision"] == "stop" and stop["logout"] is False
    assert stop["message"] == (
        f'capgate: The daily dollar limit of user "{m.user}" is reached: $0.21 of $0.20 used; '
        f"resets {today_reset()}."
    )


def test_a_task_notification_is_checked_not_gated(servers: Pair) -> None:
    """A background task's result (UserPromptSubmit, `<task-notification>`) is a check: no
    lease, no prompt entry, the prompt limit untouched; stopped when the person is killed."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[{"metric": "requests", "window": "day", "max": 1}])
    assert m.gate(one, "s-task", "p1")["decision"] == "allow"
    m.report(two, "s-task", [call("task-1", "p1", input=10)], ended_prompts=["p1"])
    body = {"session_id": "s-task", "prompt_id": "n1", "event": "UserPromptSubmit",
            "model": SONNET}  # fmt: skip
    assert m.check(two, **body)["decision"] == "allow"  # the one prompt of the day is used
    assert usage(one, m.user)["requests"] == (1, 0)
    assert one.ledger(request_id=lease_id(m.key_id, "claude", "s-task", "n1")) == []
    assert one.admin("POST", f"/admin/users/{m.user}/kill", json={}).status_code == 200
    time.sleep(1.1)  # a check sees a kill made through another process within a second
    stopped = m.check(two, **body)
    assert stopped["decision"] == "stop" and "paused" in stopped["message"]


def audit_of(server: Capgate, target: str) -> list[dict[str, Any]]:
    """The audit entries about `target`, oldest first."""
    items = server.admin("GET", "/admin/audit", params={"limit": 1000}).json()["items"]
    return sorted((a for a in items if a["target"] == target), key=lambda a: a["id"])


def test_a_kill_is_one_audit_entry_and_a_resume_another(servers: Pair) -> None:
    """Killing a person is one change (paused and marked in one transaction): one audit
    entry `kill` with the person before and after; resuming is one `resume` entry that
    clears the mark. Through either process, on both engines."""
    one, two = servers.one, servers.two
    m = machine(one, metadata={"team_lead": "ann"})
    target = f"user:{m.user}"
    before = audit_of(two, target)
    killed = one.admin("POST", f"/admin/users/{m.user}/kill", json={"logout": True})
    assert killed.status_code == 200, killed.text
    assert (killed.json()["status"], killed.json()["metadata"]) == (
        "paused",
        {"team_lead": "ann", "hook_logout": True},
    )
    (kill,) = audit_of(two, target)[len(before) :]
    assert (kill["action"], kill["actor"]) == ("kill", "admin")
    assert (kill["before"]["status"], kill["before"]["metadata"]) == (
        "active",
        {"team_lead": "ann"},
    )
    assert (kill["after"]["status"], kill["after"]["metadata"]) == (
        "paused",
        {"team_lead": "ann", "hook_logout": True},
    )
    blocked = m.gate(two, "s", "p1")
    assert (blocked["decision"], blocked["logout"]) == ("block", True)

    resumed = two.admin("POST", f"/admin/users/{m.user}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["metadata"] == {"team_lead": "ann"}
    (resume,) = audit_of(one, target)[len(before) + 1 :]
    assert resume["action"] == "resume"
    assert (resume["before"]["status"], resume["before"]["metadata"]["hook_logout"]) == (
        "paused",
        True,
    )
    assert (resume["after"]["status"], resume["after"]["metadata"]) == (
        "active",
        {"team_lead": "ann"},
    )
    after = m.gate(one, "s", "p2")
    assert (after["decision"], after["logout"]) == ("allow", False)

    # A kill without logout; an unknown or revoked person: refused, nothing written.
    quiet = two.admin("POST", f"/admin/users/{m.user}/kill", json={"logout": False})
    assert quiet.json()["metadata"] == {"team_lead": "ann", "hook_logout": False}
    assert [a["action"] for a in audit_of(one, target)[len(before) :]] == ["kill", "resume", "kill"]
    missing = one.admin("POST", "/admin/users/nobody-here/kill", json={"logout": True})
    assert missing.status_code == 404 and audit_of(one, "user:nobody-here") == []
    assert one.admin("POST", f"/admin/users/{m.user}/revoke").status_code == 200
    again = one.admin("POST", f"/admin/users/{m.user}/kill", json={"logout": True})
    assert again.status_code == 400, again.text
    assert two.admin("GET", f"/admin/users/{m.user}").json()["status"] == "revoked"
    assert audit_of(two, target)[-1]["action"] == "revoke"


def test_status_rows_and_tamper(servers: Pair) -> None:
    one, two = servers.one, servers.two
    m = machine(
        one, limits=[{"metric": "cost_usd", "window": "day", "max": "1.5"}], timezone="Europe/Paris"
    )
    m.gate(one, "s", "p")
    got = httpx.get(two.url + "/hook/v1/status", headers={"authorization": f"Bearer {m.token}"})
    assert got.status_code == 200, got.text
    status = got.json()
    assert (status["user"], status["machine"], status["timezone"], status["status"]) == (
        m.user,
        m.name,
        "Europe/Paris",
        "active",
    )
    (row,) = status["limits"]
    assert row == {
        "scope": f"user:{m.user}", "metric": "cost_usd", "window": "day", "model": None,
        "max": 1_500_000_000, "used": 0, "held": SONNET_PROMPT_NANO,
        "left": 1_500_000_000 - SONNET_PROMPT_NANO,
        "resets_at": float(window_at(WindowKind.DAY, time.time(), "Europe/Paris").resets_at),
        "max_text": "$1.50", "used_text": "$0.00", "left_text": "$1.41",
    }  # fmt: skip
    tamper = m.post(
        two, "/hook/v1/tamper", {"files": ["/etc/capgate-hook/hook.py"], "hook_version": "1.0"}
    )
    assert tamper.status_code == 200, tamper.text
    (listed,) = [x for x in one.admin("GET", "/admin/hook/machines").json() if x["name"] == m.name]
    assert listed["tampered_at"] is not None and listed["tamper_files"] == [
        "/etc/capgate-hook/hook.py"
    ]
    audit = one.admin("GET", "/admin/audit", params={"limit": 50}).json()["items"]
    assert any(a["action"] == "hook-tamper" and a["target"] == f"key:{m.name}" for a in audit)


# -- one budget over both doors ------------------------------------------------------------


def ask_gateway(server: Capgate, key: str, max_tokens: int, text: str) -> httpx.Response:
    body = {"model": SONNET, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    return httpx.post(
        server.url + "/v1/messages", json=body, headers={"x-api-key": key}, timeout=30
    )


def test_one_user_budget_over_the_gateway_and_hook_machines(servers: Pair) -> None:
    """A person with a gateway key (`user` set) and an enrolled machine has one dollar
    budget: spending through the gateway (the real gateway, the mock upstream) lowers what
    the hook gate admits, and calls the hook reports lower what the gateway admits. The
    person's counters are the sum of the ledger over both kinds of entries."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[
        {"metric": "cost_usd", "window": "day", "max": "0.30"},
        {"metric": "requests", "window": "day", "max": 100},
    ])  # fmt: skip
    key = one.create_key(f"gw-{m.user}", user=m.user)

    # The gateway spends 8,000 output tokens of sonnet: $0.12, and a little input.
    spent = ask_gateway(one, key, 8000, "mock:words=8000")
    assert spent.status_code == 200, spent.text
    (gateway_entry,) = one.ledger(user=m.user)  # read where it was settled: committed
    gateway_nano = usd_to_nano(gateway_entry["cost_usd"])
    assert 120_000_000 < gateway_nano < 121_000_000
    # Two hook prompts ($0.09 each) would fit $0.30; after the gateway's $0.12 one does.
    assert m.gate(two, "s1", "p1")["decision"] == "allow"
    second = m.gate(one, "s2", "p1")
    assert second["decision"] == "block"
    assert second["message"].startswith(
        f'capgate: The daily dollar limit of user "{m.user}" is reached: '
        f"{format_usd(gateway_nano)} of $0.30 used, $0.09 held by prompts in flight"
    )

    # The hook reports the prompt's call: 55,000 input tokens, $0.165. The gateway request
    # it admitted in full before ($0.03 of output at most, left: $0.18 - $0.09 held) now
    # does not fit, nor can it be clamped to 1,024 tokens: refused.
    assert m.report(one, "s1", [call("both-doors-1", "p1", input=55_000)])["recorded"] == 1
    refused = ask_gateway(two, key, 2000, "mock:words=5")
    assert refused.status_code == 402, refused.text
    assert f'user "{m.user}"' in refused.json()["error"]["message"]
    small = ask_gateway(two, key, 5, "mock:words=5")  # what still fits is admitted
    assert small.status_code == 200, small.text

    entries = two.ledger(user=m.user)
    kinds = {(e["endpoint"], e["outcome"]) for e in entries}
    assert kinds == {
        ("messages", "ok"), ("messages", "refused"), ("hook/prompt", "ok"),
        ("hook/prompt", "refused"), ("hook/call", "ok"),
    }, kinds  # fmt: skip
    cost_used, cost_held = usage(one, m.user)["cost_usd"]
    assert cost_held == 0
    assert cost_used == sum(usd_to_nano(e["cost_usd"]) for e in entries)
    assert cost_used == gateway_nano + 165_000_000 + usd_to_nano(
        next(e for e in entries if e["request_id"] == small.headers["x-capgate-request-id"])[
            "cost_usd"
        ]
    )
    admitted = [e for e in entries if e["outcome"] == "ok" and e["endpoint"] != "hook/call"]
    assert usage(one, m.user)["requests"] == (len(admitted), 0) and len(admitted) == 3


# -- doors and bad input --------------------------------------------------------------------


def test_each_door_refuses_the_other_credentials(servers: Pair) -> None:
    one = servers.one
    m = machine(one)
    gateway_key = one.create_key(f"gw-{m.user}")
    at_gateway = httpx.post(
        one.url + "/v1/messages",
        json={"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": m.token},
    )
    assert at_gateway.status_code == 401, at_gateway.text
    body = {"agent": "claude", "session_id": "s", "prompt_id": "p", "model": SONNET}
    for token in (gateway_key, one.admin_key, "cgh-" + "a" * 12 + "-nope", "cgh-short"):
        refused = httpx.post(
            one.url + "/hook/v1/gate", json=body, headers={"authorization": f"Bearer {token}"}
        )
        assert (
            refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        )
    for path in ("/v1/logs", "/v1/metrics"):
        assert httpx.post(one.url + path, json=otlp([])).status_code == 401
        assert (
            httpx.post(
                one.url + path, json=otlp([]), headers={"authorization": f"Bearer {gateway_key}"}
            ).status_code
            == 401
        )
    assert m.post(one, "/v1/metrics", {"resourceMetrics": []}).status_code == 200
    one.admin("POST", f"/admin/keys/{m.name}/revoke")
    assert m.post(one, "/hook/v1/gate", body).status_code == 401  # a revoked machine
    assert one.ledger(user=m.user) == []


@pytest.mark.parametrize(
    "report",
    [
        {"calls": [call(f"c{n}", "p", input=1) for n in range(1001)]},
        {"calls": [call("c", "p", input=-1)]},
        {"calls": [call("c", "p", output=2**40)]},
        {"calls": [call("ok", "p", input=1), call("c", "p", cache_write=1, cache_write_1h=2)]},
        {"calls": [call("ok", "p", input=1), {"id": "x", "input": 1}]},
        {"calls": [call("ok", "p", input=1), {"model": SONNET, "input": 1}]},
        {"calls": [call("ok", "p", input=True)]},
        {"calls": "nope"},
        {"calls": [], "session_end": "yes"},
    ],
    ids=[
        "1001-calls",
        "negative",
        "2^40",
        "1h-over-total",
        "no-model",
        "no-id",
        "bool",
        "not-list",
        "bad-end",
    ],
)
def test_a_bad_report_is_refused_whole(servers: Pair, report: dict[str, Any]) -> None:
    one = servers.one
    m = machine(one)
    answer = m.post(one, "/hook/v1/report", {"agent": "claude", "session_id": "s", **report})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert one.ledger(user=m.user) == []


def test_bad_bodies_and_otlp_change_nothing(servers: Pair) -> None:
    one = servers.one
    m = machine(one)
    for path, body in (
        ("/hook/v1/gate", {"agent": "cursor", "session_id": "s", "prompt_id": "p"}),
        ("/hook/v1/gate", {"agent": "claude", "session_id": "", "prompt_id": "p"}),
        ("/hook/v1/gate", ["not", "an", "object"]),
        ("/hook/v1/check", {"agent": "claude", "session_id": "s", "event": "Stop"}),
        ("/hook/v1/check", {"agent": "claude", "session_id": "s", "event": "PreModelSwitch"}),
        ("/hook/v1/tamper", {"files": "x"}),
        ("/v1/logs", {"resourceLogs": "x"}),
        ("/v1/logs", otlp([api_request("ok", "s", "p"), {"attributes": [
            {"key": "event.name", "value": {"stringValue": "api_request"}}]}])),
    ):  # fmt: skip
        answer = m.post(one, path, body)
        assert answer.status_code == 400, (path, answer.text)
    not_json = httpx.post(
        one.url + "/hook/v1/gate", content=b"{", headers={"authorization": f"Bearer {m.token}"}
    )
    assert not_json.status_code == 400
    big = httpx.post(
        one.url + "/v1/logs", content=b"x" * (5 * 1024 * 1024 + 10),
        headers={"authorization": f"Bearer {m.token}", "content-type": "application/json"},
    )  # fmt: skip
    assert big.status_code == 413
    assert one.ledger(user=m.user) == []
    # A good OTLP post: api_request records are calls (flag otel), other events ignored.
    other = {"attributes": [{"key": "event.name", "value": {"stringValue": "user_prompt"}}]}
    good = m.post(
        one,
        "/v1/logs",
        otlp(
            [
                api_request("o1", "s", "p", cache_creation_tokens=100, cache_creation_1h_tokens=40),
                other,
            ]
        ),
    )
    assert good.status_code == 200, good.text
    (entry,) = one.ledger(user=m.user)
    assert (entry["request_id"], entry["flags"], entry["cache_write_tokens"]) == (
        "hc-o1",
        ["hook_report", "otel"],
        100,
    )
    # 630 input at $3, 9 output at $15, 60 5m writes at $3.75, 40 1h writes at $6 per Mtok.
    assert entry["cost_usd"] == str((630 * 3000 + 9 * 15000 + 60 * 3750 + 40 * 6000) / NANO)


def test_the_client_files_are_served_with_their_hash(servers: Pair, tmp_path: Path) -> None:
    import hashlib

    from capgate.hook import client

    folder = Path(client.__file__).parent
    for url_path, name in (("/hook/install", "install.py"), ("/hook/client/hook.py", "hook.py"),
                           ("/hook/client/watchdog.py", "watchdog.py")):  # fmt: skip
        got = httpx.get(servers.two.url + url_path)
        assert got.status_code == 200, (url_path, got.text)
        data = (folder / name).read_bytes()
        assert got.content == data and got.headers["content-type"].startswith("text/x-python")
        assert got.headers["x-capgate-sha256"] == hashlib.sha256(data).hexdigest()
    for bad in ("/hook/client/..%2Fkeys.py", "/hook/client/nope.py", "/hook/client/hook.txt"):
        assert httpx.get(servers.one.url + bad).status_code == 404


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_lease_outlives_the_process_that_made_it(
    engine: str, request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path
) -> None:
    """`kill -9` of the process that holds a prompt's lease: the others' sweep (which
    charges a dead process's gateway requests in full) leaves it alone; a report through
    another process settles it as the prompt it is."""
    import signal

    config = gateway_config(upstream, server={"lease_seconds": 1, "hook_lease_s": 600})
    args: tuple[str, ...] = ()
    if engine == "postgres":
        args = ("--database-url", request.getfixturevalue("postgres").new_database())
    one = start_capgate(tmp_path, config, args=args)
    two = start_capgate(tmp_path, config, db=one.db, args=args)
    try:
        m = machine(two, limits=[{"metric": "requests", "window": "day", "max": 10}])
        assert m.gate(one, "s", "p")["decision"] == "allow"
        one.proc.send_signal(signal.SIGKILL)
        one.proc.wait(10)
        deadline = time.time() + 6  # many sweeps of the survivor (every lease / 6 seconds)
        while time.time() < deadline:
            assert [e["outcome"] for e in two.ledger(user=m.user)] == []
            time.sleep(0.5)
        assert usage(two, m.user)["requests"] == (0, 1)
        m.report(two, "s", [call("after-kill", "p", input=10)])
        assert usage(two, m.user)["requests"] == (1, 0)
        lease = lease_id(m.key_id, "claude", "s", "p")
        (entry,) = two.ledger(request_id=lease)
        assert entry["outcome"] == "ok"
    finally:
        two.close()
        one.close()


def test_the_admin_cli_makes_codes_lists_machines_kills_and_resumes(servers: Pair) -> None:
    import os
    import subprocess
    import sys

    one, two = servers.one, servers.two
    user = person(one, limits=[{"metric": "requests", "window": "day", "max": 5}])
    env = {
        **os.environ,
        "CAPGATE_ADMIN_KEY": one.admin_key,
        "CAPGATE_URL": one.url,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "capgate", "hook", *args], env=env, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = cli("code", "--user", user, "--ttl", "2h", "--claude")
    (code,) = [w for w in shown.split() if w.startswith("cgi-")][:1]
    assert f"capgate hook install --server {one.url} --code {code}" in shown
    assert (
        f"curl -fsSL {one.url}/hook/install | sudo python3 - --server {one.url} --code {code}"
        in shown
    )
    enrolled = enrol(two, code, hostname="cli-box")
    assert enrolled.status_code == 200, enrolled.text
    got = enrolled.json()
    m = Machine(got["token"], got["machine"], got["user"])
    codes = cli("codes", "--json")
    import json

    (listed,) = [c for c in json.loads(codes) if c["user"] == user]
    assert (listed["state"], listed["agents"], listed["machine"]) == ("used", ["claude"], m.name)
    assert code not in codes
    assert m.name in cli("machines")
    assert f"User {user} killed and logged out" in cli("kill", user, "--logout")
    blocked = m.gate(two, "s", "p")
    assert (blocked["decision"], blocked["logout"]) == ("block", True)
    assert f"User {user} resumed." in cli("resume", user)
    after = m.gate(one, "s", "p2")
    assert (after["decision"], after["logout"]) == ("allow", False)


def test_a_gate_retried_through_both_processes_at_once_holds_one_lease(servers: Pair) -> None:
    """A hook that timed out and retried, its two tries answered by two processes at the
    same moment: both allowed, one lease."""
    one, two = servers.one, servers.two
    m = machine(one, limits=[{"metric": "requests", "window": "day", "max": 100}])
    for round_ in range(10):

        def tries(
            n: int, session: str = f"s{round_}", prompt: str = f"p{round_}"
        ) -> dict[str, Any]:
            return m.gate(one if n % 2 else two, session, prompt)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(tries, range(8)))
        assert {(a["decision"], a["lease"]) for a in answers} == {
            ("allow", lease_id(m.key_id, "claude", f"s{round_}", f"p{round_}"))
        }
    # One lease per prompt: held, or settled as its prompt by the expiry (LEASE_S) when
    # the rounds take longer on a busy machine.
    assert sum(usage(two, m.user)["requests"]) == 10
