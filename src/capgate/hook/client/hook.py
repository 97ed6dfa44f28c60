"""capgate's hook: the gate that Claude Code and Codex run before every prompt and tool call.

Installed by `capgate hook install` as /etc/capgate-hook/hook.py (root-owned) and run by the
managed settings as `/usr/bin/python3 -I /etc/capgate-hook/hook.py claude|codex` with the
event's JSON on stdin. One file, standard library only, Python >= 3.8, few imports: it runs
before every prompt, and importing is most of its cost (docs/hook-mode.md).

- UserPromptSubmit: report the usage new in the transcript, ask `POST /hook/v1/gate`, block
  with the server's message. A background task's result (`<task-notification>`) is no new
  prompt: it is checked like a tool call. PreToolUse / PreModelSwitch / PreCompact: report,
  ask `/hook/v1/check`, stop the turn / refuse the switch / refuse the compaction.
  Stop / SubagentStop / SessionEnd: report only, never block.
- Usage comes from the transcript (Claude Code: assistant lines, subagent files included,
  counted once per request id) or the rollout file (Codex: `token_usage_record` lines), read
  incrementally: the per-user state folder remembers file offsets and the ids already sent.
- The server is the truth. Unreachable, the hook enforces the last limits it was given (the
  cache) counting what it queued since, and queues its reports for later (the server drops
  duplicates). No cache, or any error of its own: a gating event is refused (fail closed).
- The machine's token is read from the `token` file next to this one and never printed,
  except by `hook.py otel-headers`, Claude Code's `otelHeadersHelper`, to Claude Code.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False  # `typing` costs the hook milliseconds at run time: types only
if TYPE_CHECKING:
    from typing import Any

VERSION = "1"
HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE_S = 7.0  # the managed settings allow 10 s: answer (even a refusal) well before that
GATING = ("UserPromptSubmit", "PreToolUse", "PreModelSwitch", "PreCompact")
REPORTING = ("Stop", "SubagentStop", "SessionEnd", "StopFailure")
CALL_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
MAX_CALLS = 1000  # per report (the server refuses more)
NOTIFICATION = "<task-notification>"  # how a background task's result starts
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class Offline(Exception):
    """The server could not be reached, timed out, or answered 429 / 5xx."""


class Refused(Exception):
    """The server answered 4xx (a revoked machine, a bad body): never retried."""


# -- the answers Claude Code and Codex understand (docs: HOOKS.md §3) -------------------------


def refusal(event: str, agent: str, message: str) -> dict[str, Any]:
    """The JSON that refuses `event` with `message` (no command line or secret shown)."""
    if event == "UserPromptSubmit":
        if agent == "codex":
            return {"decision": "block", "reason": message}
        return {
            "decision": "block",
            "reason": message,
            "hookSpecificOutput": {
                "hookEventName": "UserPromptSubmit",
                "suppressOriginalPrompt": True,
            },
        }
    if event == "PreToolUse" and agent == "codex":  # Codex refuses continue / stopReason
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": message,
            }
        }
    if event == "PreToolUse":  # deny the tool AND end the turn: no model request after it
        return {
            "continue": False,
            "stopReason": message,
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": message,
            },
        }
    if event == "PreModelSwitch":
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreModelSwitch",
                "permissionDecision": "deny",
                "permissionDecisionReason": message,
            }
        }
    return {"decision": "block", "reason": message}  # PreCompact


# -- configuration, clock, HTTP ---------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def load_config(folder: str = HERE) -> dict[str, Any]:
    """config.json and the token, next to this file (root-owned: not the user's to change)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config: dict[str, Any] = json.load(f)
    with open(os.path.join(folder, "token"), encoding="utf-8") as f:
        config["token"] = f.read().strip()
    return config


def call(
    config: dict[str, Any], method: str, path: str, body: dict[str, Any] | None, timeout: float
) -> dict[str, Any]:
    """One request to the capgate server; the JSON answer. Raises Offline or Refused."""
    server = config["server"]
    data = b"" if body is None else json.dumps(body).encode()
    headers = {
        "Authorization": "Bearer " + config["token"],
        "Content-Type": "application/json",
        "User-Agent": "capgate-hook/" + VERSION,
    }
    try:
        status, raw = http(server, method, path, data, headers, max(0.2, min(timeout, 5.0)),
                           config.get("cafile"))  # fmt: skip
    except (OSError, ValueError) as exc:
        raise Offline("cannot reach " + server + ": " + (str(exc) or type(exc).__name__)) from None
    if status == 429 or status >= 500:
        raise Offline(server + " answered " + str(status))
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        raise Offline(server + " answered something that is not JSON") from None
    if status >= 400:
        error = answer.get("error") if isinstance(answer, dict) else None
        text = error.get("message") if isinstance(error, dict) else None
        raise Refused(text or "the server refused the request (" + str(status) + ")")
    return answer if isinstance(answer, dict) else {}


def http(
    server: str,
    method: str,
    path: str,
    data: bytes,
    headers: dict[str, str],
    timeout: float,
    cafile: str | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange (`Connection: close`) on a bare socket: http.client's imports
    (email, ssl) cost 25-60 ms per prompt, more than all the rest of the hook. HTTPS pays
    for `ssl` only when the server is https."""
    scheme, _, rest = server.partition("://")
    authority, _, prefix = rest.partition("/")
    if authority.startswith("["):  # [IPv6]:port
        host, _, port = authority[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = authority.partition(":")
    port_number = int(port) if port else (443 if scheme == "https" else 80)
    target = ("/" + prefix.strip("/") if prefix.strip("/") else "") + path
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
        f"Content-Length: {len(data)}\r\n"
    )
    head += "".join(k + ": " + v + "\r\n" for k, v in headers.items()) + "\r\n"
    sock = _connect(host, port_number, timeout, scheme == "https", cafile)
    try:
        sock.sendall(head.encode("latin-1") + data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    raw = b"".join(chunks)
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    if any(line.lower().replace(b" ", b"") == b"transfer-encoding:chunked" for line in lines):
        payload = _unchunk(payload)
    return status, payload


def _connect(host: str, port: int, timeout: float, tls: bool, cafile: str | None) -> Any:
    if tls:
        import socket
        import ssl

        context = ssl.create_default_context(cafile=cafile or None)
        plain = socket.create_connection((host, port), timeout)
        return context.wrap_socket(plain, server_hostname=host)
    import _socket  # socket.py itself imports enum & co: ~15 ms

    error: OSError = OSError("no address for " + host)
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, 1):
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _unchunk(payload: bytes) -> bytes:
    out, rest = [], payload
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size.split(b";")[0] or b"0", 16)
        if length == 0:
            break
        out.append(rest[:length])
        rest = rest[length + 2 :]
    return b"".join(out)


# -- per-user state (deletable: the server holds the counts) ----------------------------------


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "capgate-hook")


def read_json(path: str, default: dict[str, Any]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return default
    return data if isinstance(data, dict) else default


def write_json(path: str, data: dict[str, Any]) -> None:
    """Atomic replace: parallel hooks of one session never see half a file."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(temp, path)


def session_path(folder: str, agent: str, session: str) -> str:
    name = "".join(c if c in SAFE else "_" for c in session)[:120] or "none"
    return os.path.join(folder, "sessions", agent + "-" + name + ".json")


def new_session() -> dict[str, Any]:
    return {"offsets": {}, "prompts": {}, "sent": [], "model": None, "model_source": None}


# -- usage: Claude Code transcripts, Codex rollouts (HOOKS.md §5, §9) --------------------------


def read_new_lines(path: str, state: dict[str, Any]) -> list[Any]:
    """The complete lines appended to `path` since the last read (a half-written last line
    waits for the next event)."""
    offset = state["offsets"].get(path, 0)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                offset = 0  # rewritten
            f.seek(offset)
            data = f.read()
    except OSError:
        return []
    end = data.rfind(b"\n") + 1
    state["offsets"][path] = offset + end
    return data[:end].split(b"\n")


def claude_files(transcript: str, event: dict[str, Any]) -> list[Any]:
    """The session's transcript and its subagents' files."""
    files = [transcript]
    folder = transcript[: -len(".jsonl")] + "/subagents" if transcript.endswith(".jsonl") else ""
    try:
        names = sorted(os.listdir(folder)) if folder else []
    except OSError:
        names = []
    files += [folder + "/" + n for n in names if n.endswith(".jsonl")]
    extra = event.get("agent_transcript_path")
    if isinstance(extra, str) and extra and extra not in files:
        files.append(extra)
    return files


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def claude_usage(
    transcript: str, event: dict[str, Any], state: dict[str, Any], sent: set[str]
) -> list[Any]:
    """New calls in the transcript files: one per request id (else message id), however many
    lines (one per content block) carry it."""
    calls: dict[str, Any] = {}
    for path in claude_files(transcript, event):
        prompt = state["prompts"].get(path)
        for raw in read_new_lines(path, state):
            if not (b'"usage"' in raw or b'"promptId"' in raw or b"cost-state" in raw):
                if b'"modelId"' in raw and path == transcript:
                    _attachment_model(raw, state)
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            kind = line.get("type")
            if kind == "user" and isinstance(line.get("promptId"), str):
                prompt = line["promptId"]
            elif kind == "cost-state" and path == transcript:
                state["cost_state"] = line
            elif kind == "assistant":
                entry = _claude_call(line, prompt)
                if entry is not None and entry["id"] not in sent:
                    calls[entry["id"]] = entry
                    if path == transcript:
                        state["seen_model"] = entry["model"]
        state["prompts"][path] = prompt
    return list(calls.values())


def _attachment_model(raw: bytes, state: dict[str, Any]) -> None:
    try:
        line = json.loads(raw)
        attachment = line.get("attachment") or {}
        if attachment.get("type") == "model":
            model = (attachment.get("identity") or {}).get("modelId")
            if isinstance(model, str) and model:
                state["seen_model"] = model
    except (ValueError, AttributeError):
        return


def _claude_call(line: dict[str, Any], prompt: str | None) -> dict[str, Any] | None:
    message = line.get("message")
    if not isinstance(message, dict):
        return None
    usage, model = message.get("usage"), message.get("model")
    if not isinstance(usage, dict) or not isinstance(model, str) or model in ("", "<synthetic>"):
        return None
    mid = message.get("id") if isinstance(message.get("id"), str) else None
    key = line.get("requestId") if isinstance(line.get("requestId"), str) else mid
    if not key:
        return None
    split = usage.get("cache_creation")
    write_1h = _count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
    return {
        "id": key,
        "message_id": mid,
        "prompt_id": prompt,
        "model": model,
        "input": _count(usage.get("input_tokens")),
        "output": _count(usage.get("output_tokens")),
        "cache_read": _count(usage.get("cache_read_input_tokens")),
        "cache_write": max(write_1h, _count(usage.get("cache_creation_input_tokens"))),
        "cache_write_1h": write_1h,  # a part of cache_write, as the server requires
    }


def codex_usage(rollout: str, state: dict[str, Any], sent: set[str]) -> list[Any]:
    """New `token_usage_record` lines of a Codex rollout: one call per response id."""
    calls: dict[str, Any] = {}
    for raw in read_new_lines(rollout, state):
        if b"token_usage_record" not in raw and b"turn_context" not in raw:
            continue
        try:
            line = json.loads(raw)
            payload = line.get("payload") or {}
        except (ValueError, AttributeError):
            continue
        if line.get("type") == "turn_context" and isinstance(payload.get("model"), str):
            state["seen_model"] = payload["model"]
        elif line.get("type") == "token_usage_record" and isinstance(payload, dict):
            key, usage = payload.get("response_id"), payload.get("usage") or {}
            if not isinstance(key, str) or not key or key in sent:
                continue
            cached = _count(usage.get("cached_input_tokens"))
            calls[key] = {
                "id": key,
                "message_id": key,
                "prompt_id": payload.get("turn_id"),
                "model": state.get("seen_model") or state.get("model") or "gpt-5",
                "input": max(0, _count(usage.get("input_tokens")) - cached),
                "output": _count(usage.get("output_tokens")),
                "cache_read": cached,
                "cache_write": 0,
                "cache_write_1h": 0,
            }
    return list(calls.values())


def wait_for_text(path: str, text: object, deadline: Deadline) -> None:
    """`--bare` writes a turn's last line ~70 ms after Stop: poll briefly (<= 1 s) until the
    answer's start is in the file (HOOKS.md §5)."""
    if not isinstance(text, str):
        return
    probe = ""
    for char in text:
        if not (char.isalnum() or char in " ,.!?-:;'") or len(probe) >= 40:
            break
        probe += char
    if len(probe) < 4:
        return
    needle, until = probe.encode(), time.monotonic() + min(1.0, deadline.left() - 2)
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
                if needle in f.read():
                    return
        except OSError:
            return
        if time.monotonic() >= until:
            return
        time.sleep(0.05)


# -- which model a prompt is for (HOOKS.md §2) ------------------------------------------------


def guess_model(
    agent: str, event: dict[str, Any], state: dict[str, Any], cache: dict[str, Any] | None
) -> tuple[Any, Any]:
    """(model, source): the event's, then what the session said or wrote, then Claude Code's
    command line, ANTHROPIC_MODEL and the settings files (an alias is resolved)."""
    if isinstance(event.get("model"), str) and event["model"]:
        return event["model"], "event"
    if state.get("model"):
        return state["model"], state.get("model_source") or "event"
    if state.get("seen_model"):
        return state["seen_model"], "transcript"
    if agent != "claude":
        return None, None
    found = _cmdline_model(os.environ.get("CLAUDE_PID", ""))
    if found:
        return resolve_alias(found, cache), "cmdline"
    if os.environ.get("ANTHROPIC_MODEL"):
        return resolve_alias(os.environ["ANTHROPIC_MODEL"], cache), "env"
    project = os.environ.get("CLAUDE_PROJECT_DIR") or event.get("cwd") or ""
    home = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    for path in (
        os.path.join(project, ".claude", "settings.local.json"),
        os.path.join(project, ".claude", "settings.json"),
        os.path.join(home, "settings.json"),
    ):
        model = read_json(path, {}).get("model")
        if isinstance(model, str) and model:
            return resolve_alias(model, cache), "settings"
    return None, None


def _cmdline_model(pid: str) -> str | None:
    if not pid.isdigit():
        return None
    try:
        with open("/proc/" + pid + "/cmdline", "rb") as f:
            args = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args) and args[i + 1]:
            return args[i + 1]
        if arg.startswith("--model="):
            return arg[len("--model=") :] or None
    return None


def resolve_alias(model: str, cache: dict[str, Any] | None) -> str:
    """`sonnet` / `opus[1m]` / `haiku` -> the newest allowed model of that family the cache
    prices; anything else as given."""
    name = model.split("[", 1)[0].strip().lower()
    if name not in ("sonnet", "opus", "haiku", "opusplan"):
        return model
    family = "opus" if name == "opusplan" else name
    known = sorted(
        m for m in ((cache or {}).get("prices") or {}) if "-" + family + "-" in "-" + m + "-"
    )
    return known[-1] if known else name


# -- offline: the cached limits ---------------------------------------------------------------


def nano(value: object) -> int:
    """Dollars (a decimal string or a number) in nano-dollars, without importing decimal."""
    text = str(value).strip()
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("+-").partition(".")
    digits = (fraction + "000000000")[:9]
    amount = int(whole or "0") * 1_000_000_000 + int(digits or "0")
    return -amount if negative else amount


def glob_match(model: str | None, pattern: str | None) -> bool:
    if pattern is None:
        return True
    if model is None:
        return False
    from fnmatch import fnmatchcase  # offline only

    return fnmatchcase(model, pattern)


def amounts(calls: list[Any], prices: dict[str, Any]) -> dict[str, Any]:
    """What reported calls count in each metric (requests and credits count prompts)."""
    total = {"tokens": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0}
    for c in calls:
        read = c["input"] + c["cache_read"] + c["cache_write"]
        total["input_tokens"] += read
        total["output_tokens"] += c["output"]
        total["tokens"] += read + c["output"]
        price = prices.get(c["model"]) or {}
        five = c["cache_write"] - c["cache_write_1h"]
        total["cost_usd"] += (
            c["input"] * nano(price.get("input", 0))
            + c["output"] * nano(price.get("output", 0))
            + c["cache_read"] * nano(price.get("cache_read", 0))
            + five * nano(price.get("cache_write", 0))
            + c["cache_write_1h"] * nano(price.get("cache_write_1h", 0))
        ) // 1_000_000
    return total


def weight(cache: dict[str, Any], model: str | None) -> int:
    for pattern, credits in (cache.get("weights") or {}).items():
        if glob_match(model, pattern):
            return int(credits)
    return 1


def cached_decision(
    held: dict[str, Any] | None, model: str | None, gating: bool, folder: str
) -> str | None:
    """None when the cached limits admit (gating: a new prompt; else: a tool call), else why
    not. `held` = {"cache", "received_at"} as saved; queued reports count on top of `used`."""
    if not held or not isinstance(held.get("cache"), dict):
        return "no limits cached on this machine yet"
    cache = held["cache"]
    issued = float(cache.get("issued_at") or 0)
    now = issued + max(0.0, time.time() - float(held.get("received_at") or 0))
    if now > float(cache.get("valid_until") or 0):
        return "the cached limits have expired"
    if cache.get("status", "active") != "active":
        return "your access is " + str(cache.get("status"))
    blocked = cache.get("blocked_models") or {}
    if model in blocked:
        return f"{model} is not allowed now: {blocked[model]}"
    allowed = cache.get("models") or []
    if model and allowed and not any(glob_match(model, g) for g in allowed):
        return model + " is not allowed"
    queued = queued_items(folder)
    prices = cache.get("prices") or {}
    estimate = cache.get("estimate") or {}
    for limit in cache.get("limits") or []:
        if not glob_match(model, limit.get("model")):
            continue
        resets = limit.get("resets_at")
        reset = resets is not None and now >= float(resets)  # the window restarted since
        used = 0 if reset else _metric_value(limit["metric"], limit.get("used", 0))
        # still queued = not counted by the server (its `used`), unless from an old window
        mine = [q for q in queued if not reset or float(q.get("at") or 0) >= float(resets)]
        calls = [
            c
            for q in mine
            for c in q.get("calls") or []
            if glob_match(c["model"], limit.get("model"))
        ]
        prompts = [
            p
            for q in mine
            for p in q.get("prompts") or []
            if glob_match(p["model"], limit.get("model"))
        ]
        metric = limit["metric"]
        if metric == "requests":
            used += len(prompts)
            need = 1
        elif metric == "credits":
            used += sum(weight(cache, p["model"]) for p in prompts)
            need = weight(cache, model)
        elif metric in ("tokens", "input_tokens", "output_tokens", "cost_usd"):
            used += amounts(calls, prices)[metric]
            need = _estimate(metric, model, estimate, prices)
        else:
            continue
        most = _metric_value(metric, limit.get("max", 0))
        if used >= most or (gating and used + need > most):
            label = limit.get("label") or metric
            return f"{label}: {_show(metric, used)} of {_show(metric, most)} used (cached offline)"
    return None


def _metric_value(metric: str, value: object) -> int:
    if metric == "cost_usd":
        return value if isinstance(value, int) and not isinstance(value, bool) else nano(value)
    return int(str(value).split(".")[0])


def _show(metric: str, value: int) -> str:
    if metric == "cost_usd":
        return f"${value // 1_000_000_000}.{value % 1_000_000_000 // 10_000_000:02d}"
    return str(value)


def _estimate(
    metric: str, model: str | None, estimate: dict[str, Any], prices: dict[str, Any]
) -> int:
    inp, out = int(estimate.get("input") or 0), int(estimate.get("output") or 0)
    if metric == "cost_usd":
        price = prices.get(model or "") or {}
        return (inp * nano(price.get("input", 0)) + out * nano(price.get("output", 0))) // 10**6
    return {"tokens": inp + out, "input_tokens": inp, "output_tokens": out}[metric]


def queued_items(folder: str) -> list[Any]:
    queue = os.path.join(folder, "queue")
    try:
        names = sorted(os.listdir(queue))
    except OSError:
        return []
    items = [read_json(os.path.join(queue, n), {}) for n in names if n.endswith(".json")]
    return [item for item in items if item]


def enqueue(folder: str, item: dict[str, Any]) -> None:
    name = f"{time.time_ns()}-{os.getpid()}.json"
    write_json(os.path.join(folder, "queue", name), item)


def flush_queue(config: dict[str, Any], folder: str, deadline: Deadline) -> None:
    """Send queued reports (oldest first) while there is time; the server drops duplicates."""
    queue = os.path.join(folder, "queue")
    try:
        names = sorted(n for n in os.listdir(queue) if n.endswith(".json"))
    except OSError:
        return
    for name in names:
        if deadline.left() < 2:
            return
        item = read_json(os.path.join(queue, name), {})
        body = item.get("report")
        if isinstance(body, dict):
            try:
                call(config, "POST", "/hook/v1/report", body, deadline.left() - 1)
            except Offline:
                return
            except Refused:
                pass  # never accepted as it is: drop it rather than retry forever
        try:  # noqa: SIM105 - contextlib costs the hook 3 ms of imports
            os.remove(os.path.join(queue, name))
        except OSError:
            pass


# -- the events -------------------------------------------------------------------------------


class Hook:
    def __init__(
        self, agent: str, event: dict[str, Any], config: dict[str, Any], folder: str
    ) -> None:
        self.agent, self.event, self.config, self.folder = agent, event, config, folder
        self.deadline = Deadline(DEADLINE_S)
        self.name = str(event.get("hook_event_name") or "")
        self.session = str(
            event.get("session_id") or os.environ.get("CLAUDE_CODE_SESSION_ID") or "none"
        )
        self.path = session_path(folder, agent, self.session)
        self.state = read_json(self.path, new_session())
        self.held = read_json(os.path.join(folder, "cache.json"), {})

    def prompt_id(self) -> str | None:
        value = self.event.get("prompt_id") or self.event.get("turn_id")
        return value if isinstance(value, str) else None

    def run(self) -> dict[str, Any] | None:
        if self.name == "SessionStart":
            self.remember_model(self.event.get("model"))
            self.save()
            return None
        report = self.report()
        if self.name == "UserPromptSubmit" and not self.notification():
            return self.gate(report)
        if self.name in GATING:
            return self.check(report)
        self.remember_tasks()
        self.send_report(report)
        return None

    def notification(self) -> bool:
        """A background task's result handed back to the model (HOOKS.md §2): the person
        typed nothing, so it is checked like a tool call, not gated as a new prompt. Only
        for a task this session was seen to run in the background (Stop's
        `background_tasks`, SubagentStop's `agent_id`), once: a typed prompt that starts
        with `<task-notification>` is still a prompt."""
        prompt = self.event.get("prompt")
        if not isinstance(prompt, str) or not prompt.startswith(NOTIFICATION):
            return False
        start = prompt.find("<task-id>") + len("<task-id>")
        task = prompt[start : prompt.find("</task-id>", start)].strip()
        tasks = self.state.get("tasks") or []
        if start < len("<task-id>") or task not in tasks:
            return False
        self.state["tasks"] = [t for t in tasks if t != task]
        return True

    def remember_tasks(self) -> None:
        """The background tasks (and subagents) a Stop / SubagentStop names: their results
        may come back as task notifications."""
        found = [t.get("id") for t in self.event.get("background_tasks") or []
                 if isinstance(t, dict)]  # fmt: skip
        found.append(self.event.get("agent_id"))
        known = self.state.get("tasks") or []
        known += [t for t in found if isinstance(t, str) and t and t not in known]
        self.state["tasks"] = known[-200:]

    def remember_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self.state["model"], self.state["model_source"] = model, "event"

    def save(self) -> None:
        self.state["sent"] = self.state["sent"][-5000:]
        write_json(self.path, self.state)

    def report(self) -> dict[str, Any]:
        """The report body of what is new since the last event of this session."""
        transcript = self.event.get("transcript_path")
        sent = set(self.state["sent"])
        calls: list[Any] = []
        if isinstance(transcript, str) and transcript:
            if self.agent == "codex":
                calls = codex_usage(transcript, self.state, sent)
            else:
                if self.name == "Stop":
                    wait_for_text(
                        transcript, self.event.get("last_assistant_message"), self.deadline
                    )
                calls = claude_usage(transcript, self.event, self.state, sent)
        self.state["sent"] += [c["id"] for c in calls]
        while len(calls) > MAX_CALLS:  # the server takes <= 1000 a report: the rest, queued
            extra, calls = calls[:MAX_CALLS], calls[MAX_CALLS:]
            self.queue({"agent": self.agent, "session_id": self.session, "calls": extra,
                        "ended_prompts": [], "session_end": False}, [])  # fmt: skip
        open_prompts = self.state.setdefault("open", [])
        counted = self.state.setdefault("counted", [])  # open prompts with a call reported
        counted += [c["prompt_id"] for c in calls if c.get("prompt_id") not in (None, *counted)]
        # A Stop ends its prompt's lease only once a call of it was reported: a line still
        # unwritten (a busy machine) must not free the lease before its cost is counted.
        # The rest end with the session (or the session's next prompt, or the lease's age).
        prompt = self.prompt_id()
        ended = [prompt] if self.name == "Stop" and prompt and prompt in counted else []
        if self.name == "SessionEnd":  # every prompt admitted and not yet seen to end
            ended = [p for p in open_prompts if p]
        self.state["open"] = [p for p in open_prompts if p not in ended]
        self.state["counted"] = [p for p in counted if p in self.state["open"]]
        body: dict[str, Any] = {
            "agent": self.agent,
            "session_id": self.session,
            "calls": calls,
            "ended_prompts": ended,
            "session_end": self.name == "SessionEnd",
        }
        if self.name == "SessionEnd" and isinstance(self.state.get("cost_state"), dict):
            body["cost_state"] = self.state["cost_state"]
        return body

    def worth_sending(self, report: dict[str, Any]) -> bool:
        return bool(report["calls"] or report["ended_prompts"] or report["session_end"])

    def gate(self, report: dict[str, Any]) -> dict[str, Any] | None:
        cache = self.held.get("cache") if isinstance(self.held.get("cache"), dict) else None
        model, source = guess_model(self.agent, self.event, self.state, cache)
        body = {
            "agent": self.agent,
            "session_id": self.session,
            "prompt_id": self.prompt_id(),
            "model": model,
            "model_source": source,
            "hook_version": VERSION,
        }
        if self.worth_sending(report):
            body["report"] = report
        try:
            answer = call(self.config, "POST", "/hook/v1/gate", body, self.deadline.left() - 1)
        except Offline as exc:
            why = cached_decision(self.held, model, True, self.folder)
            admitted = {"model": model or "", "model_source": source, "prompt_id": self.prompt_id()}
            prompt = [] if why else [admitted]
            if not why:
                self.state["open"] = [*self.state.get("open", [])[-50:], self.prompt_id()]
            self.queue(report, prompt)
            self.save()
            if why:
                return refusal(self.name, self.agent, f"capgate: {exc} and {why} (fail closed).")
            return None
        except Refused as exc:
            self.save()
            return refusal(self.name, self.agent, "capgate: " + str(exc))
        if answer.get("decision") == "allow":
            self.state["open"] = [*self.state.get("open", [])[-50:], self.prompt_id()]
        self.save()
        self.online(answer)
        if answer.get("decision") == "allow":
            return None
        message = answer.get("message") or "capgate: the prompt was refused."
        return refusal(self.name, self.agent, message)

    def check(self, report: dict[str, Any]) -> dict[str, Any] | None:
        model, _ = guess_model(self.agent, self.event, self.state, None)
        to_model = self.event.get("to_model")
        body = {
            "agent": self.agent,
            "session_id": self.session,
            "prompt_id": self.prompt_id(),
            "event": self.name,
            "model": model,
            "to_model": to_model,
        }
        if self.worth_sending(report):
            body["report"] = report
        try:
            answer = call(self.config, "POST", "/hook/v1/check", body, self.deadline.left() - 1)
        except Offline as exc:
            self.queue(report, [])
            target = to_model if isinstance(to_model, str) and to_model else model
            why = cached_decision(self.held, target, False, self.folder)
            if why:
                self.save()
                return refusal(self.name, self.agent, f"capgate: {exc} and {why} (fail closed).")
            answer = {"decision": "allow"}
        except Refused as exc:
            self.save()
            return refusal(self.name, self.agent, "capgate: " + str(exc))
        else:
            self.online(answer)
        if answer.get("decision") != "allow":
            self.save()
            return refusal(self.name, self.agent, answer.get("message") or "capgate: stopped.")
        if self.name == "PreModelSwitch":
            self.remember_model(to_model)
        self.save()
        return None

    def send_report(self, report: dict[str, Any]) -> None:
        """Report-only events: never block, never complain."""
        if self.worth_sending(report):
            try:
                call(self.config, "POST", "/hook/v1/report", report, self.deadline.left() - 1)
            except Offline:
                self.queue(report, [])
            except Refused:
                pass
            else:
                flush_queue(self.config, self.folder, self.deadline)
        self.save()

    def queue(self, report: dict[str, Any], prompts: list[Any]) -> None:
        if not (self.worth_sending(report) or prompts):
            return
        cache = self.held.get("cache") or {}
        at = time.time()  # in the server's clock when the cache says how far off ours is
        if cache.get("issued_at") and self.held.get("received_at"):
            at += float(cache["issued_at"]) - float(self.held["received_at"])
        if prompts:  # admitted from the cache: for the server to count them (contract ext.)
            listed = [dict(p, at=at) for p in prompts if p.get("prompt_id")]
            report = dict(report, offline_prompts=listed)
        enqueue(
            self.folder, {"at": at, "report": report, "calls": report["calls"], "prompts": prompts}
        )

    def online(self, answer: dict[str, Any]) -> None:
        """Keep the limits for offline use, log out when told, send what was queued."""
        if isinstance(answer.get("cache"), dict):
            write_json(
                os.path.join(self.folder, "cache.json"),
                {"cache": answer["cache"], "received_at": time.time()},
            )
        logout(self.config, self.agent, self.folder, bool(answer.get("logout")))
        flush_queue(self.config, self.folder, self.deadline)


def logout(config: dict[str, Any], agent: str, folder: str, wanted: bool) -> None:
    """Run the agent's logout once per kill (`claude auth logout`), detached."""
    marker = os.path.join(folder, "logged-out-" + agent)
    if not wanted:
        if os.path.exists(marker):
            os.remove(marker)
        return
    if os.path.exists(marker):
        return
    commands = config.get("logout_cmd") or {}
    command = commands.get(agent) if isinstance(commands, dict) else None
    if not command:
        command = ["claude", "auth", "logout"] if agent == "claude" else ["codex", "logout"]
    write_json(marker, {"at": time.time()})
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.posix_spawnp(
            command[0], command, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                (os.POSIX_SPAWN_DUP2, null, 2),
            ],
        )  # fmt: skip
    except OSError:
        pass


