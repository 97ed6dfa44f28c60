"""A private mount namespace whose /etc is an overlay: hook mode's tests install the managed
files (/etc/claude-code, /etc/codex, /etc/capgate-hook) there and run the real clients in
it, and the machine's real /etc never changes (HOOKS.md §1: writing it changes every Claude
Code on the machine).

One holder process owns the namespace (`unshare -m --propagation private` as root, else
`unshare -r -m` with unprivileged user namespaces); each command joins it with `nsenter`,
so several commands share one /etc (install, then claude, then the watchdog). Writes land
in a temporary upper folder that is dropped with the namespace. When neither way works the
tests skip with the reason (CI fails instead: conftest.need)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conftest import need

MOUNT = "mount -t overlay overlay -o lowerdir=/etc,upperdir={up},workdir={work} /etc"


class EtcOverlay:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.upper = folder / "up"
        self.holder: subprocess.Popen[str] | None = None
        self.user_ns = False

    def start(self) -> EtcOverlay:
        need(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
        need(shutil.which("nsenter") is not None, "nsenter (util-linux) is not installed")
        reasons = []
        ways = [["--propagation", "private"]] if os.geteuid() == 0 else []
        ways.append(["-r", "--propagation", "private"])
        for flags in ways:
            self.upper.mkdir(parents=True, exist_ok=True)
            work = self.folder / "work"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            script = MOUNT.format(up=self.upper, work=work) + " && echo ready && exec sleep 3600"
            holder = subprocess.Popen(
                ["unshare", "-m", *flags, "sh", "-c", script],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert holder.stdout is not None
            if holder.stdout.readline().strip() == "ready":
                self.holder, self.user_ns = holder, "-r" in flags
                return self
            holder.kill()
            _, err = holder.communicate(timeout=5)
            reasons.append(f"unshare -m {' '.join(flags)}: {err.strip()}")
        need(False, "no private mount namespace with an /etc overlay: " + "; ".join(reasons))
        raise AssertionError("unreachable")

    def command(self, args: list[str], cwd: Path | str | None = None) -> list[str]:
        """`args` run inside the namespace (in `cwd`: joining resets the folder to /)."""
        assert self.holder is not None
        join = ["-U", "--preserve-credentials"] if self.user_ns else []
        # (not nsenter --wd: that folder is opened outside, and getcwd() inside fails)
        where = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd)] if cwd else []
        return ["nsenter", "-t", str(self.holder.pid), *join, "-m", "--", *where, *args]

    def run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("check", False)
        return subprocess.run(self.command(args, kwargs.pop("cwd", None)), **kwargs)

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(args, kwargs.pop("cwd", None)), text=True, **kwargs)

    def changes(self) -> list[str]:
        """What this namespace changed under /etc: files written, files deleted (overlay
        whiteouts) and folders that the real /etc does not have."""
        found = []
        for path in self.upper.rglob("*"):
            name = "/etc/" + str(path.relative_to(self.upper))
            if path.is_dir() and not Path(name).is_dir():
                found.append(name + "/")
            elif not path.is_dir():
                found.append(name)
        return sorted(found)

    def close(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.communicate(timeout=10)
        self.holder = None
