"""Install capgate's hook on a developer's machine (run as root). Standard library only,
Python >= 3.8: the capgate server serves this file, so a machine without capgate installs with

    curl -fsSL URL/hook/install | sudo python3 - --server URL --code CODE [--claude] [--codex]

and `capgate hook install/status/uninstall` call the same functions. It exchanges the one-time
code for the machine's token, writes the managed settings the user cannot override, keeps a
root-only pristine copy of every file for the watchdog, and a timer that runs the watchdog.
Every path is under `root` ("/" for real; tests pass a temporary folder or run it in a
private mount namespace).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

HOOK_DIR = "/etc/capgate-hook"
CLAUDE_DROP_IN = "/etc/claude-code/managed-settings.d/50-capgate.json"
CLAUDE_DROP_IN_MAC = "/Library/Application Support/ClaudeCode/managed-settings.d/50-capgate.json"
CODEX_REQUIREMENTS = "/etc/codex/requirements.toml"
SYSTEMD_DIR = "/etc/systemd/system"
UNIT = "capgate-hook-watchdog"
CRON_FILE = "/etc/cron.d/capgate-hook"
LAUNCHD_PLIST = "/Library/LaunchDaemons/dev.capgate.hook-watchdog.plist"
MARKER = "# capgate-hook: written by `capgate hook install`; `capgate hook uninstall` removes it."
CLIENT_FILES = ("hook.py", "watchdog.py")
HOOK_VERSION = "1"
CLAUDE_EVENTS = (  # (event, matcher, blocks on failure)
    ("SessionStart", None, False),
    ("UserPromptSubmit", None, True),
    ("PreToolUse", "*", True),
    ("PreModelSwitch", None, True),
    ("PreCompact", None, True),
    ("Stop", None, False),
    ("SubagentStop", None, False),
    ("SessionEnd", None, False),
)
CODEX_EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "Stop", "SessionEnd")


class InstallError(Exception):
    """Something the person running the installer must fix; nothing was written."""


# -- small pieces -----------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def under(root: str, path: str) -> str:
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


def find_python() -> str:
    """An interpreter the user cannot swap: absolute, root-owned, not writable by others
    (a shim or a user's venv would add 100 ms per prompt, or be the user's to replace)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/opt/homebrew/bin/python3",
                      sys.executable):  # fmt: skip
        real = os.path.realpath(candidate or "")
        try:
            info = os.stat(real)
        except OSError:
            continue
        owners = (0, os.stat("/").st_uid)  # "/" is root's (its uid in a user namespace)
        if info.st_uid in owners and not info.st_mode & 0o022:
            return candidate
    raise InstallError("no root-owned python3 found (looked in /usr/bin, /usr/local/bin)")


