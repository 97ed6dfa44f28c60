"""Hook mode end to end with the real Claude Code 2.1.330 and Codex 0.169.0: capgate's hook
installed with a real install code from a real capgate server, in a private mount
namespace whose /etc is an overlay (tests/hookenv.py: the machine's /etc is never
written). The clients talk straight to capgate's mock (hook mode has no gateway), so the
tokens are known; the ledger and the mock's own request log are the truth."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from capgate.core.money import Usage
from capgate.mock.runner import MockUpstream
from capgate.pricing import PricingTable
from conftest import Capgate, Upstream, gateway_config, need, start_capgate, which
from hookenv import EtcOverlay

SONNET = "claude-sonnet-4-6"
pytestmark = pytest.mark.external


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    """The model server of the clients, in this process: its request log is checked."""
    with MockUpstream(history=5000) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capgate]:
    capgate = start_capgate(tmp_path_factory.mktemp("hooksrv"), gateway_config(upstream))
    try:
        yield capgate
    finally:
        capgate.close()


_people = iter(range(1, 10_000))


@dataclass
class Machine:
    """One developer's machine: the /etc overlay, a HOME, the person it is installed for."""

    overlay: EtcOverlay
    home: Path
    person: str
    server: Capgate
    mock: MockUpstream

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": self.mock.url,
            "ANTHROPIC_AUTH_TOKEN": "subscription-of-the-team",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": "1",
            **extra,
        }
        if self.overlay.user_ns:
            env["CLAUDE_CODE_TMPDIR"] = str(self.home / "tmp")
        return env

    def claude(self, prompt: str, *args: str, **env: str) -> dict[str, Any]:
        claude = which("claude")
        need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
        assert claude is not None
        done = self.overlay.run(
            [claude, "-p", prompt, "--output-format", "json", "--model", SONNET, *args],
            env=self.env(**env), cwd=self.home / "work", stdin=subprocess_devnull(),
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no JSON from claude (rc={done.returncode}):\n{done.stdout}\n{done.stderr}"
        return dict(json.loads(lines[-1]))

    def capgate(self, *args: str) -> Any:
        """`capgate ...` inside the namespace, as root."""
        return self.overlay.run([sys.executable, "-m", "capgate", *args])

    def requests(self, session: str) -> list[Any]:
        """The model requests the mock received from one Claude Code session."""
        return [
            r for r in self.mock.requests()
            if r.path.startswith("/v1/messages") and r.method == "POST"
            and r.headers.get("x-claude-code-session-id") == session
        ]  # fmt: skip

    def ledger(self, **params: Any) -> list[dict[str, Any]]:
        return self.server.ledger(user=self.person, **params)

    def used(self) -> dict[str, int]:
        """The person's usage by metric (settled + held)."""
        shown = self.server.admin("GET", f"/admin/users/{self.person}").json()
        return {u["metric"]: u["used"] + u["reserved"] for u in shown["usage"]}

    def set_limits(self, limits: list[dict[str, Any]], **fields: Any) -> None:
        response = self.server.admin(
            "PATCH", f"/admin/users/{self.person}", json={"limits": limits, **fields}
        )
        assert response.status_code == 200, response.text


def subprocess_devnull() -> int:
    import subprocess

    return subprocess.DEVNULL


def new_person(server: Capgate, limits: list[dict[str, Any]]) -> str:
    person = f"dev{next(_people)}-{os.getpid()}"
    response = server.admin("POST", "/admin/users", json={"name": person, "limits": limits})
    assert response.status_code == 201, response.text
    return person


def install_code(server: Capgate, person: str) -> str:
    response = server.admin("POST", "/admin/hook/codes", json={"user": person})
    assert response.status_code == 201, response.text
    return str(response.json()["code"])


def make_home(folder: Path) -> Path:
    home = folder / "home"
    (home / "work").mkdir(parents=True)
    (home / "tmp").mkdir()
    state = {"hasCompletedOnboarding": True,
             "projects": {str(home / "work"): {"hasTrustDialogAccepted": True}}}  # fmt: skip
    (home / ".claude.json").write_text(json.dumps(state))
    return home


def start_machine(
    tmp: Path, server: Capgate, mock: MockUpstream, limits: list[Any], os_user: str = "root"
) -> Machine:
    overlay = EtcOverlay(tmp / "overlay").start()
    person = new_person(server, limits)
    machine = Machine(overlay, make_home(tmp), person, server, mock)
    done = machine.capgate(
        "hook", "install", "--server", server.url, "--code", install_code(server, person),
        "--claude", "--codex", "--os-user", os_user,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Restart running Claude Code" in done.stdout
    return machine


@pytest.fixture(scope="module")
def machine(
    server: Capgate, mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """One installed machine shared by the gate tests (each sets its person's limits)."""
    started = start_machine(tmp_path_factory.mktemp("machine"), server, mock, [])
    try:
        yield started
    finally:
        started.overlay.close()


def session_of(result: dict[str, Any]) -> str:
    return str(result["session_id"])


def expected_cost(model: str, usage: Usage) -> Decimal:
    price = PricingTable.load().lookup(model)
    assert price is not None
    return Decimal(price.cost_nano(usage)) / 10**9


# -- the gate and the count --------------------------------------------------------------------


def test_a_prompt_is_admitted_and_counted_exactly(machine: Machine) -> None:
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    usage = {"input_tokens": 1234, "output_tokens": 56, "cache_read_input_tokens": 700,
             "cache_creation_input_tokens": 300}  # fmt: skip
    result = machine.claude("say hi mock:usage=" + json.dumps(usage))
    assert result["is_error"] is False and "capgate mock" in result["result"], result
    session = session_of(result)
    assert len(machine.requests(session)) == 1
    entries = machine.ledger()
    calls = [e for e in entries if e["endpoint"] == "hook/call"]
    prompts = [e for e in entries if e["endpoint"] == "hook/prompt"]
    assert len(prompts) == 1 and prompts[0]["outcome"] == "ok"
    (call,) = calls
    assert call["model"] == SONNET and call["request_id"].startswith("hc-")
    assert (call["input_tokens"], call["output_tokens"]) == (1234, 56)
    assert (call["cache_read_tokens"], call["cache_write_tokens"]) == (700, 300)
    cost = expected_cost(SONNET, Usage(1234, 56, 700, 300, 0))
    assert Decimal(call["cost_usd"]) == cost
    assert "hook_report" in call["flags"]


def test_bare_mode_late_lines_are_counted_once(machine: Machine) -> None:
    """`--bare` writes a turn's last transcript line after Stop (HOOKS.md §5): the hook
    waits for it briefly, and the call is counted once, with its exact tokens."""
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    usage = {"input_tokens": 4321, "output_tokens": 65}
    result = machine.claude("say hi bare mock:usage=" + json.dumps(usage), "--bare")
    assert "capgate mock" in result["result"], result
    session = session_of(result)
    assert len(machine.requests(session)) == 1
    calls = [e for e in machine.ledger() if e["endpoint"] == "hook/call"
             and (e["input_tokens"], e["output_tokens"]) == (4321, 65)]  # fmt: skip
    assert len(calls) == 1, calls


def test_without_a_transcript_opentelemetry_counts_the_call(machine: Machine) -> None:
    """`--no-session-persistence` writes no transcript; the managed settings' OpenTelemetry
    env sends each call to the server's /v1/logs with the machine's token instead. The
    settings file (0644) holds no token: Claude Code gets the header from its
    `otelHeadersHelper`, the hook reading the 0640 token file (/v1/logs refuses no token)."""
    settings = machine.overlay.run(["cat", "/etc/claude-code/managed-settings.d/50-capgate.json"])
    assert "otelHeadersHelper" in settings.stdout and "cgh-" not in settings.stdout
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    usage = {"input_tokens": 5432, "output_tokens": 76}
    result = machine.claude(
        "say hi otel mock:usage=" + json.dumps(usage), "--no-session-persistence"
    )
    assert "capgate mock" in result["result"], result
    deadline, calls = time.monotonic() + 15, []
    while not calls and time.monotonic() < deadline:
        calls = [e for e in machine.ledger() if e["endpoint"] == "hook/call"
                 and (e["input_tokens"], e["output_tokens"]) == (5432, 76)]  # fmt: skip
        time.sleep(0.5)
    assert len(calls) == 1 and "otel" in calls[0]["flags"], calls


def test_a_tool_turn_and_a_subagent_are_counted_once(machine: Machine) -> None:
    """`mock:tool` makes the model call the Agent tool: a subagent with its own calls in its
    own file. Each model request the mock answered is one ledger entry, no more."""
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    before = {e["request_id"] for e in machine.ledger()}
    result = machine.claude("use a tool mock:tool")
    session = session_of(result)
    requests = machine.requests(session)
    assert len(requests) >= 3, requests  # the call, the subagent's, the answer after the tool
    time.sleep(0.5)
    calls = [
        e for e in machine.ledger()
        if e["endpoint"] == "hook/call" and e["request_id"] not in before
    ]  # fmt: skip
    assert len(calls) == len(requests), (calls, len(requests))
    assert len({e["request_id"] for e in calls}) == len(calls)


def test_a_background_subagents_result_is_not_a_new_prompt(machine: Machine) -> None:
    """A background subagent's result comes back as a UserPromptSubmit whose prompt starts
    with `<task-notification>` (HOOKS.md §2): checked, not gated. The user's prompt is one
    prompt entry (one request, its credits), the notification none, every call once."""
    machine.set_limits([{"metric": "requests", "window": "day", "max": 50},
                        {"metric": "credits", "window": "day", "max": 500}])  # fmt: skip
    before = machine.used()
    result = machine.claude("use a tool mock:tool", CLAUDE_CODE_DISABLE_BACKGROUND_TASKS="")
    session = session_of(result)
    (transcript,) = (machine.home / ".claude" / "projects").glob(f"*/{session}.jsonl")
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    users = [x for x in lines if x.get("type") == "user" and isinstance(x.get("promptId"), str)]
    notified = [x for x in users if (x.get("origin") or {}).get("kind") == "task-notification"]
    assert notified, "the subagent did not run in the background"
    typed = {x["promptId"] for x in users} - {x["promptId"] for x in notified}
    requests = machine.requests(session)
    time.sleep(0.5)
    mine = [e for e in machine.ledger() if e["session"] == session]
    prompts = [e for e in mine if e["endpoint"] == "hook/prompt"]
    assert [(e["prompt"], e["outcome"]) for e in prompts] == [(typed.pop(), "ok")], prompts
    assert not typed
    calls = [e for e in mine if e["endpoint"] == "hook/call"]
    assert len(calls) == len(requests) >= 3, (calls, len(requests))
    assert len({e["request_id"] for e in calls}) == len(calls)
    after = machine.used()
    assert after["requests"] - before["requests"] == 1  # one prompt: the user's
    assert after["credits"] - before["credits"] == 3  # sonnet's weight (default settings)


@pytest.mark.parametrize(
    ("limit", "words"),
    [
        ({"metric": "requests", "window": "day", "max": 0, "model": "claude-sonnet-*"}, "prompt"),
        ({"metric": "credits", "window": "day", "max": 1}, "credit"),
        ({"metric": "cost_usd", "window": "day", "max": "0.000001"}, "$"),
    ],
    ids=["per-model-cap", "credits", "dollars"],
)
def test_over_a_limit_the_prompt_is_blocked_with_the_message(
    machine: Machine, limit: dict[str, Any], words: str
) -> None:
    machine.set_limits([limit])
    result = machine.claude("say hi")
    message = result["result"]
    assert message.startswith("UserPromptSubmit operation blocked by hook:"), result
    assert words in message and "Original prompt" not in message
    assert "cgh-" not in message and "hook.py" not in message  # no secret, no command line
    assert result["num_turns"] == 0
    assert machine.requests(session_of(result)) == []


def test_a_schedule_blocks_the_model_outside_its_hours(machine: Machine) -> None:
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 2) % 24:02d}:00"
    machine.set_limits([], schedules=[
        {"model": "claude-sonnet-*", "days": "daily", "start": closed,
         "end": f"{(hour + 3) % 24:02d}:00", "tz": "UTC"}])  # fmt: skip
    try:
        result = machine.claude("say hi")
        assert "blocked by hook" in result["result"], result
        assert machine.requests(session_of(result)) == []
    finally:
        machine.set_limits([], schedules=[])


def test_a_user_cannot_switch_the_gate_off(machine: Machine) -> None:
    """A user hook of their own does not run (managed hooks only), and `disableAllHooks` in
    the user's settings and on the command line does not stop the managed gate."""
    marker = machine.home / "user-hook-ran"
    own_hook = {"hooks": {"UserPromptSubmit": [{"hooks": [
        {"type": "command", "command": f"touch {marker}"}]}]}}  # fmt: skip
    user_settings = machine.home / ".claude" / "settings.json"
    user_settings.parent.mkdir(exist_ok=True)
    try:
        machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
        user_settings.write_text(json.dumps(own_hook))
        result = machine.claude("say hi")
        assert "capgate mock" in result["result"], result
        assert not marker.exists()  # the user's hook did not run
        machine.set_limits([{"metric": "requests", "window": "day", "max": 0}])
        user_settings.write_text(json.dumps({"disableAllHooks": True}))
        result = machine.claude("say hi", "--settings", '{"disableAllHooks": true}')
        assert "blocked by hook" in result["result"], result
        assert machine.requests(session_of(result)) == []
    finally:
        user_settings.unlink()


def test_kill_mid_session_stops_the_next_tool_call_and_logs_out(machine: Machine) -> None:
    """The prompt is admitted; the admin kills the person (with logout) while the model is
    answering; the tool it asked for is denied and the turn ends (no request after it), and
    the hook runs `claude auth logout` (a stand-in on PATH records it)."""
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    bin_dir, said = machine.home / "bin", machine.home / "logout-args"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "claude").write_text(f'#!/bin/sh\necho "$@" >> {said}\n')
    (bin_dir / "claude").chmod(0o755)
    killer = _Later(2.0, lambda: machine.server.admin(
        "POST", f"/admin/users/{machine.person}/kill", json={"logout": True}))  # fmt: skip
    try:
        result = machine.claude(
            "list files mock:tool=Glob mock:delay_ms=5000", "--tools", "Glob",
            PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
        )  # fmt: skip
    finally:
        killer.join()
        machine.server.admin("POST", f"/admin/users/{machine.person}/resume")
    assert result.get("terminal_reason") == "hook_stopped", result
    assert [d["tool_name"] for d in result.get("permission_denials", [])] == ["Glob"]
    assert len(machine.requests(session_of(result))) == 1
    deadline = time.monotonic() + 5
    while not said.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said.read_text() == "auth logout\n"  # once: the tool check, not again at Stop


