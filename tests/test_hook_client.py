"""Hook mode on the developer's machine, without the real CLIs: the hook's transcript and
rollout reading, its model guess, the JSON it answers, its offline rules and its failures
(as a process: `python3 -I hook.py`), the files the installer writes, the watchdog and
uninstall (in a temporary root: the real /etc is never written)."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from capgate.hook.client import hook, install, watchdog
from conftest import need

CLIENT = Path(hook.__file__).parent
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def assistant(rid: str, mid: str, model: str, block: int, **usage: Any) -> dict[str, Any]:
    return {
        "type": "assistant",
        "requestId": rid,
        "apiBlockIndex": block,
        "message": {"id": mid, "model": model, "usage": usage},
    }


def user(prompt: str) -> dict[str, Any]:
    return {"type": "user", "promptId": prompt, "message": {"role": "user", "content": "hi"}}


def write_lines(path: Path, lines: list[dict[str, Any]], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + tail)


USAGE = {"input_tokens": 10, "output_tokens": 77, "cache_read_input_tokens": 5,
         "cache_creation_input_tokens": 30,
         "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}}  # fmt: skip


def test_transcript_counts_each_call_once_with_its_prompt_and_subagents(tmp_path: Path) -> None:
    """Three lines per message (one per content block) are one call; a subagent's file
    counts, billed to its parent prompt; synthetic error lines do not."""
    main = tmp_path / "proj" / "s1.jsonl"
    write_lines(main, [
        user("p1"),
        *(assistant("req_1", "msg_1", "claude-sonnet-4-6", b, **USAGE) for b in range(3)),
        {"type": "assistant", "message": {"id": "x", "model": "<synthetic>", "usage": USAGE}},
        user("p2"),
        assistant("req_2", "msg_2", "claude-opus-5-5", 0, input_tokens=3, output_tokens=4),
    ])  # fmt: skip
    write_lines(tmp_path / "proj" / "s1" / "subagents" / "agent-a1.jsonl", [
        user("p1"), assistant("req_3", "msg_3", "claude-haiku-4-5", 0, input_tokens=7, output_tokens=8),
    ])  # fmt: skip
    state = hook.new_session()
    calls = hook.claude_usage(str(main), {}, state, set())
    by_id = {c["id"]: c for c in calls}
    assert sorted(by_id) == ["req_1", "req_2", "req_3"]
    assert by_id["req_1"] == {
        "id": "req_1", "message_id": "msg_1", "prompt_id": "p1", "model": "claude-sonnet-4-6",
        "input": 10, "output": 77, "cache_read": 5, "cache_write": 30, "cache_write_1h": 20,
    }  # fmt: skip
    assert by_id["req_2"]["prompt_id"] == "p2" and by_id["req_3"]["prompt_id"] == "p1"
    assert state["seen_model"] == "claude-opus-5-5"  # the main file's last call


def test_transcript_is_read_incrementally(tmp_path: Path) -> None:
    """Each event reads only new bytes; a half-written last line waits for the next one;
    an id already sent is not sent again."""
    main = tmp_path / "s.jsonl"
    half = json.dumps(assistant("req_2", "m2", "claude-sonnet-4-6", 0, input_tokens=1))
    write_lines(main, [user("p1"), assistant("req_1", "m1", "claude-sonnet-4-6", 0, input_tokens=1)],
                tail=half[:20])  # fmt: skip
    state = hook.new_session()
    first = hook.claude_usage(str(main), {}, state, set())
    assert [c["id"] for c in first] == ["req_1"]
    offset = state["offsets"][str(main)]
    assert offset == main.stat().st_size - 20
    with main.open("a") as f:
        f.write(half[20:] + "\n")
    second = hook.claude_usage(str(main), {}, state, {"req_1"})
    assert [(c["id"], c["prompt_id"]) for c in second] == [("req_2", "p1")]
    assert hook.claude_usage(str(main), {}, state, {"req_1", "req_2"}) == []


def test_codex_rollout_usage_by_response_id(tmp_path: Path) -> None:
    rollout = tmp_path / "rollout.jsonl"
    record = {"type": "token_usage_record", "payload": {
        "turn_id": "t1", "response_id": "resp_1",
        "usage": {"input_tokens": 8456, "cached_input_tokens": 456, "output_tokens": 8}}}  # fmt: skip
    write_lines(
        rollout, [{"type": "turn_context", "payload": {"model": "gpt-5-mini"}}, record, record]
    )
    calls = hook.codex_usage(str(rollout), hook.new_session(), set())
    assert calls == [{
        "id": "resp_1", "message_id": "resp_1", "prompt_id": "t1", "model": "gpt-5-mini",
        "input": 8000, "output": 8, "cache_read": 456, "cache_write": 0, "cache_write_1h": 0,
    }]  # fmt: skip


def test_model_guess_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """event > session (SessionStart / PreModelSwitch) > transcript > --model on Claude
    Code's command line > ANTHROPIC_MODEL > settings; aliases resolved from the cache."""
    cache = {"prices": {"claude-sonnet-4-5": {}, "claude-sonnet-4-6": {}, "claude-opus-5-5": {}}}
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ANTHROPIC_MODEL", raising=False)
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("CLAUDE_PROJECT_DIR", str(tmp_path / "project"))
    state = hook.new_session()
    assert hook.guess_model("claude", {}, state, cache) == (None, None)
    write_lines(tmp_path / ".claude" / "settings.json", [])
    (tmp_path / ".claude" / "settings.json").write_text('{"model": "opus"}')
    assert hook.guess_model("claude", {}, state, cache) == ("claude-opus-5-5", "settings")
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-haiku-4-5")
    assert hook.guess_model("claude", {}, state, cache) == ("claude-haiku-4-5", "env")
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-p", "hi", "--model", "sonnet"]
    )
    try:
        monkeypatch.setenv("CLAUDE_PID", str(sleeper.pid))
        cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"--model" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the child has exec'd
        assert hook.guess_model("claude", {}, state, cache) == ("claude-sonnet-4-6", "cmdline")
    finally:
        sleeper.kill()
        sleeper.wait()
    state["seen_model"] = "claude-sonnet-4-5"
    assert hook.guess_model("claude", {}, state, cache) == ("claude-sonnet-4-5", "transcript")
    state["model"], state["model_source"] = "claude-opus-5-5", "event"
    assert hook.guess_model("claude", {}, state, cache) == ("claude-opus-5-5", "event")
    assert hook.guess_model("codex", {"model": "gpt-5-mini"}, state, cache) == (
        "gpt-5-mini",
        "event",
    )


