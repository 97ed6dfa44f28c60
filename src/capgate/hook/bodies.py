"""The hook's request bodies (enrol, gate, check, tamper), validated: InvalidRequest
naming the first bad field, before anything changes. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from capgate.errors import InvalidRequest
from capgate.hook.report import AGENT_NAMES, Report, agent_of, parse_report, text
from capgate.keys import CODE_PREFIX

MODEL_SOURCES = ("event", "transcript", "cmdline", "env", "settings")
# UserPromptSubmit: a background task's result (`<task-notification>`), not a new prompt.
CHECK_EVENTS = ("PreToolUse", "PreModelSwitch", "PreCompact", "UserPromptSubmit")
MAX_FILES = 100
_HOST_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    return body


def _report(body: dict[str, Any]) -> Report | None:
    report = body.get("report")
    return None if report is None else parse_report(report)


@dataclass(frozen=True, slots=True)
class Enrol:
    code: str
    hostname: str
    os: str
    os_user: str
    agents: tuple[str, ...]
    hook_version: str | None


def parse_enrol(body: Any) -> Enrol:
    d = _object(body)
    code = d.get("code")
    if not isinstance(code, str) or not code.startswith(CODE_PREFIX) or len(code) > 100:
        raise InvalidRequest(f"code: expected the install code ({CODE_PREFIX}...)")
    hostname = _HOST_CHARS.sub("-", str(text(d.get("hostname"), "hostname"))).strip("-.")[:100]
    if not hostname:
        raise InvalidRequest("hostname: expected the machine's host name")
    agents = d.get("agents", list(AGENT_NAMES))
    if not isinstance(agents, list) or not agents or any(a not in AGENT_NAMES for a in agents):
        raise InvalidRequest('agents: expected a list of "claude" and "codex"')
    return Enrol(
        code.strip(),
        hostname,
        str(text(d.get("os"), "os")),
        str(text(d.get("os_user"), "os_user")),
        tuple(dict.fromkeys(agents)),
        text(d.get("hook_version"), "hook_version", optional=True),
    )


@dataclass(frozen=True, slots=True)
class Gate:
    agent: str
    session_id: str
    prompt_id: str
    model: str | None
    model_source: str | None
    hook_version: str | None
    report: Report | None


def parse_gate(body: Any) -> Gate:
    d = _object(body)
    source = d.get("model_source")
    if source is not None and source not in MODEL_SOURCES:
        raise InvalidRequest(f"model_source: expected one of {', '.join(MODEL_SOURCES)} or null")
    return Gate(
        agent_of(d.get("agent")),
        str(text(d.get("session_id"), "session_id")),
        str(text(d.get("prompt_id"), "prompt_id")),
        text(d.get("model"), "model", optional=True),
        source,
        text(d.get("hook_version"), "hook_version", optional=True),
        _report(d),
    )


@dataclass(frozen=True, slots=True)
class Check:
    agent: str
    session_id: str
    prompt_id: str | None
    event: str
    model: str | None
    to_model: str | None
    report: Report | None


def parse_check(body: Any) -> Check:
    d = _object(body)
    event = d.get("event")
    if event not in CHECK_EVENTS:
        raise InvalidRequest(f"event: expected one of {', '.join(CHECK_EVENTS)}")
    to_model = text(d.get("to_model"), "to_model", optional=True)
    if event == "PreModelSwitch" and to_model is None:
        raise InvalidRequest("to_model: PreModelSwitch needs the model switched to")
    return Check(
        agent_of(d.get("agent")),
        str(text(d.get("session_id"), "session_id")),
        text(d.get("prompt_id"), "prompt_id", optional=True),
        str(event),
        text(d.get("model"), "model", optional=True),
        to_model,
        _report(d),
    )


def parse_tamper(body: Any) -> tuple[tuple[str, ...], str | None]:
    d = _object(body)
    files = d.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise InvalidRequest(f"files: expected a list of at most {MAX_FILES} paths")
    paths = tuple(str(text(f, f"files[{i}]")) for i, f in enumerate(files))
    return paths, text(d.get("hook_version"), "hook_version", optional=True)