class _Later:
    def __init__(self, delay: float, action: Any) -> None:
        import threading

        self.thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
        self.thread.start()

    def join(self) -> None:
        self.thread.join(30)


# -- offline, tampering, uninstall, the curl installer ----------------------------------------


@pytest.mark.slow
def test_twenty_prompts_at_once_keep_the_stated_bound(
    server: Capgate, mock: MockUpstream, tmp_path: Path
) -> None:
    """20 `claude -p` of one person at once against a dollar budget that pays for three
    prompts' estimates. Each admitted prompt makes one call dearer than the estimate. The
    bound of docs/budgets.md: spend <= limit + sum over admitted prompts of (call - estimate)
    (each prompt can finish the call it is in); the refused ones sent nothing."""
    usage = {"input_tokens": 30_000, "output_tokens": 1_000}
    call = expected_cost(SONNET, Usage(30_000, 1_000))  # $0.105
    estimate = expected_cost(SONNET, Usage(20_000, 2_000))  # the default lease: $0.09
    limit = Decimal("0.30")
    machine = start_machine(tmp_path, server, mock, [
        {"metric": "cost_usd", "window": "day", "max": str(limit)}])  # fmt: skip
    try:
        prompt = "race mock:usage=" + json.dumps(usage)
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: machine.claude(prompt), range(20)))
        admitted = [r for r in results if "capgate mock" in str(r.get("result"))]
        blocked = [r for r in results if str(r.get("result")).startswith(
            "UserPromptSubmit operation blocked by hook:")]  # fmt: skip
        assert len(admitted) + len(blocked) == 20, results
        assert 1 <= len(admitted) < 20
        for result in blocked:
            assert machine.requests(session_of(result)) == []
        deadline, calls = time.monotonic() + 15, []
        while time.monotonic() < deadline:
            calls = [e for e in machine.ledger() if e["endpoint"] == "hook/call"]
            if len(calls) >= len(admitted):
                break
            time.sleep(0.3)
        assert (
            len(calls)
            == len(admitted)
            == sum(len(machine.requests(session_of(r))) for r in admitted)
        )
        spent = sum(Decimal(e["cost_usd"]) for e in calls)
        assert spent == call * len(admitted)
        story = sorted(
            (e["created_at"], e["endpoint"], e["outcome"], e["session"], e["flags"])
            for e in machine.ledger()
        )
        assert spent <= limit + len(admitted) * (call - estimate), (spent, story)
    finally:
        machine.overlay.close()