@pytest.mark.parametrize(
    ("event", "agent", "expected"),
    [
        ("UserPromptSubmit", "claude", {"decision": "block", "reason": "M", "hookSpecificOutput": {
            "hookEventName": "UserPromptSubmit", "suppressOriginalPrompt": True}}),
        ("UserPromptSubmit", "codex", {"decision": "block", "reason": "M"}),
        ("PreToolUse", "claude", {"continue": False, "stopReason": "M", "hookSpecificOutput": {
            "hookEventName": "PreToolUse", "permissionDecision": "deny",
            "permissionDecisionReason": "M"}}),
        ("PreToolUse", "codex", {"hookSpecificOutput": {  # Codex refuses continue:false
            "hookEventName": "PreToolUse", "permissionDecision": "deny",
            "permissionDecisionReason": "M"}}),
        ("PreModelSwitch", "claude", {"hookSpecificOutput": {"hookEventName": "PreModelSwitch",
            "permissionDecision": "deny", "permissionDecisionReason": "M"}}),
        ("PreCompact", "claude", {"decision": "block", "reason": "M"}),
    ],
)  # fmt: skip
def test_refusals_in_each_events_form(event: str, agent: str, expected: dict[str, Any]) -> None:
    """HOOKS.md §3: the JSON forms that refuse without showing a command line."""
    assert hook.refusal(event, agent, "M") == expected


# -- offline: the cached limits ---------------------------------------------------------------