def os_user_group(os_user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(os_user).pw_gid
    except KeyError:
        raise InstallError(f"no such OS user: {os_user!r} (give --os-user)") from None


def http_json(
    method: str, url: str, body: dict[str, Any] | None = None, token: str = ""
) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - the server's URL
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            return dict(json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise InstallError(f"{url} answered {exc.code}: {message}") from None
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot reach {url}: {exc}") from None


def client_files(server: str, local: str | None = None) -> dict[str, Any]:
    """hook.py and watchdog.py: from `local` (the installed capgate package) or downloaded
    from the server, each checked against the sha256 the server announces."""
    files = {}
    for name in CLIENT_FILES:
        if local:
            with open(os.path.join(local, name), "rb") as f:
                files[name] = f.read()
            continue
        url = server.rstrip("/") + "/hook/client/" + name
        try:
            with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310
                data, announced = response.read(), response.headers.get("x-capgate-sha256")
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot download {url}: {exc}") from None
        if not announced or announced.lower() != sha256(data):
            raise InstallError(f"{url} does not match its x-capgate-sha256 header")
        files[name] = data
    return files


# -- what is written --------------------------------------------------------------------------


def claude_settings(python: str, server: str) -> dict[str, Any]:
    """The managed drop-in: only managed hooks run, failures block, telemetry to capgate.
    It is world-readable, so it holds no token: Claude Code asks `otelHeadersHelper` (the
    hook in its `otel-headers` mode, reading the 0640 token file) for the OTLP header."""
    hook = {"type": "command", "command": python, "args": ["-I", HOOK_DIR + "/hook.py", "claude"]}
    hooks: dict[str, Any] = {}
    for event, matcher, blocks in CLAUDE_EVENTS:
        entry = dict(hook, timeout=10)
        if blocks:
            entry["onFailure"] = "block"
        group: dict[str, Any] = {"hooks": [entry]}
        if matcher:
            group = {"matcher": matcher, "hooks": [entry]}
        hooks[event] = [group]
    return {
        "allowManagedHooksOnly": True,
        "hooks": hooks,
        "otelHeadersHelper": f"{python} -I {HOOK_DIR}/hook.py otel-headers",
        "env": {
            "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": server.rstrip("/") + "/v1/logs",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORT_INTERVAL": "5000",
        },
    }


def codex_requirements(python: str) -> str:
    """/etc/codex/requirements.toml: managed hooks only, the hooks feature pinned on."""
    command = f"{python} -I {HOOK_DIR}/hook.py codex"
    lines = [MARKER, "allow_managed_hooks_only = true", "", "[features]", "hooks = true", "",
             "[hooks]", f'managed_dir = "{HOOK_DIR}"']  # fmt: skip
    for event in CODEX_EVENTS:
        timeout = 3 if event == "SessionEnd" else 10  # Codex clamps SessionEnd to 3 s
        lines += ["", f"[[hooks.{event}]]", f"[[hooks.{event}.hooks]]", 'type = "command"',
                  f"command = {json.dumps(command)}", f"timeout = {timeout}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def watchdog_files(python: str, system: str, systemd: bool) -> dict[str, Any]:
    """The timer that runs the watchdog every minute, from the root-only pristine copy."""
    run = f"{python} -I {HOOK_DIR}/pristine/watchdog.py"
    if system == "Darwin":
        plist = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
            '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
            '<plist version="1.0"><dict>\n'
            "<key>Label</key><string>dev.capgate.hook-watchdog</string>\n"
            "<key>ProgramArguments</key><array>"
            + "".join(f"<string>{a}</string>" for a in run.split())
            + "</array>\n<key>StartInterval</key><integer>60</integer>\n"
            "<key>RunAtLoad</key><true/>\n</dict></plist>\n"
        )
        return {LAUNCHD_PLIST: plist.encode()}
    if systemd:
        service = (
            "[Unit]\nDescription=capgate hook watchdog: restore the hook's files if changed\n\n"
            f"[Service]\nType=oneshot\nExecStart={run}\n"
        )
        timer = (
            "[Unit]\nDescription=Run the capgate hook watchdog every minute\n\n"
            "[Timer]\nOnBootSec=1min\nOnUnitActiveSec=1min\nAccuracySec=5s\n\n"
            "[Install]\nWantedBy=timers.target\n"
        )
        return {
            f"{SYSTEMD_DIR}/{UNIT}.service": service.encode(),
            f"{SYSTEMD_DIR}/{UNIT}.timer": timer.encode(),
        }
    return {CRON_FILE: (f"* * * * * root {run} >/dev/null 2>&1\n").encode()}


def plan(
    *,
    server: str,
    enrolled: dict[str, Any],
    agents: list[Any],
    os_user: str,
    group: int,
    python: str,
    clients: dict[str, Any],
    system: str,
    systemd: bool,
) -> list[Any]:
    """Every file to write: (path, bytes, mode, uid, gid). Pure: tests check it as it is."""
    token = enrolled["token"]
    config = {
        "server": server.rstrip("/"),
        "machine": enrolled.get("machine"),
        "user": enrolled.get("user"),
        "os_user": os_user,
        "agents": agents,
        "installed_at": time.time(),
        "hook_version": HOOK_VERSION,
        "logout_cmd": {"claude": ["claude", "auth", "logout"], "codex": ["codex", "logout"]},
    }
    files = [
        (HOOK_DIR + "/hook.py", clients["hook.py"], 0o644, 0, 0),
        (HOOK_DIR + "/watchdog.py", clients["watchdog.py"], 0o644, 0, 0),
        (HOOK_DIR + "/config.json", json.dumps(config, indent=2).encode() + b"\n", 0o644, 0, 0),
        (HOOK_DIR + "/token", token.encode() + b"\n", 0o640, 0, group),
    ]
    if "claude" in agents:
        path = CLAUDE_DROP_IN_MAC if system == "Darwin" else CLAUDE_DROP_IN
        settings = claude_settings(python, server)
        files.append((path, json.dumps(settings, indent=2).encode() + b"\n", 0o644, 0, 0))
    if "codex" in agents:
        files.append((CODEX_REQUIREMENTS, codex_requirements(python).encode(), 0o644, 0, 0))
    for path, data in watchdog_files(python, system, systemd).items():
        files.append((path, data, 0o644, 0, 0))
    return files


def pristine_name(path: str) -> str:
    return path.strip("/").replace("/", "__")


# -- doing it ---------------------------------------------------------------------------------


def write_file(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write via a temporary file and rename: never a half-written hook."""
    temp = path + ".capgate-tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(temp, uid, gid)
    os.chmod(temp, mode)
    os.replace(temp, path)


def make_dirs(path: str, created: list[Any]) -> None:
    """Create the missing folders of `path` (root, 0755), remembering which were new."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder, 0o755)
        os.chmod(folder, 0o755)  # noqa: S103 - a system folder others read
        created.append(folder)


def check_codex_free(root: str) -> None:
    path = under(root, CODEX_REQUIREMENTS)
    if os.path.exists(path) and not is_ours(path):
        raise InstallError(
            f"{path} exists and was not written by capgate: capgate will not replace it. Merge "
            "capgate's hooks into it by hand (docs/hook-mode.md) or move it away, then install "
            "again"
        )


def is_ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(MARKER[:14])
    except OSError:
        return False


def write_install(
    files: list[Any], watchdog_source: bytes, *, root: str = "/", log: object = print
) -> dict[str, Any]:
    """Write `plan`'s files and their pristine copies (root-only) under `root`, and the
    manifest the watchdog and uninstall read. Returns the manifest."""
    say = log if callable(log) else print
    created: list[Any] = []
    make_dirs(under(root, HOOK_DIR + "/pristine"), created)
    os.chmod(under(root, HOOK_DIR), 0o755)  # noqa: S103 - the hook runs as the user
    os.chmod(under(root, HOOK_DIR + "/pristine"), 0o700)
    manifest: dict[str, Any] = {"files": [], "dirs": created, "timer": None}
    for path, data, mode, uid, gid in files:
        target = under(root, path)
        make_dirs(os.path.dirname(target), created)
        write_file(target, data, mode, uid, gid)
        copy = under(root, HOOK_DIR + "/pristine/" + pristine_name(path))
        write_file(copy, data, 0o600, 0, 0)
        manifest["files"].append(
            {"path": target, "sha256": sha256(data), "mode": mode, "uid": uid, "gid": gid,
             "copy": copy}
        )  # fmt: skip
        say(f"wrote {target}")
    write_file(under(root, HOOK_DIR + "/pristine/watchdog.py"), watchdog_source, 0o700, 0, 0)
    data = json.dumps(manifest, indent=2).encode()
    write_file(under(root, HOOK_DIR + "/pristine/manifest.json"), data, 0o600, 0, 0)
    return manifest


def install(
    server: str,
    code: str,
    agents: list[Any],
    os_user: str,
    *,
    root: str = "/",
    local: str | None = None,
    system: str | None = None,
    log: object = print,
) -> dict[str, Any]:
    """Enrol this machine with `code` and write every file; returns the manifest."""
    say = log if callable(log) else print
    system = system or platform.system()
    if os.path.exists(under(root, HOOK_DIR + "/config.json")):
        raise InstallError(
            "capgate's hook is already installed: run `capgate hook uninstall` first"
        )
    if "codex" in agents:
        check_codex_free(root)
    group = os_user_group(os_user)
    python = find_python()
    clients = client_files(server, local)
    enrolled = http_json(
        "POST",
        server.rstrip("/") + "/hook/v1/enrol",
        {"code": code, "hostname": socket.gethostname(), "os": system.lower(), "os_user": os_user,
         "agents": agents, "hook_version": HOOK_VERSION},
    )  # fmt: skip
    if not str(enrolled.get("token", "")).startswith("cgh-"):
        raise InstallError("the server did not answer a machine token")
    systemd = system == "Linux" and os.path.isdir(under(root, "/run/systemd/system"))
    files = plan(server=server, enrolled=enrolled, agents=agents, os_user=os_user, group=group,
                 python=python, clients=clients, system=system, systemd=systemd)  # fmt: skip
    manifest = write_install(files, clients["watchdog.py"], root=root, log=say)
    manifest["timer"] = start_timer(root, system, systemd, say)
    data = json.dumps(manifest, indent=2).encode()
    write_file(under(root, HOOK_DIR + "/pristine/manifest.json"), data, 0o600, 0, 0)
    say(
        f"capgate's hook is installed for {enrolled.get('user')} (machine "
        f"{enrolled.get('machine')}, OS user {os_user}). Restart running Claude Code / Codex "
        "sessions: they read managed settings at start."
    )
    return manifest


def start_timer(root: str, system: str, systemd: bool, say: object) -> str | None:
    """Start the watchdog's timer (real installs only: not under a test root)."""
    if root not in ("", "/"):
        return None
    commands = []
    if system == "Darwin":
        commands = [["launchctl", "load", "-w", LAUNCHD_PLIST]]
    elif systemd:
        commands = [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT + ".timer"],
        ]
    for command in commands:
        if shutil.which(command[0]):
            _run(command)
    return "launchd" if system == "Darwin" else "systemd" if systemd else "cron"


def _run(command: list[str]) -> None:
    """systemctl / launchctl, found on PATH (root's), best effort."""
    subprocess.run(command, check=False, capture_output=True)  # noqa: S603


def read_manifest(root: str = "/") -> dict[str, Any] | None:
    try:
        with open(under(root, HOOK_DIR + "/pristine/manifest.json"), encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None


def uninstall(*, root: str = "/", log: object = print) -> list[Any]:
    """Remove every file the install wrote, and nothing else. Returns what was removed."""
    say = log if callable(log) else print
    manifest = read_manifest(root)
    if manifest is None:
        raise InstallError(
            f"capgate's hook is not installed here (no {HOOK_DIR}/pristine/manifest.json)"
        )
    if root in ("", "/") and manifest.get("timer") == "systemd" and shutil.which("systemctl"):
        _run(["systemctl", "disable", "--now", UNIT + ".timer"])
    if root in ("", "/") and manifest.get("timer") == "launchd" and shutil.which("launchctl"):
        _run(["launchctl", "unload", "-w", LAUNCHD_PLIST])
    removed = []
    for entry in manifest["files"]:
        path = entry["path"]
        if path.endswith("/requirements.toml") and os.path.exists(path) and not is_ours(path):
            say(f"left {path}: it is no longer capgate's (no capgate marker)")
            continue
        if os.path.lexists(path):
            os.remove(path)
            removed.append(path)
            say(f"removed {path}")
    shutil.rmtree(under(root, HOOK_DIR), ignore_errors=True)
    removed.append(under(root, HOOK_DIR))
    say(f"removed {under(root, HOOK_DIR)}")
    for folder in sorted(manifest.get("dirs") or [], key=len, reverse=True):
        try:
            os.rmdir(folder)  # only when empty: someone else may have put files there
        except OSError:
            continue
    say("Restart running Claude Code / Codex sessions. The machine stays on the server "
        "until an admin revokes it (capgate keys revoke).")  # fmt: skip
    return removed


def status(*, root: str = "/") -> dict[str, Any]:
    """Files present and intact, the server's view of this machine and its person's limits."""
    manifest = read_manifest(root)
    files = []
    for entry in (manifest or {}).get("files") or []:
        try:
            with open(entry["path"], "rb") as f:
                state = "intact" if sha256(f.read()) == entry["sha256"] else "changed"
        except FileNotFoundError:
            state = "missing"
        except OSError:
            state = "unreadable"
        files.append({"path": entry["path"], "state": state})
    result: dict[str, Any] = {"installed": manifest is not None, "files": files, "server": None}
    try:
        with open(under(root, HOOK_DIR + "/config.json"), encoding="utf-8") as f:
            config = json.load(f)
        with open(under(root, HOOK_DIR + "/token"), encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, ValueError) as exc:
        result["error"] = f"cannot read the hook's configuration: {exc}"
        return result
    result["config"] = {
        k: config.get(k) for k in ("server", "machine", "user", "os_user", "agents")
    }
    try:
        result["server"] = http_json("GET", config["server"] + "/hook/v1/status", token=token)
    except InstallError as exc:
        result["error"] = str(exc)
    return result


def main(argv: list[Any] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="capgate-hook-install", description="Install capgate's hook on this machine (root)."
    )
    parser.add_argument("--server", help="the capgate server's URL")
    parser.add_argument("--code", help="the one-time install code (cgi-...)")
    parser.add_argument("--claude", action="store_true", help="gate Claude Code")
    parser.add_argument("--codex", action="store_true", help="gate Codex")
    parser.add_argument("--os-user", help="the developer's OS user (default: SUDO_USER)")
    parser.add_argument("--uninstall", action="store_true", help="remove what was installed")
    args = parser.parse_args(argv)
    try:
        if os.geteuid() != 0:
            raise InstallError("run as root (sudo): the hook's files must be root's")
        if args.uninstall:
            uninstall()
            return 0
        if not args.server or not args.code:
            raise InstallError("give --server URL and --code CODE")
        agents = [a for a in ("claude", "codex") if getattr(args, a)] or ["claude"]
        os_user = args.os_user or os.environ.get("SUDO_USER") or "root"
        install(args.server, args.code, agents, os_user)
    except InstallError as exc:
        print(f"capgate hook: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