@pytest.mark.slow
def test_offline_cached_limits_then_reports_delivered_once(
    upstream: Upstream, mock: MockUpstream, tmp_path: Path
) -> None:
    """Online once (the cache), then the server is down: the cached limits still apply
    (2 prompts a day: the second is admitted, the third refused), the reports are queued;
    back up, they are delivered and counted exactly once."""
    config = gateway_config(upstream)
    server = start_capgate(tmp_path / "srv", config) if _mkdir(tmp_path / "srv") else None
    assert server is not None
    machine = start_machine(
        tmp_path, server, mock, [{"metric": "requests", "window": "day", "max": 2}]
    )
    try:
        first = machine.claude("say hi")
        assert first["is_error"] is False and "capgate mock" in first["result"], first
        db, url = server.db, server.url
        server.close()
        second = machine.claude("say hi again")
        assert "capgate mock" in second["result"], second  # admitted by the cache
        third = machine.claude("and again")
        assert "cached offline" in third["result"] and "blocked by hook" in third["result"]
        assert machine.requests(session_of(third)) == []
        port = url.rsplit(":", 1)[1]
        server = start_capgate(tmp_path / "srv", config, db=db, args=("--port", port))
        machine.server = server
        before = [e for e in machine.ledger() if e["endpoint"] == "hook/call"]
        assert len(before) == 1
        machine.set_limits([{"metric": "requests", "window": "day", "max": 100}])
        machine.claude("online again")  # its gate sends the queue
        machine.claude("once more")
        calls = [e for e in machine.ledger() if e["endpoint"] == "hook/call"]
        ids = [e["request_id"] for e in calls]
        assert len(ids) == len(set(ids)) == 4, calls  # 1 + 1 queued + 2: none twice
        # the prompt admitted offline is counted once too (the refused one not at all)
        prompts = [e for e in machine.ledger() if e["endpoint"] == "hook/prompt"]
        assert len({e["request_id"] for e in prompts}) == len(prompts) == 4, prompts
        (offline,) = [e for e in prompts if e["session"] == session_of(second)]
        assert offline["flags"] == ["offline"] and offline["model"] == SONNET, offline
        assert not [e for e in prompts if e["session"] == session_of(third)]
    finally:
        machine.overlay.close()
        server.close()


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


