#!/usr/bin/env python3
"""capgate's performance benchmark: `bench/run` (see bench/README.md).

Starts bench/fast_upstream.py and capgate (SQLite in a temp dir, a key with limits made
through the admin API), then for each (format, stream, concurrency) point drives wrk
first at the upstream directly, then through capgate, after a warm-up run each. Prints
one table and writes bench/results/latest.json.
"""

# ruff: noqa: S603, S310 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
CAPGATE = ROOT / ".venv" / "bin" / "capgate"
LITELLM = BENCH / ".litellm-venv" / "bin" / "litellm"
RESULTS = BENCH / "results"
ADMIN_KEY = "sk-cg-admin-bench-" + os.urandom(8).hex()
LITELLM_KEY = "sk-litellm-bench-0123456789"
HOST = "127.0.0.1"

MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-sonnet-4-6"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
PROMPT = "Write one short sentence about load testing."
KEY_LIMITS = [
    {"metric": "cost_usd", "window": "month", "max": 1000000},
    {"metric": "requests", "window": "day", "max": 100000000},
    {"metric": "tokens", "window": "day", "max": 100000000000},
]


def body_for(fmt: str, stream: bool) -> bytes:
    msgs = [{"role": "user", "content": PROMPT}]
    if fmt == "openai":  # as the OpenAI SDK sends it: no stream_options (capgate adds them)
        body: dict[str, Any] = {
            "model": MODELS[fmt],
            "messages": msgs,
            "max_completion_tokens": 256,
        }
    else:
        body = {"model": MODELS[fmt], "max_tokens": 256, "messages": msgs}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


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


# --- pinning ------------------------------------------------------------------------------


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


# --- wrk ----------------------------------------------------------------------------------


@dataclass
class Point:
    target: str  # direct | capgate | litellm
    fmt: str
    stream: bool
    conc: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    threads: int = 1
    warmup_requests: int = 0  # completed in the warm-up run (for the ledger check)


def run_wrk(
    pin: Pinning,
    url: str,
    body_file: Path,
    key: str | None,
    conc: int,
    seconds: float,
    addrs: list[str] | None = None,
) -> dict[str, Any]:
    threads = min(len(addrs), conc) if addrs else 1
    conns = max(threads, (conc // threads) * threads)
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": key or ""}
    env.pop("BENCH_BODY", None)
    if addrs:
        env["BENCH_ADDRS"] = ",".join(addrs)
    args = pin.wrap(
        "load",
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(BENCH / "post.lua"),
            url,
        ],
    )
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 60)
    match = re.search(r"BENCH_RESULT (\{.*\})", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", proc.stdout)
    result["non2xx_line"] = int(non2xx.group(1)) if non2xx else 0
    result["threads"], result["connections"] = threads, conns
    result["stdout"] = proc.stdout
    return result


def measure(
    pin: Pinning,
    target: str,
    fmt: str,
    stream: bool,
    conc: int,
    url: str,
    body_file: Path,
    key: str | None,
    args: argparse.Namespace,
    addrs: list[str] | None = None,
    after_warmup: Any = None,
) -> Point:
    warm = run_wrk(pin, url, body_file, key, conc, args.warmup, addrs) if args.warmup > 0 else None
    if after_warmup is not None:
        after_warmup()
    r = run_wrk(pin, url, body_file, key, conc, args.duration, addrs)
    lat = r["latency_us"]
    point = Point(
        target,
        fmt,
        stream,
        conc,
        rps=r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        requests=r["requests"],
        errors=dict(r["errors"]),
        connections=r["connections"],
        threads=r["threads"],
        warmup_requests=warm["requests"] if warm else 0,
    )
    point.errors["non2xx"] = max(r["errors"]["status"], r["non2xx_line"])
    bad = {k: v for k, v in point.errors.items() if v and k != "status"}
    if bad:
        log(f"  !!! {target} {fmt} stream={stream} c={conc}: {bad}")
        if point.errors["non2xx"]:
            log("  !!! NON-2xx RESPONSES: see the wrk output below and the process log")
            log("      " + r["stdout"].replace("\n", "\n      "))
    return point


# --- the services -------------------------------------------------------------------------


def start_upstream(pin: Pinning, tmp: Path) -> tuple[Proc, int]:
    up = Proc(
        "fast upstream",
        pin.wrap("load", [str(VENV_PY), str(BENCH / "fast_upstream.py"), "--port", "0"]),
        tmp / "upstream.log",
        r"listening on [\d.]+:(\d+)",
    )
    return up, int(up.wait_ready(20).group(1))


def capgate_config(tmp: Path, up_port: int) -> Path:
    path = tmp / "capgate.yaml"
    path.write_text(
        f"""# written by bench/run
providers:
  - name: openai
    type: openai
    base_url: http://{HOST}:{up_port}/v1
    api_key: x
  - name: anthropic
    type: anthropic
    base_url: http://{HOST}:{up_port}
    api_key: x
models:
  - match: "gpt-*"
    targets: [{{provider: openai}}]
  - match: "claude-*"
    targets: [{{provider: anthropic}}]
"""
    )
    return path


# How capgate is started: as shipped, or through bench/capgate_sigpipe.py (SIGPIPE ignored).
CAPGATE_CMD = [str(CAPGATE)]
SIGPIPE_WRAPPER = [str(VENV_PY), str(BENCH / "capgate_sigpipe.py")]


def sigpipe_disposition(pid: int) -> str:
    """ignored | caught | DEFAULT (a write to a closed socket kills the process)."""
    masks = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigIgn:", "SigCgt:")):
                masks[line[:6]] = int(line.split()[1], 16)
    bit = 1 << (signal.SIGPIPE - 1)
    if not masks:
        return "unknown"
    if masks.get("SigIgn", 0) & bit:
        return "ignored"
    return "caught" if masks.get("SigCgt", 0) & bit else "DEFAULT"


def start_worker(pin: Pinning, tmp: Path, config: Path, i: int, port: int, life: int = 0) -> Proc:
    args = pin.wrap(
        "proxy",
        [
            *CAPGATE_CMD,
            "serve",
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp / 'capgate.db'}",
        ],
    )
    proc = Proc(
        f"capgate[{i}]",
        args,
        tmp / f"capgate-{i}{f'-restart{life}' if life else ''}.log",
        r"capgate listening on http://([\d.]+):(\d+)",
        env={"CAPGATE_ADMIN_KEY": ADMIN_KEY},
    )
    proc.wait_ready(60)
    return proc


