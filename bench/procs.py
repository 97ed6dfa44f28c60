"""Processes for the benchmark: start, pin, watch and measure them (CPU, memory)."""

# ruff: noqa: S603, S310 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Proc:
    """A child process whose output is drained to a log file by a thread, noting the time
    the first line matching `ready` appeared."""

    def __init__(
        self,
        name: str,
        args: list[str],
        logfile: Path,
        ready: str | None,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.logfile = logfile
        self.ready_re = re.compile(ready) if ready else None
        self.ready = threading.Event()
        self.match: re.Match[str] | None = None
        self.ready_at: float | None = None
        self.new_session = new_session
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=new_session,
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        with open(self.logfile, "wb") as out:
            for raw in self.popen.stdout:
                out.write(raw)
                out.flush()
                if self.ready_re is not None and not self.ready.is_set():
                    match = self.ready_re.search(raw.decode("utf-8", "replace"))
                    if match:
                        self.ready_at = time.perf_counter()
                        self.match = match
                        self.ready.set()
        self.ready.set()  # ended: wake the waiter

    def wait_ready(self, timeout: float) -> re.Match[str]:
        self.ready.wait(timeout)
        if self.match is None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; its output:\n{self.tail(40)}")
        return self.match

    @property
    def startup_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_note(self) -> str:
        code = self.popen.poll()
        if code is None:
            return f"{self.name} (pid {self.pid}) is running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"{self.name} (pid {self.pid}) was killed by {signal.Signals(-code).name}"
        return f"{self.name} (pid {self.pid}) exited with status {code}"

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.logfile.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                if self.new_session:  # its own process group (it may fork workers)
                    os.killpg(self.popen.pid, signal.SIGTERM)
                else:
                    self.popen.terminate()
                self.popen.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    if self.new_session:
                        os.killpg(self.popen.pid, signal.SIGKILL)
                    else:
                        self.popen.kill()
                self.popen.wait(5)
        self._thread.join(5)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (LiteLLM may fork)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        with contextlib.suppress(OSError), open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
            pids += [int(p) for p in f.read().split()]
        i += 1
    return pids


def cpu_busy_s() -> float:
    """CPU-seconds all CPUs spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user + nice + system: irq/softirq time (loopback traffic) belongs to no process
    return sum(fields[:3]) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """This process and its waited-for children (wrk, the TTFB client)."""
    import resource

    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def others_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPUs that other processes keep busy (0..1), sampled now."""
    b0, t0 = cpu_busy_s(), time.monotonic()
    time.sleep(seconds)
    return (cpu_busy_s() - b0) / (time.monotonic() - t0) / (os.cpu_count() or 1)


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free ports after it (best effort)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports found")


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
        req.add_header("x-api-key", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class Pinning:
    proxy_cpus: str | None
    load_cpu: str | None
    note: str

    def wrap(self, role: str, args: list[str]) -> list[str]:
        cpus = self.proxy_cpus if role == "proxy" else self.load_cpu
        return ["taskset", "-c", cpus, *args] if cpus is not None else args


def pinning(enabled: bool) -> Pinning:
    if not enabled:
        return Pinning(None, None, "unpinned (--no-pin)")
    if shutil.which("taskset") is None:
        return Pinning(None, None, "UNPINNED: taskset is missing (apt-get install util-linux)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None, f"UNPINNED: only {len(cpus)} CPU available")
    proxy = ",".join(str(c) for c in cpus[:-1])
    load = str(cpus[-1])
    return Pinning(
        proxy, load, f"proxy on CPU {proxy}; upstream, wrk and TTFB client on CPU {load}"
    )