def test_no_cache_and_no_server_blocks(server: Capgate, mock: MockUpstream, tmp_path: Path) -> None:
    machine = start_machine(tmp_path, server, mock, [])
    try:
        config = "/etc/capgate-hook/config.json"
        rewrite = f"sed -i 's#{server.url}#http://127.0.0.1:9#' {config}"
        assert machine.overlay.run(["sh", "-c", rewrite]).returncode == 0
        result = machine.claude("say hi")
        assert "blocked by hook" in result["result"], result
        assert "no limits cached" in result["result"]
        assert machine.requests(session_of(result)) == []
    finally:
        machine.overlay.close()


def test_watchdog_restores_a_tampered_hook_and_uninstall_leaves_etc_as_it_was(
    server: Capgate, mock: MockUpstream, tmp_path: Path
) -> None:
    machine = start_machine(
        tmp_path, server, mock, [{"metric": "requests", "window": "day", "max": 0}]
    )
    try:
        tamper = "echo 'print(\"{}\")' > /etc/capgate-hook/hook.py"
        assert machine.overlay.run(["sh", "-c", tamper]).returncode == 0
        result = machine.claude("say hi")
        assert "capgate mock" in result["result"]  # the gate is gone: tampering works...
        done = machine.capgate("hook", "watchdog")
        assert done.returncode == 0 and "restored /etc/capgate-hook/hook.py" in done.stdout
        result = machine.claude("say hi")
        assert "blocked by hook" in result["result"]  # ...for at most a minute
        machines = server.admin("GET", "/admin/hook/machines").json()
        (mine,) = [m for m in machines if m["user"] == machine.person]
        assert mine["tampered_at"] is not None
        status = machine.capgate("hook", "status", "--json")
        assert status.returncode == 0, status.stderr
        files = json.loads(status.stdout)["files"]
        assert {f["state"] for f in files} == {"intact"}
        shown = machine.capgate("hook", "status")
        assert shown.returncode == 0, shown.stderr
        assert f"user {machine.person}" in shown.stdout and "requests / day" in shown.stdout
        assert "cgh-" not in shown.stdout
        done = machine.capgate("hook", "uninstall")
        assert done.returncode == 0, done.stderr
        assert machine.overlay.changes() == []
    finally:
        machine.overlay.close()


