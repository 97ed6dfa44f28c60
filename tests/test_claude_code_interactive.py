"""The real interactive Claude Code, in a terminal (tmux), set up as docs/clients.md says:
`ANTHROPIC_AUTH_TOKEN` (no "use this API key?" question), `hasCompletedOnboarding` in
`~/.claude.json`, no non-essential traffic. It answers through capgate, and shows capgate's
refusals at once, as capgate's, without a retry loop or a "Please run /login"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Capgate, need, which

WAIT = 45  # seconds for any one thing to show: a bound, not a sleep


@dataclass
class Terminal:
    socket: str
    session: str = "claude"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", self.session)

    def wait_for(self, *texts: str, timeout: float = WAIT) -> str:
        """Poll the screen until it shows all of `texts`."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"screen never showed {texts!r}:\n{screen}")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)
        time.sleep(0.3)  # let the input box take the text before Enter
        self.tmux("send-keys", "-t", self.session, "Enter")


Start = Callable[..., Terminal]  # start(key, *claude_args) -> the running terminal


@pytest.fixture
def claude_home(tmp_path: Path) -> Path:
    """A private HOME as the docs' offline setup: onboarding done, this folder trusted."""
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    state = {
        "hasCompletedOnboarding": True,
        "projects": {str(work): {"hasTrustDialogAccepted": True}},
    }
    (home / ".claude.json").write_text(json.dumps(state))
    return home


@pytest.fixture
def start_claude(capgate: Capgate, claude_home: Path) -> Iterator[Start]:
    claude = which("claude")
    need(shutil.which("tmux") is not None, "tmux is not installed (.ci/run installs it)")
    need(claude is not None, "the Claude Code CLI is not installed (bin/test installs it)")
    assert claude is not None
    terminal = Terminal(f"capgate-test-{os.getpid()}-{time.monotonic_ns()}")

    def start(key: str, *args: str) -> Terminal:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(claude_home),
            "TERM": "xterm-256color",
            "ANTHROPIC_BASE_URL": capgate.url,
            "ANTHROPIC_AUTH_TOKEN": key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        command = " ".join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), claude, *args])
        terminal.tmux(
            "new-session", "-d", "-x", "200", "-y", "50", "-s", terminal.session,
            "-c", str(claude_home / "work"), command,
        )  # fmt: skip
        terminal.wait_for("Claude Code v")
        return terminal

    try:
        yield start
    finally:
        terminal.tmux("kill-server")


def ask(terminal: Terminal, prompt: str, *expected: str) -> str:
    terminal.type(prompt)
    return terminal.wait_for(*expected)


def test_interactive_claude_code_answers(
    capgate: Capgate, key_name: str, start_claude: Start
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 50}])
    terminal = start_claude(key, "--model", "claude-sonnet-4-6")
    screen = ask(terminal, "say hi", "capgate mock")
    assert "Please run /login" not in screen and "Not logged in" not in screen
    entries = capgate.ledger(key=key_name, outcome="ok")
    assert any(e["model"] == "claude-sonnet-4-6" and e["stream"] for e in entries), entries


def test_interactive_claude_code_shows_a_spent_budget_once(
    capgate: Capgate, key_name: str, start_claude: Start
) -> None:
    key = capgate.create_key(key_name, [{"metric": "requests", "window": "day", "max": 0}])
    terminal = start_claude(key, "--model", "claude-sonnet-4-6")
    screen = ask(terminal, "say hi", "Request rejected (429)", "Daily request limit")
    assert f'capgate: Daily request limit of key "{key_name}" reached' in screen
    assert "retrying" not in screen and "/login" not in screen
    time.sleep(2)  # a retry loop would add entries now
    refused = capgate.ledger(key=key_name, outcome="refused")
    assert len(refused) == 1, refused
    assert refused[0]["status"] == 429


def test_interactive_claude_code_shows_a_paused_key(
    capgate: Capgate, key_name: str, start_claude: Start
) -> None:
    key = capgate.create_key(key_name, [{"metric": "cost_usd", "window": "day", "max": 50}])
    assert capgate.admin("POST", f"/admin/keys/{key_name}/pause").status_code == 200
    terminal = start_claude(key, "--model", "claude-sonnet-4-6")
    screen = ask(terminal, "say hi", "Request rejected (429)", "is paused")
    assert f'capgate: The key "{key_name}" is paused' in screen
    assert "Please run /login" not in screen and "retrying" not in screen
    time.sleep(2)
    assert len(capgate.ledger(key=key_name, outcome="refused")) == 1


def test_interactive_claude_code_names_an_allowed_model(
    capgate: Capgate, key_name: str, start_claude: Start
) -> None:
    key = capgate.create_key(
        key_name,
        [{"metric": "cost_usd", "window": "day", "max": 50}],
        models=["claude-haiku-*"],
    )
    terminal = start_claude(key, "--model", "claude-sonnet-4-6")
    screen = ask(terminal, "say hi", "Request rejected (429)", "/model claude-haiku-")
    assert "is not allowed" in screen and "Please run /login" not in screen