def start_capgate(pin: Pinning, tmp: Path, config: Path, workers: int) -> list[Proc]:
    base = free_port_run(workers) if workers > 1 else 0
    # one after the other: the first creates the schema
    return [
        start_worker(pin, tmp, config, i, base + i if workers > 1 else 0) for i in range(workers)
    ]


def capgate_port(proc: Proc) -> int:
    assert proc.match is not None
    return int(proc.match.group(2))


def create_key(port: int) -> str:
    status, data = http(
        "POST",
        f"http://{HOST}:{port}/admin/keys",
        {"name": "bench", "team": "bench", "limits": KEY_LIMITS},
        ADMIN_KEY,
    )
    if status != 201:
        raise RuntimeError(f"POST /admin/keys answered {status}: {data[:500]!r}")
    return json.loads(data)["key"]


def start_litellm(pin: Pinning, tmp: Path, up_port: int) -> Proc:
    config = tmp / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: gpt-5-mini
    litellm_params:
      model: openai/gpt-5-mini
      api_base: http://{HOST}:{up_port}/v1
      api_key: x
litellm_settings:
  telemetry: false
general_settings:
  master_key: {LITELLM_KEY}
"""
    )
    port = free_port_run(1)
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    args = pin.wrap(
        "proxy",
        [
            str(LITELLM),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
    )
    proc = Proc("litellm", args, tmp / "litellm.log", None, env=env, new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"LiteLLM exited; its output:\n{proc.tail(40)}")
        with contextlib.suppress(OSError):
            status, _ = http("GET", f"http://{HOST}:{port}/health/liveliness", timeout=2)
            if status == 200:
                proc.ready_at = time.perf_counter()
                proc.port = port  # type: ignore[attr-defined]
                return proc
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"LiteLLM did not answer within 120 s; its output:\n{proc.tail(40)}")


def sanity(url: str, body: bytes, key: str | None, stream: bool, what: str) -> str | None:
    """One request before the load: a problem message, or None."""
    status, data = http("POST", url, body, key)
    if status != 200:
        return f"{what}: answered {status}: {data[:400]!r}"
    if stream and not (b"[DONE]" in data or b"message_stop" in data):
        return f"{what}: the stream did not end properly: {data[-300:]!r}"
    return None


def ttfb(pin: Pinning, url: str, body_file: Path, key: str | None, n: int) -> dict[str, Any]:
    args = [
        str(VENV_PY),
        str(BENCH / "ttfb.py"),
        "--url",
        url,
        "--body-file",
        str(body_file),
        "--requests",
        str(n),
    ]
    if key:
        args += ["--key", key]
    out = subprocess.run(pin.wrap("load", args), capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"ttfb.py failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def capgate_problems(procs: list[Proc]) -> list[str]:
    lines = []
    for proc in procs:
        with contextlib.suppress(OSError):
            for line in proc.logfile.read_text("utf-8", "replace").splitlines():
                if re.search(r"\b(ERROR|CRITICAL|Traceback|Exception)\b", line):
                    lines.append(f"{proc.name}: {line}")
    return lines


# --- output -------------------------------------------------------------------------------


def fmt_num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(points: list[Point], litellm: list[Point]) -> None:
    by = {(p.target, p.fmt, p.stream, p.conc): p for p in points + litellm}
    cols = [
        "format",
        "stream",
        "c",
        "direct req/s",
        "p50 ms",
        "p99 ms",
        "capgate req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "added p50 ms",
    ]
    rows = []
    keys = sorted(
        {(p.fmt, p.stream, p.conc) for p in points},
        key=lambda k: (list(MODELS).index(k[0]), k[1], k[2]),
    )
    for fmt, stream, conc in keys:
        d = by.get(("direct", fmt, stream, conc))
        for target in ("capgate", "litellm"):
            g = by.get((target, fmt, stream, conc))
            if g is None:
                continue
            label = fmt if target == "capgate" else f"{fmt} (LiteLLM)"
            rows.append(
                [
                    label,
                    "yes" if stream else "no",
                    str(conc),
                    fmt_num(d.rps if d else None, ",.0f"),
                    fmt_num(d.p50_ms if d else None, ".2f"),
                    fmt_num(d.p99_ms if d else None, ".2f"),
                    fmt_num(g.rps, ",.0f"),
                    fmt_num(g.p50_ms, ".2f"),
                    fmt_num(g.p99_ms, ".2f"),
                    fmt_num(g.rps / d.rps if d and d.rps else None, ".2f"),
                    fmt_num(g.p50_ms - d.p50_ms if d else None, "+.2f"),
                ]
            )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    if litellm:
        print("(rows marked LiteLLM: the 'capgate' columns are LiteLLM proxy's figures)")
    line = "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print(
            "  ".join(
                v.ljust(w) if i < 3 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=None, help="seconds per point [10]")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up seconds before each point [3; 1 with --quick]",
    )
    p.add_argument(
        "--quick", action="store_true", help="3 s points, 1 s warm-ups, 150 TTFB requests"
    )
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated [1,16,64]")
    p.add_argument("--formats", default="openai,anthropic", help="openai,anthropic")
    p.add_argument("--streams", default="no,yes", help="no,yes")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="capgate processes on consecutive ports, one SQLite file [1]",
    )
    p.add_argument(
        "--ttfb-requests",
        type=int,
        default=None,
        help="sequential requests per TTFB measurement [300]",
    )
    p.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM even if bench/.litellm-venv exists"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="run capgate exactly as installed even if its SIGPIPE handling kills it "
        "(default: if it would, run it with SIGPIPE ignored and say so)",
    )
    p.add_argument(
        "--json", default=str(RESULTS / "latest.json"), help="where to write the results"
    )
    p.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (logs, config, database)"
    )
    args = p.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)  # wrk takes whole seconds
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.ttfb_requests = args.ttfb_requests or (150 if args.quick else 300)
    args.conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.fmts = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.stream_flags = [
        s.strip() in ("yes", "true", "1") for s in args.streams.split(",") if s.strip()
    ]
    for f in args.fmts:
        if f not in MODELS:
            p.error(f"--formats: unknown format {f!r}")
    if args.workers < 1 or any(c < 1 for c in args.conc) or args.duration <= 0 or args.warmup < 0:
        p.error("--workers, --concurrency and --duration must be positive, --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        log("bench/run needs wrk: apt-get update && apt-get install -y wrk")
        return 2
    if not CAPGATE.exists():
        log(f"bench/run needs capgate installed in {ROOT / '.venv'} (bin/capgate sets it up)")
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    pin = pinning(not args.no_pin)
    busy_before = others_busy(1.0) * (os.cpu_count() or 1)
    if busy_before > 0.1:
        log(
            f"bench: WARNING: other processes keep {busy_before:.2f} CPUs busy right now; "
            "the figures will be lower and noisier than on an idle machine"
        )
    tmp = Path(tempfile.mkdtemp(prefix="capgate-bench-"))
    procs: list[Proc] = []
    t_start = time.monotonic()
    n_points = len(args.fmts) * len(args.stream_flags) * len(args.conc)
    log(
        f"bench: {n_points} points x (direct + capgate), {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each; {pin.note}; temp dir {tmp}"
    )
    try:
        up, up_port = start_upstream(pin, tmp)
        procs.append(up)
        config = capgate_config(tmp, up_port)
        workers = start_capgate(pin, tmp, config, args.workers)
        procs += workers
        startup = workers[0].startup_s  # of `capgate serve` as installed
        sigpipe = {"as_shipped": sigpipe_disposition(workers[0].pid), "workaround": False}
        if sigpipe["as_shipped"] == "DEFAULT":
            log(
                "bench: !!! capgate serve runs with SIGPIPE at SIG_DFL: a client that closes its "
                "connection mid-answer kills the server (wrk does that at the end of every run)."
            )
            if not args.as_shipped:
                log("bench: restarting capgate with SIGPIPE ignored (bench/capgate_sigpipe.py)")
                for w in workers:
                    w.stop()
                    procs.remove(w)
                CAPGATE_CMD[:] = SIGPIPE_WRAPPER
                workers = start_capgate(pin, tmp, config, args.workers)
                procs += workers
                sigpipe["workaround"] = True
                sigpipe["with_workaround"] = sigpipe_disposition(workers[0].pid)
        cg_port = capgate_port(workers[0])
        addrs = [f"{HOST}:{capgate_port(w)}" for w in workers] if args.workers > 1 else None
        key = create_key(cg_port)
        log(
            f"bench: upstream on :{up_port}; capgate on :{cg_port}"
            f"{f' (+{args.workers - 1} workers)' if args.workers > 1 else ''}, "
            f"started in {startup:.2f} s; key 'bench' (team 'bench') created"
        )

        problems: list[str] = []
        bodies: dict[tuple[str, bool], Path] = {}
        for fmt in args.fmts:
            for stream in args.stream_flags:
                path = tmp / f"body-{fmt}-{'stream' if stream else 'whole'}.json"
                path.write_bytes(body_for(fmt, stream))
                bodies[(fmt, stream)] = path
                for target, base, k in (("direct", up_port, None), ("capgate", cg_port, key)):
                    msg = sanity(
                        f"http://{HOST}:{base}{PATHS[fmt]}",
                        path.read_bytes(),
                        k,
                        stream,
                        f"{target} {fmt} stream={stream}",
                    )
                    if msg:
                        problems.append(msg)
        if problems:
            for msg in problems:
                log("!!! " + msg)
            raise RuntimeError("requests fail before any load; see above")

        crashes: list[dict[str, Any]] = []

        def check_workers(where: str) -> None:
            """A capgate process that died is reported loudly and restarted on its port."""
            time.sleep(0.2)  # a death from the run that just ended shows up a moment later
            for idx, w in enumerate(workers):
                if w.alive():
                    continue
                note = w.exit_note()
                crashes.append({"after": where, "what": note, "log_tail": w.tail(15)})
                log(f"  !!! CAPGATE DIED: {note} (after {where}); restarting it on the same port")
                if len(crashes) > 20:
                    raise RuntimeError("capgate died more than 20 times; giving up")
                fresh = start_worker(pin, tmp, config, idx, capgate_port(w), len(crashes))
                workers[idx] = fresh
                procs.append(fresh)

        service_pids = [p.pid for p in procs]
        cpu0 = (time.monotonic(), cpu_busy_s(), own_cpu_s(), proc_cpu_s(service_pids))
        points: list[Point] = []
        for fmt in args.fmts:
            for stream in args.stream_flags:
                for conc in args.conc:
                    body = bodies[(fmt, stream)]
                    d = measure(
                        pin,
                        "direct",
                        fmt,
                        stream,
                        conc,
                        f"http://{HOST}:{up_port}{PATHS[fmt]}",
                        body,
                        None,
                        args,
                    )
                    where = f"{fmt} stream={'yes' if stream else 'no'} c={conc}"
                    try:
                        g = measure(
                            pin,
                            "capgate",
                            fmt,
                            stream,
                            conc,
                            f"http://{HOST}:{cg_port}{PATHS[fmt]}",
                            body,
                            key,
                            args,
                            addrs,
                            lambda where=where: check_workers(f"the warm-up of {where}"),
                        )
                    except RuntimeError as exc:
                        dead = [w.exit_note() for w in workers if not w.alive()]
                        raise RuntimeError(
                            f"{exc}\n!!! {'; '.join(dead) or 'capgate is running'}"
                        ) from None
                    points += [d, g]
                    log(
                        f"  {fmt:9} stream={'yes' if stream else 'no ':3} c={conc:<3} "
                        f"direct {d.rps:8,.0f}/s p50 {d.p50_ms:6.2f} ms | capgate {g.rps:8,.0f}/s "
                        f"p50 {g.p50_ms:6.2f} ms  ({g.rps / d.rps if d.rps else 0:.2f}x)"
                    )
                    check_workers(f"the measured run of {where}")

        ttfbs: dict[str, dict[str, Any]] = {}
        if True in args.stream_flags:
            for fmt in args.fmts:
                body = bodies[(fmt, True)]
                direct = ttfb(
                    pin, f"http://{HOST}:{up_port}{PATHS[fmt]}", body, None, args.ttfb_requests
                )
                through = ttfb(
                    pin, f"http://{HOST}:{cg_port}{PATHS[fmt]}", body, key, args.ttfb_requests
                )
                ttfbs[fmt] = {"direct": direct, "capgate": through}
                check_workers(f"the TTFB requests ({fmt})")
                for r in (direct, through):
                    if r["non_200"]:
                        log(f"!!! TTFB {fmt} {r['url']}: {r['non_200']} non-200 answers")

        cpu1 = (time.monotonic(), cpu_busy_s(), own_cpu_s(), proc_cpu_s(service_pids))
        wall = cpu1[0] - cpu0[0]
        foreign_s = max(0.0, (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2]) - (cpu1[3] - cpu0[3]))
        foreign = {
            "cpu_s": round(foreign_s, 1),
            "cores": round(foreign_s / wall, 3) if wall else 0,
            "cores_before_start": round(busy_before, 3),
        }

        # Memory after the load, then the ledger's count (reads flush queued settlements).
        memory: list[dict[str, Any]] = [
            {"name": w.name, "pid": w.pid, **proc_status(w.pid)} for w in workers
        ]
        if len(workers) > 1:
            time.sleep(1.0)  # let the other workers' writers flush their settlements
        status, data = http("GET", f"http://{HOST}:{cg_port}/admin/keys/bench", token=ADMIN_KEY)
        ledger = json.loads(data) if status == 200 else {"status": status}

        lite_points: list[Point] = []
        lite_info: dict[str, Any] = {}
        want_litellm = not args.no_litellm and "openai" in args.fmts and False in args.stream_flags
        if want_litellm and LITELLM.exists():
            log("bench: LiteLLM proxy (same OpenAI non-stream points) ...")
            lite = None
            try:
                lite = start_litellm(pin, tmp, up_port)
                procs.append(lite)
                lport = lite.port  # type: ignore[attr-defined]
                lurl = f"http://{HOST}:{lport}/v1/chat/completions"
                body = bodies[("openai", False)]
                msg = sanity(lurl, body.read_bytes(), LITELLM_KEY, False, "litellm")
                if msg:
                    raise RuntimeError(msg)
                for conc in args.conc:
                    p = measure(
                        pin, "litellm", "openai", False, conc, lurl, body, LITELLM_KEY, args
                    )
                    lite_points.append(p)
                    log(
                        f"  litellm   stream=no  c={conc:<3} {p.rps:8,.0f}/s p50 {p.p50_ms:6.2f} ms"
                    )
                rss = sum(proc_status(pid).get("VmRSS", 0) for pid in tree_pids(lite.pid))
                lite_info = {
                    "startup_s": round(lite.startup_s or 0, 2),
                    "rss_kb": rss,
                    "version": litellm_version(),
                }
            except Exception as exc:  # noqa: BLE001 - optional: report and go on
                lite_info = {"error": str(exc)[:2000]}
                log(f"!!! LiteLLM comparison failed: {str(exc)[:2000]}")
            finally:
                if lite is not None:
                    lite.stop()

        # --- report --------------------------------------------------------------------
        print()
        print(
            f"capgate benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, "
            f"{os.cpu_count()} CPUs, {args.duration:g} s per point after {args.warmup:g} s warm-up, "
            f"wrk, {'1 capgate process' if args.workers == 1 else f'{args.workers} capgate processes'})"
        )
        print(f"pinning: {pin.note}")
        print("upstream: bench/fast_upstream.py, 32-token answers, whole stream written at once")
        print()
        print_table(points, lite_points)
        print()
        print("ratio = capgate req/s / direct req/s; added p50 = capgate p50 - direct p50.")
        print("'direct' = wrk -> fast upstream; 'capgate' = wrk -> capgate -> fast upstream.")
        for fmt, r in ttfbs.items():
            d, g = r["direct"], r["capgate"]
            print(
                f"added TTFB, {fmt} stream, c=1 ({g['requests']} sequential requests, p50): "
                f"first byte {d['first_byte_ms']['p50']:.3f} -> {g['first_byte_ms']['p50']:.3f} ms "
                f"(+{g['first_byte_ms']['p50'] - d['first_byte_ms']['p50']:.3f} ms); "
                f"first event {d['first_event_ms']['p50']:.3f} -> {g['first_event_ms']['p50']:.3f} ms "
                f"(+{g['first_event_ms']['p50'] - d['first_event_ms']['p50']:.3f} ms)"
            )
        rss = sum(int(m.get("VmRSS", 0)) for m in memory)
        hwm = sum(int(m.get("VmHWM", 0)) for m in memory)
        print(
            f"capgate resident memory after the run: {rss / 1024:.1f} MiB (VmRSS; peak VmHWM "
            f"{hwm / 1024:.1f} MiB){' summed over workers' if len(memory) > 1 else ''}"
            f"{'; !!! of a process restarted after a death, so it saw only part of the load' if crashes else ''}"
        )
        print(f"capgate startup (spawn to 'listening' line): {startup:.2f} s")
        check = ledger_check(ledger, points, ttfbs, len(args.fmts) * len(args.stream_flags))
        if check:
            print(
                check["text"]
                + (
                    " (capgate died and restarted: requests it had in flight "
                    "count as worst case, so this is approximate)"
                    if crashes
                    else ""
                )
            )
        print(
            "budgets: per-key limits (cost_usd/month, requests/day, tokens/day) are checked and "
            "settled on every request; the key is in team 'bench', but team budgets are not "
            "measured yet (they come later)."
        )
        flag = "!!! " if foreign["cores"] > 0.05 or busy_before > 0.1 else ""
        print(
            f"{flag}other processes on this machine used {foreign['cores']:.2f} CPUs on average "
            f"during the capgate/direct points ({busy_before:.2f} just before the start)"
            f"{': the figures are lower and noisier than on an idle machine' if flag else ''}"
        )
        if lite_points:
            print(
                f"LiteLLM {lite_info.get('version', '?')}: startup {lite_info['startup_s']:.2f} s, "
                f"resident memory {lite_info['rss_kb'] / 1024:.1f} MiB after its points "
                "(master key, no database: no spend tracking or budgets)"
            )
        elif "error" in lite_info:
            print(f"LiteLLM comparison FAILED: {lite_info['error'][:300]}")
        elif not LITELLM.exists():
            print(
                "LiteLLM comparison skipped: not installed. To add it: python3 -m venv "
                "bench/.litellm-venv && bench/.litellm-venv/bin/pip install 'litellm[proxy]'"
            )
        all_points = points + lite_points
        bad = [p for p in all_points if any(v for k, v in p.errors.items() if k != "status")]
        issues = capgate_problems(workers)
        if bad:
            print()
            print("!!! ERRORS DURING THE LOAD (non-2xx answers or socket errors):")
            for p in bad:
                errs = {k: v for k, v in p.errors.items() if v and k != "status"}
                print(f"!!!   {p.target} {p.fmt} stream={p.stream} c={p.conc}: {errs}")
        else:
            print("wrk: no non-2xx answers and no socket errors in any run.")
        if sigpipe["as_shipped"] == "DEFAULT":
            print()
            print(
                "!!! CAPGATE BUG: `capgate serve` keeps SIGPIPE at SIG_DFL (set in "
                "capgate/cli/main.py main()), so a client that disconnects while capgate writes "
                "to it kills the whole server."
            )
            if sigpipe["workaround"]:
                print(
                    "!!!   This run used bench/capgate_sigpipe.py (SIGPIPE ignored, otherwise "
                    "unchanged): the figures are those of a fixed capgate. --as-shipped runs it "
                    "as installed."
                )
        if crashes:
            print()
            print(
                f"!!! CAPGATE DIED {len(crashes)} TIME(S) DURING THE RUN (restarted each time on "
                "its port; a death after a warm-up means that point was measured on a fresh process):"
            )
            for c in crashes:
                print(f"!!!   after {c['after']}: {c['what']}")
            if any("SIGPIPE" in c["what"] for c in crashes):
                print(
                    "!!!   SIGPIPE: a client closed its connection while capgate was writing to it, and"
                )
                print(
                    "!!!   capgate's CLI sets SIGPIPE to SIG_DFL (capgate/cli/main.py main()), which kills"
                )
                print(
                    "!!!   the whole server; `serve` needs SIGPIPE ignored (SIG_IGN) so the write fails instead."
                )
        if issues:
            print(f"!!! capgate logged {len(issues)} error line(s); first ones:")
            for line in issues[:10]:
                print("!!!   " + line[:300])
        print(f"total time {time.monotonic() - t_start:.0f} s")

        results = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "pinning": pin.note,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.conc,
                "workers": args.workers,
                "ttfb_requests": args.ttfb_requests,
            },
            "points": [p.__dict__ for p in all_points],
            "ttfb": ttfbs,
            "capgate": {
                "startup_s": round(startup or 0, 3),
                "memory_kb": memory,
                "ledger": ledger,
                "ledger_check": check,
                "log_error_lines": issues[:50],
            },
            "other_processes": foreign,
            "capgate_deaths": crashes,
            "sigpipe": sigpipe,
            "litellm": lite_info or None,
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results: {out}")
        ours_bad = [p for p in bad if p.target != "litellm"]
        return 1 if ours_bad or crashes or issues or sigpipe["as_shipped"] == "DEFAULT" else 0
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    except RuntimeError as exc:
        log(f"bench: FAILED: {exc}")
        for proc in procs:
            if proc.name.startswith("capgate"):
                log(f"--- {proc.name}: {proc.exit_note()}; log tail ---\n{proc.tail(30)}")
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep_tmp:
            log(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def ledger_check(
    ledger: Any, points: list[Point], ttfbs: dict[str, Any], sanity_requests: int
) -> dict[str, Any] | None:
    """capgate's own request count against what the clients sent: at least every answer
    the clients saw, at most that plus the requests in flight when each wrk run stopped."""
    usage = ledger.get("usage") if isinstance(ledger, dict) else None
    if not isinstance(usage, list):
        return None
    counted = next((u.get("used") for u in usage if u.get("metric") == "requests"), None)
    cost = next((u.get("used") for u in usage if u.get("metric") == "cost_usd"), None)
    tokens = next((u.get("used") for u in usage if u.get("metric") == "tokens"), None)
    if not isinstance(counted, int):
        return None
    through = [p for p in points if p.target == "capgate"]
    seen = sum(p.requests + p.warmup_requests for p in through) + sanity_requests
    seen += sum(r["capgate"]["sent"] for r in ttfbs.values())
    in_flight = sum(p.connections * (2 if p.warmup_requests else 1) for p in through)
    ok = seen <= counted <= seen + in_flight
    text = (
        f"{'' if ok else '!!! '}ledger of key 'bench': {counted:,} requests, "
        f"{tokens:,} tokens, ${cost} (clients saw {seen:,} answers; at most {in_flight} "
        f"more were in flight when wrk runs stopped) -> "
        f"{'consistent' if ok else 'INCONSISTENT'}"
    )
    return {
        "requests": counted,
        "client_answers": seen,
        "in_flight_max": in_flight,
        "consistent": ok,
        "text": text,
    }


def _interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


def litellm_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [
                str(LITELLM.parent / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