def test_the_token_is_readable_by_the_developer_only(
    server: Capgate, mock: MockUpstream, tmp_path: Path
) -> None:
    """The hook runs as the developer: the token (root, 0640, the developer's group) is
    theirs to read; another user's hook fails closed, saying why."""
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    need(os.geteuid() == 0, "switching users needs root")
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    machine = start_machine(tmp_path, server, mock, [], os_user="nobody")
    try:
        stat = machine.overlay.run(["stat", "-c", "%a %U %G", "/etc/capgate-hook/token"])
        assert stat.stdout.split() == ["640", "root", grp.getgrgid(nobody.pw_gid).gr_name]
        event = json.dumps({"hook_event_name": "UserPromptSubmit", "session_id": "s1",
                            "prompt_id": "p1", "cwd": "/"})  # fmt: skip
        shared = tempfile.TemporaryDirectory(prefix="capgate-hook-users-")  # others may enter
        state = Path(shared.name)
        state.chmod(0o777)
        answers = {}
        for uid, gid in ((nobody.pw_uid, nobody.pw_gid), (nobody.pw_uid - 1, nobody.pw_uid - 1)):
            done = machine.overlay.run(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                 "/usr/bin/python3", "-I", "/etc/capgate-hook/hook.py", "claude"],
                input=event, env={"HOME": "/", "XDG_STATE_HOME": str(state / str(uid)),
                                  "ANTHROPIC_MODEL": SONNET},
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            answers[uid] = done.stdout
        assert answers[nobody.pw_uid] == ""  # admitted
        other = json.loads(answers[nobody.pw_uid - 1])
        assert other["decision"] == "block" and "PermissionError" in other["reason"]
        assert "/etc/capgate-hook/token" in other["reason"]
        shared.cleanup()
    finally:
        machine.overlay.close()