def cached(limits: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    now = time.time()
    cache = {
        "issued_at": now, "valid_until": now + 86400, "status": "active", "logout": False,
        "timezone": "UTC", "default_model": "claude-sonnet-4-6",
        "weights": {"claude-opus-*": 10, "*": 1}, "estimate": {"input": 1000, "output": 100},
        "prices": {"claude-sonnet-4-6": {"input": "3", "output": "15", "cache_read": "0.3",
                                         "cache_write": "3.75", "cache_write_1h": "6"}},
        "models": [], "blocked_models": {}, "limits": limits, **extra,
    }  # fmt: skip
    return {"cache": cache, "received_at": now}


def queue_call(folder: Path, model: str, **counts: int) -> None:
    call = {"id": "c", "model": model, "input": 0, "output": 0, "cache_read": 0,
            "cache_write": 0, "cache_write_1h": 0, **counts}  # fmt: skip
    hook.enqueue(str(folder), {"at": time.time(), "calls": [call], "prompts": []})


def test_cached_limits_count_what_was_queued(tmp_path: Path) -> None:
    sonnet = "claude-sonnet-4-6"
    dollars = cached([{"label": "Daily dollars", "metric": "cost_usd", "window": "day",
                       "model": None, "max": "1.00", "used": "0.95", "resets_at": None}])  # fmt: skip
    # 1000 in + 100 out at $3/$15 per Mtok = $0.0045: fits under $0.05 left
    assert hook.cached_decision(dollars, sonnet, True, str(tmp_path)) is None
    queue_call(tmp_path, sonnet, output=3_000_000)  # $45 reported while offline
    why = hook.cached_decision(dollars, sonnet, True, str(tmp_path))
    assert why == "Daily dollars: $45.95 of $1.00 used (cached offline)"
    assert hook.cached_decision(dollars, sonnet, False, str(tmp_path)) is not None


def test_cached_limits_rules(tmp_path: Path) -> None:
    sonnet, opus = "claude-sonnet-4-6", "claude-opus-5-5"
    credits = [{"label": "Credits", "metric": "credits", "window": "day", "model": None,
                "max": 12, "used": 5, "resets_at": None}]  # fmt: skip
    folder = str(tmp_path)
    assert hook.cached_decision(cached(credits), sonnet, True, folder) is None
    assert "Credits: 5 of 12" in str(hook.cached_decision(cached(credits), opus, True, folder))
    assert hook.cached_decision(cached(credits), opus, False, folder) is None  # tool calls go on
    passed = cached([dict(credits[0], used=12, resets_at=time.time() - 60)])
    passed["received_at"] -= 7200  # issued 2 h ago, the day's window reset a minute ago
    passed["cache"]["issued_at"] -= 7200
    assert hook.cached_decision(passed, opus, True, folder) is None
    caps = [{"label": "Opus", "metric": "requests", "window": "day", "model": "claude-opus-*",
             "max": 2, "used": 2, "resets_at": None}]  # fmt: skip
    assert hook.cached_decision(cached(caps), sonnet, True, folder) is None
    assert hook.cached_decision(cached(caps), opus, True, folder) is not None
    assert "paused" in str(hook.cached_decision(cached([], status="paused"), sonnet, True, folder))
    late = cached(credits, blocked_models={opus: "outside 09:00-18:00"})
    assert "outside 09:00-18:00" in str(hook.cached_decision(late, opus, True, folder))
    allowed = cached([], models=["claude-sonnet-*"])
    assert "not allowed" in str(hook.cached_decision(allowed, opus, True, folder))
    old = cached(credits)
    old["received_at"] -= 90000  # a day and more ago: past valid_until
    assert "expired" in str(hook.cached_decision(old, sonnet, True, folder))
    assert "no limits cached" in str(hook.cached_decision({}, sonnet, True, folder))


# -- the hook as a process --------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hook_folder(tmp_path: Path, server: str) -> Path:
    folder = tmp_path / "capgate-hook"
    folder.mkdir()
    shutil.copy(CLIENT / "hook.py", folder / "hook.py")
    (folder / "config.json").write_text(json.dumps({"server": server}))
    (folder / "token").write_text("cgh-000000000000-secretsecret\n")
    return folder


def run_hook(folder: Path, tmp_path: Path, event: dict[str, Any], agent: str = "claude") -> str:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state")}  # fmt: skip
    done = subprocess.run(
        [PYTHON, "-I", str(folder / "hook.py"), agent], input=json.dumps(event),
        capture_output=True, text=True, timeout=20, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout


def test_hook_fails_closed_on_its_own_errors_and_never_blocks_a_report(tmp_path: Path) -> None:
    folder = hook_folder(tmp_path, "http://127.0.0.1:1")
    (folder / "token").unlink()  # a broken install
    prompt = {"hook_event_name": "UserPromptSubmit", "session_id": "s", "prompt_id": "p"}
    answer = json.loads(run_hook(folder, tmp_path, prompt))
    assert answer["decision"] == "block"
    assert "capgate's hook failed (FileNotFoundError" in answer["reason"]
    assert "fail closed" in answer["reason"]
    tool = json.loads(run_hook(folder, tmp_path, {**prompt, "hook_event_name": "PreToolUse"}))
    assert tool["continue"] is False
    assert tool["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert run_hook(folder, tmp_path, {**prompt, "hook_event_name": "Stop"}) == ""
    assert run_hook(folder, tmp_path, {**prompt, "hook_event_name": "SessionEnd"}) == ""


def test_hook_offline_refuses_without_a_cache_and_uses_one_when_it_has_it(tmp_path: Path) -> None:
    """Server down: no cache -> refused; a cache -> its limits apply, and the report of the
    transcript's new calls is queued (then counted against the cache)."""
    folder = hook_folder(tmp_path, f"http://127.0.0.1:{closed_port()}")
    transcript = tmp_path / "s.jsonl"
    write_lines(transcript, [user("p0"), assistant("req_1", "m1", "claude-sonnet-4-6", 0,
                                                    input_tokens=10, output_tokens=2_000_000)])  # fmt: skip
    event = {"hook_event_name": "UserPromptSubmit", "session_id": "s1", "prompt_id": "p1",
             "transcript_path": str(transcript)}  # fmt: skip
    answer = json.loads(run_hook(folder, tmp_path, event))
    assert "cannot reach" in answer["reason"] and "no limits cached" in answer["reason"]
    assert "secret" not in json.dumps(answer)
    state = tmp_path / "state" / "capgate-hook"
    (queued,) = list((state / "queue").iterdir())  # the transcript's call waits for the server
    assert [c["id"] for c in json.loads(queued.read_text())["report"]["calls"]] == ["req_1"]
    limit = {"label": "Daily dollars", "metric": "cost_usd", "window": "day", "model": None,
             "max": "30", "used": "0", "resets_at": None}  # fmt: skip
    hook.write_json(str(state / "cache.json"), cached([limit]))
    event["prompt_id"] = "p2"
    answer = json.loads(run_hook(folder, tmp_path, event))  # the queued $30 + this one's estimate
    assert "Daily dollars: $30.00 of $30.00 used (cached offline)" in answer["reason"]
    limit["max"] = "100"
    hook.write_json(str(state / "cache.json"), cached([limit]))
    assert run_hook(folder, tmp_path, {**event, "prompt_id": "p3"}) == ""  # admitted offline
    queued = sorted((state / "queue").iterdir())
    assert len(queued) == 2  # and its prompt queued for later, for the server to count
    (offline,) = json.loads(queued[-1].read_text())["report"]["offline_prompts"]
    assert offline["prompt_id"] == "p3" and offline["at"] > 0


def test_a_stop_ends_its_prompts_lease_only_once_a_call_of_it_was_reported(
    tmp_path: Path,
) -> None:
    """A Stop whose prompt's call is not in the transcript yet (a busy machine writes it
    late) must not free the prompt's lease: its cost would be counted only after another
    prompt was admitted on the freed estimate. The Stop after the line is there ends it."""
    folder = hook_folder(tmp_path, f"http://127.0.0.1:{closed_port()}")
    state = tmp_path / "state" / "capgate-hook"
    transcript = tmp_path / "s.jsonl"
    write_lines(transcript, [user("p1")])
    stop = {"hook_event_name": "Stop", "session_id": "s1", "prompt_id": "p1",
            "transcript_path": str(transcript)}  # fmt: skip

    def reports() -> list[dict[str, Any]]:
        return [json.loads(q.read_text())["report"] for q in sorted((state / "queue").glob("*"))]

    assert run_hook(folder, tmp_path, stop) == ""
    assert reports() == []  # nothing counted, nothing ended
    write_lines(transcript, [assistant("req_1", "m1", "claude-sonnet-4-6", 0, **USAGE)])
    assert run_hook(folder, tmp_path, stop) == ""
    (report,) = reports()
    assert [c["id"] for c in report["calls"]] == ["req_1"]
    assert report["ended_prompts"] == ["p1"]


def test_a_background_tasks_result_is_no_new_prompt(tmp_path: Path) -> None:
    """Offline with a cache: the result of a task the session ran in the background is
    admitted without counting a prompt; the same notification again, or a typed one naming
    a task the session never ran, is gated (and counted) as a prompt."""
    folder = hook_folder(tmp_path, f"http://127.0.0.1:{closed_port()}")
    state = tmp_path / "state" / "capgate-hook"
    limit = {"label": "Daily prompts", "metric": "requests", "window": "day", "model": None,
             "max": "10", "used": "0", "resets_at": None}  # fmt: skip
    hook.write_json(str(state / "cache.json"), cached([limit]))
    base = {"session_id": "s1", "model": "claude-sonnet-4-6"}
    stop = {**base, "hook_event_name": "Stop", "prompt_id": "p1",
            "background_tasks": [{"id": "t1", "type": "subagent", "status": "running"}]}  # fmt: skip
    assert run_hook(folder, tmp_path, stop) == ""

    def notify(prompt_id: str, task: str) -> list[str]:
        text = f"<task-notification>\n<task-id>{task}</task-id>\n<status>completed</status>"
        event = {**base, "hook_event_name": "UserPromptSubmit", "prompt_id": prompt_id,
                 "prompt": text}  # fmt: skip
        assert run_hook(folder, tmp_path, event) == ""  # admitted offline
        items = [json.loads(q.read_text()) for q in (state / "queue").glob("*")]
        return sorted(p["prompt_id"] for i in items for p in i["report"].get("offline_prompts", []))

    assert notify("n1", "t1") == []  # the background task's result: not a prompt
    assert notify("n2", "t1") == ["n2"]  # the same task again: a prompt
    assert notify("n3", "t7") == ["n2", "n3"]  # a task the session never ran: a prompt


# -- what the installer writes, the watchdog, uninstall -----------------------------------------


def planned(agents: list[str], systemd: bool = True) -> list[Any]:
    clients = {name: (CLIENT / name).read_bytes() for name in install.CLIENT_FILES}
    return install.plan(
        server="http://capgate.example:4000", enrolled={"token": "cgh-abc-secret", "machine": "a@h",
        "user": "alice"}, agents=agents, os_user="root", group=0, python="/usr/bin/python3",
        clients=clients, system="Linux", systemd=systemd,
    )  # fmt: skip


def test_managed_settings_cannot_be_switched_off_and_fail_closed() -> None:
    files = {path: (data, mode, gid) for path, data, mode, _, gid in planned(["claude", "codex"])}
    settings = json.loads(files[install.CLAUDE_DROP_IN][0])
    assert settings["allowManagedHooksOnly"] is True
    assert "disableAllHooks" not in settings
    for event in ("UserPromptSubmit", "PreToolUse", "PreModelSwitch", "PreCompact"):
        (entry,) = settings["hooks"][event][0]["hooks"]
        assert entry == {"type": "command", "command": "/usr/bin/python3", "timeout": 10,
                         "args": ["-I", "/etc/capgate-hook/hook.py", "claude"], "onFailure": "block"}  # fmt: skip
    assert settings["hooks"]["PreToolUse"][0]["matcher"] == "*"
    assert settings["hooks"]["SessionEnd"][0]["hooks"][0]["timeout"] == 10
    env = settings["env"]
    assert env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == "http://capgate.example:4000/v1/logs"
    # the drop-in is 0644: no token in it; Claude Code asks the hook for the OTLP header
    assert "cgh-" not in files[install.CLAUDE_DROP_IN][0].decode()
    assert files[install.CLAUDE_DROP_IN][1] == 0o644
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env
    helper = settings["otelHeadersHelper"]
    assert helper == "/usr/bin/python3 -I /etc/capgate-hook/hook.py otel-headers"
    requirements = tomllib.loads(files[install.CODEX_REQUIREMENTS][0].decode())
    assert requirements["allow_managed_hooks_only"] is True
    assert requirements["features"]["hooks"] is True
    (entry,) = requirements["hooks"]["UserPromptSubmit"][0]["hooks"]
    assert entry["command"] == "/usr/bin/python3 -I /etc/capgate-hook/hook.py codex"
    assert files["/etc/capgate-hook/token"][1:] == (0o640, 0)
    config = json.loads(files["/etc/capgate-hook/config.json"][0])
    assert config["server"] == "http://capgate.example:4000" and "token" not in config


def test_watchdog_units(tmp_path: Path) -> None:
    """systemd units that `systemd-analyze verify` accepts (when it is installed), and the
    cron line otherwise."""
    units = {p: d for p, d, *_ in planned(["claude"]) if p.startswith(install.SYSTEMD_DIR)}
    assert sorted(Path(p).name for p in units) == [
        "capgate-hook-watchdog.service", "capgate-hook-watchdog.timer"]  # fmt: skip
    for path, data in units.items():
        (tmp_path / Path(path).name).write_bytes(data)
        parsed = configparser.ConfigParser()
        parsed.read_string(data.decode())
        assert parsed.sections()
    service = configparser.ConfigParser()
    service.read_string(units[install.SYSTEMD_DIR + "/capgate-hook-watchdog.service"].decode())
    assert service["Service"]["ExecStart"] == (
        "/usr/bin/python3 -I /etc/capgate-hook/pristine/watchdog.py"
    )
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", *(str(tmp_path / Path(p).name) for p in units)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    (cron,) = [d for p, d, *_ in planned(["claude"], systemd=False) if p == install.CRON_FILE]
    assert cron.decode().startswith("* * * * * root /usr/bin/python3 -I ")


def tree(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_text() if p.is_file() else "")
        for p in sorted(root.rglob("*"))
    }


def test_watchdog_restores_and_uninstall_removes_only_what_was_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "codex").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "etc" / "systemd" / "system" / "other.service").write_text("[Unit]\n")
    before = tree(root)
    files = planned(["claude", "codex"])
    manifest = install.write_install(
        files, (CLIENT / "watchdog.py").read_bytes(), root=str(root), log=lambda _: None
    )
    hook_py = root / "etc/capgate-hook/hook.py"
    settings = root / "etc/claude-code/managed-settings.d/50-capgate.json"
    token = root / "etc/capgate-hook/token"
    assert oct(token.stat().st_mode & 0o777) == "0o640"
    assert oct((root / "etc/capgate-hook/pristine").stat().st_mode & 0o777) == "0o700"
    hook_py.write_text("print('{}')\n")  # a user with sudo edits the gate away
    settings.unlink()
    token.chmod(0o644)
    pristine = str(root / "etc/capgate-hook/pristine")
    restored = watchdog.run(pristine)
    assert sorted(restored) == sorted([str(hook_py), str(settings), str(token)])
    assert hook_py.read_bytes() == (CLIENT / "hook.py").read_bytes()
    assert json.loads(settings.read_text())["allowManagedHooksOnly"] is True
    assert oct(token.stat().st_mode & 0o777) == "0o640"
    # the server (capgate.example) is unreachable: the tamper report waits for the next run
    assert json.loads((Path(pristine) / "tamper-pending.json").read_text()) == sorted(restored)
    assert watchdog.run(pristine) == []
    assert {e["path"] for e in manifest["files"]} >= {str(hook_py), str(settings)}
    requirements = root / "etc/codex/requirements.toml"
    requirements.write_text("# the admin's own now\n")
    install.uninstall(root=str(root), log=lambda _: None)
    after = tree(root)
    assert after.pop("etc/codex/requirements.toml")[1] == "# the admin's own now\n"
    assert after == before


