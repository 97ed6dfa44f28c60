"""The services the benchmark runs: the fast upstream, capgate workers, LiteLLM."""

# ruff: noqa: S603 - runs fixed local programs and fetches only loopback http:// URLs

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from procs import HOST, ROOT, Pinning, Proc, free_port_run, http

BENCH = Path(__file__).resolve().parent


VENV_PY = ROOT / ".venv" / "bin" / "python"


CAPGATE = ROOT / ".venv" / "bin" / "capgate"


LITELLM = BENCH / ".litellm-venv" / "bin" / "litellm"


ADMIN_KEY = "sk-cg-admin-bench-" + os.urandom(8).hex()


LITELLM_KEY = "sk-litellm-bench-0123456789"


TEAM_LIMITS = [{"metric": "cost_usd", "window": "month", "max": 1000000}]


KEY_LIMITS = [
    {"metric": "cost_usd", "window": "month", "max": 1000000},
    {"metric": "requests", "window": "day", "max": 100000000},
    {"metric": "tokens", "window": "day", "max": 100000000000},
]


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


def start_worker(
    pin: Pinning,
    tmp: Path,
    config: Path,
    i: int,
    port: int,
    life: int = 0,
    database_url: str | None = None,
) -> Proc:
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
            database_url or f"sqlite:///{tmp / 'capgate.db'}",
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


def start_capgate(
    pin: Pinning, tmp: Path, config: Path, workers: int, database_url: str | None = None
) -> list[Proc]:
    base = free_port_run(workers) if workers > 1 else 0
    # one after the other: the first creates the schema
    return [
        start_worker(pin, tmp, config, i, base + i if workers > 1 else 0, 0, database_url)
        for i in range(workers)
    ]


def capgate_port(proc: Proc) -> int:
    assert proc.match is not None
    return int(proc.match.group(2))


def start_floor(pin: Pinning, tmp: Path, up_port: int) -> tuple[Proc, int]:
    """bench/floor.py, the bare Python pass-through, on the proxy CPUs like capgate."""
    floor = Proc(
        "floor",
        pin.wrap(
            "proxy",
            [str(VENV_PY), str(BENCH / "floor.py"), "--upstream", f"http://{HOST}:{up_port}"],
        ),
        tmp / "floor.log",
        r"floor listening on [\d.]+:(\d+)",
    )
    return floor, int(floor.wait_ready(30).group(1))


def create_key(port: int) -> str:
    """Team 'bench' with a dollar budget, and key 'bench' in it with its own limits: every
    request is reserved against both, all or nothing, and settled in both."""
    status, data = http(
        "POST",
        f"http://{HOST}:{port}/admin/teams",
        {"name": "bench", "limits": TEAM_LIMITS},
        ADMIN_KEY,
    )
    if status != 201:
        raise RuntimeError(f"POST /admin/teams answered {status}: {data[:500]!r}")
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