def otel_headers(folder: str = HERE) -> int:
    """`hook.py otel-headers`: Claude Code's `otelHeadersHelper` (managed settings). Prints
    the OTLP header with the machine's token, read from the 0640 token file, so the
    world-readable settings file holds no token."""
    with open(os.path.join(folder, "token"), encoding="utf-8") as f:
        token = f.read().strip()
    sys.stdout.write(json.dumps({"Authorization": "Bearer " + token}))
    return 0


def main(argv: list[Any]) -> int:
    if len(argv) > 1 and argv[1] == "otel-headers":
        return otel_headers()
    agent = argv[1] if len(argv) > 1 and argv[1] in ("claude", "codex") else "claude"
    event: dict[str, Any] = {}
    try:
        loaded = json.loads(sys.stdin.buffer.read() or b"{}")
        event = loaded if isinstance(loaded, dict) else {}
        answer = Hook(agent, event, load_config(), state_dir()).run()
    except Exception as exc:  # noqa: BLE001 - any error of its own: refuse a gating event
        name = event.get("hook_event_name")
        if name not in GATING:
            return 0
        detail = f"{type(exc).__name__}: {exc}"
        answer = refusal(
            str(name), agent, f"capgate's hook failed ({detail}); refused (fail closed)."
        )
    if answer:
        sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