def test_http_over_a_bare_socket(tmp_path: Path) -> None:
    """The hook's own HTTP/1.1 (no http.client: its imports cost more than the rest): a
    path prefix, the Host header, the body, a chunked answer."""
    import http.server
    import threading

    seen: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seen.update(path=self.path, host=self.headers["Host"],
                        body=self.rfile.read(int(self.headers["Content-Length"])))  # fmt: skip
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"decision":', b' "allow"}'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/capgate"
        config = {"server": base, "token": "cgh-x"}
        answer = hook.call(config, "POST", "/hook/v1/gate", {"a": 1}, 5)
    finally:
        server.shutdown()
        server.server_close()
    assert answer == {"decision": "allow"}
    assert seen == {"path": "/capgate/hook/v1/gate",
                    "host": f"127.0.0.1:{server.server_address[1]}", "body": b'{"a": 1}'}  # fmt: skip
    with pytest.raises(hook.Offline, match="cannot reach"):
        hook.call(
            {"server": f"http://127.0.0.1:{closed_port()}", "token": "t"}, "GET", "/", None, 1
        )


def test_install_needs_root(tmp_path: Path) -> None:
    """`capgate hook install` and the served installer refuse to run but as root. The CLI
    runs with its effective uid faked (its package may sit where another user cannot read,
    e.g. a clone in a 0700 temporary folder); the installer, read from stdin by the system
    interpreter, really runs as nobody when the tests run as root."""
    fake = (
        "import os, sys; os.geteuid = lambda: 65534; "
        "sys.argv = ['capgate', 'hook', 'install', '--server', 'http://x', '--code', 'cgi-x']; "
        "from capgate.cli.entry import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True,
                          check=False, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})  # fmt: skip
    assert done.returncode == 1
    assert "run as root" in done.stderr
    if os.geteuid() == 0:
        need(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    installer = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-",
         "--server", "http://x", "--code", "cgi-x"] if os.geteuid() == 0 else
        [PYTHON, "-", "--server", "http://x", "--code", "cgi-x"],
        input=(CLIENT / "install.py").read_text(), capture_output=True, text=True, check=False,
        cwd="/",
    )  # fmt: skip
    assert installer.returncode == 1 and "run as root" in installer.stderr, installer