def test_the_curl_installer_served_by_the_server(
    server: Capgate, mock: MockUpstream, tmp_path: Path
) -> None:
    need(shutil.which("curl") is not None, "curl is not installed")
    overlay = EtcOverlay(tmp_path / "overlay").start()
    try:
        person = new_person(server, [{"metric": "requests", "window": "day", "max": 0}])
        code = install_code(server, person)
        command = (f"curl -fsSL {server.url}/hook/install | /usr/bin/python3 - "
                   f"--server {server.url} --code {code} --claude --os-user root")  # fmt: skip
        done = overlay.run(["sh", "-c", command])
        assert done.returncode == 0, done.stdout + done.stderr
        machine = Machine(overlay, make_home(tmp_path), person, server, mock)
        result = machine.claude("say hi")
        assert "blocked by hook" in result["result"], result
        again = overlay.run(["sh", "-c", command])
        assert again.returncode == 1 and "already installed" in again.stderr
    finally:
        overlay.close()


# -- Codex -------------------------------------------------------------------------------------


def codex_run(machine: Machine, prompt: str) -> tuple[list[dict[str, Any]], str]:
    """`codex exec --json` on the machine against the mock: its events and its stderr."""
    codex = which("codex")
    need(codex is not None, "the Codex CLI is not installed (bin/test installs it)")
    assert codex is not None
    home = machine.home / "codex"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        'model_provider = "mock"\nmodel = "gpt-5-mini"\n[model_providers.mock]\nname = "mock"\n'
        f'base_url = "{machine.mock.url}/v1"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(machine.home), "CODEX_HOME": str(home),
           "OPENAI_API_KEY": "subscription"}  # fmt: skip
    done = machine.overlay.run(
        [codex, "exec", "--skip-git-repo-check", "--json", "--disable", "plugins", prompt],
        env=env, cwd=machine.home / "work", stdin=subprocess_devnull(),
    )  # fmt: skip
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert events, f"no JSON from codex (rc={done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert not [
        e
        for e in events
        if e.get("type") == "item.completed" and "hook" in e["item"].get("message", "")
    ], events  # no hook config warning
    return events, done.stderr


def responses(machine: Machine) -> int:
    return len([r for r in machine.mock.requests() if r.path == "/v1/responses"])