def test_a_long_transcript_is_reported_in_parts_the_server_accepts(tmp_path: Path) -> None:
    """The server takes at most 1000 calls a report: 2500 new calls make three."""
    folder = hook_folder(tmp_path, f"http://127.0.0.1:{closed_port()}")
    transcript = tmp_path / "long.jsonl"
    write_lines(transcript, [user("p1")] + [
        assistant(f"req_{i}", f"m{i}", "claude-sonnet-4-6", 0, input_tokens=1) for i in range(2500)
    ])  # fmt: skip
    stop = {"hook_event_name": "Stop", "session_id": "s", "prompt_id": "p1",
            "transcript_path": str(transcript)}  # fmt: skip
    assert run_hook(folder, tmp_path, stop) == ""
    queue = tmp_path / "state" / "capgate-hook" / "queue"
    sizes = sorted(len(json.loads(p.read_text())["report"]["calls"]) for p in queue.iterdir())
    assert sizes == [500, 1000, 1000]


def test_an_admins_own_codex_requirements_are_never_replaced(tmp_path: Path) -> None:
    """--codex with a requirements.toml capgate did not write: a clear error before the
    install code is spent; capgate's own file may be replaced."""
    path = tmp_path / "etc" / "codex" / "requirements.toml"
    path.parent.mkdir(parents=True)
    path.write_text('allowed_approval_policies = ["never"]\n')
    with pytest.raises(install.InstallError, match="was not written by capgate"):
        install.install("http://127.0.0.1:9", "cgi-x", ["codex"], "root", root=str(tmp_path))
    path.write_text(install.codex_requirements("/usr/bin/python3"))
    install.check_codex_free(str(tmp_path))  # capgate's own: fine


@pytest.mark.parametrize("name", ["hook.py", "install.py", "watchdog.py"])
def test_the_client_files_are_python_3_8_and_stdlib_only(name: str) -> None:
    """They run on the developer's system python3 (>= 3.8), with nothing installed."""
    import ast

    tree = ast.parse((CLIENT / name).read_text(), feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_hook_imports_little(tmp_path: Path) -> None:
    """Importing is most of the hook's time (HOOKS.md §7): no http.client (email, ssl), no
    typing, no subprocess on a gate to an http:// server."""
    folder = hook_folder(tmp_path, f"http://127.0.0.1:{closed_port()}")
    event = {"hook_event_name": "UserPromptSubmit", "session_id": "s", "prompt_id": "p"}
    done = subprocess.run(
        [PYTHON, "-I", "-X", "importtime", str(folder / "hook.py"), "claude"],
        input=json.dumps(event), capture_output=True, text=True, check=False,
        env={"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert '"decision": "block"' in done.stdout  # it ran: the server is down, no cache
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not imported & {"http.client", "email", "ssl", "socket", "typing", "subprocess"}