def test_codex_exec_is_admitted_counted_and_blocked(machine: Machine) -> None:
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    before = len([e for e in machine.ledger() if e["endpoint"] == "hook/call"])
    events, _ = codex_run(machine, "say hi")
    assert any(e.get("type") == "item.completed" for e in events), events
    calls = [e for e in machine.ledger() if e["endpoint"] == "hook/call"]
    codex_calls = [e for e in calls if e["provider"] == "codex"]
    assert len(calls) == before + 1 and codex_calls, calls
    assert codex_calls[0]["model"] == "gpt-5-mini" and codex_calls[0]["input_tokens"] > 0
    machine.set_limits([{"metric": "requests", "window": "day", "max": 0}])
    sent = responses(machine)
    events, _ = codex_run(machine, "say hi again")
    assert not any(e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"
                   for e in events), events  # fmt: skip
    assert responses(machine) == sent


def test_codex_kill_mid_turn_denies_the_tool(machine: Machine) -> None:
    """Codex refuses `continue:false` from PreToolUse, so its tool is denied (the model
    sees why and answers once more): the command never runs."""
    machine.set_limits([{"metric": "cost_usd", "window": "day", "max": 50}])
    killer = _Later(2.0, lambda: machine.server.admin(
        "POST", f"/admin/users/{machine.person}/kill", json={"logout": False}))  # fmt: skip
    sent = responses(machine)
    try:
        events, stderr = codex_run(machine, "run it mock:tool mock:delay_ms=4000")
    finally:
        killer.join()
        machine.server.admin("POST", f"/admin/users/{machine.person}/resume")
    assert not [e for e in events if e.get("item", {}).get("type") == "command_execution"]
    assert "Command blocked by PreToolUse hook: capgate: " in stderr
    assert f'"{machine.person}" is paused' in stderr
    assert responses(machine) == sent + 2


# -- what a person sees: interactive Claude Code in a terminal ---------------------------------


@pytest.fixture
def terminal(machine: Machine) -> Iterator[Any]:
    """Interactive Claude Code in tmux, inside the machine's namespace."""
    from test_claude_code_interactive import Terminal

    claude = which("claude")
    need(shutil.which("tmux") is not None, "tmux is not installed (.ci/run installs it)")
    need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
    assert claude is not None
    started = Terminal(f"capgate-hook-{os.getpid()}-{time.monotonic_ns()}")
    env = machine.env(TERM="xterm-256color")
    command = shlex.join(
        machine.overlay.command(
            ["env", "-i", *(f"{k}={v}" for k, v in env.items()), claude, "--model", SONNET],
            cwd=machine.home / "work",
        )
    )
    try:
        started.tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", started.session,
                     "-c", str(machine.home / "work"), command)  # fmt: skip
        started.wait_for("Claude Code v")
        yield started
    finally:
        started.tmux("kill-server")


def model_requests(machine: Machine) -> int:
    return len([r for r in machine.mock.requests() if r.path.startswith("/v1/messages")])


@pytest.mark.slow
def test_interactive_claude_code_shows_the_refusal(machine: Machine, terminal: Any) -> None:
    """In tmux: the refusal's message is shown, the prompt is not sent (0 requests), and
    no command line or token is on the screen."""
    machine.set_limits([{"metric": "requests", "window": "day", "max": 0}])
    before = model_requests(machine)
    terminal.type("say hi")
    screen = terminal.wait_for("blocked by hook", "daily prompt limit")
    artifacts = Path(__file__).parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "hook-refusal-interactive.txt").write_text(screen)
    assert f'user "{machine.person}"' in screen
    assert "cgh-" not in screen and "/etc/capgate-hook" not in screen
    time.sleep(1)
    assert model_requests(machine) == before


@pytest.mark.slow
def test_interactive_model_switch_past_a_cap_is_refused(machine: Machine, terminal: Any) -> None:
    """`/model` to a model whose cap is used up: PreModelSwitch refuses it with the
    server's reason; the session stays on its model."""
    machine.set_limits([{"metric": "requests", "window": "day", "max": 0,
                         "model": "claude-opus-*"}])  # fmt: skip
    terminal.type("/model claude-opus-5-5")
    screen = terminal.wait_for("was blocked by a PreModelSwitch hook")
    artifacts = Path(__file__).parent / "artifacts"
    (artifacts / "hook-model-switch-interactive.txt").write_text(screen)
    assert "claude-opus" in screen.split("PreModelSwitch hook", 1)[1]
