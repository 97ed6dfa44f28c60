"""`capgate serve --workers N`: N worker processes on one port, started by a parent that
binds the port, decides the keys once, restarts a worker that dies and passes SIGTERM on.

Real processes throughout: the parent and its workers as `python -m capgate serve`, the
mock upstream, clients over HTTP. The workers are told apart by their request ids (each
process has its own prefix) and by the `pid` of their JSON log lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import yaml

from capgate.cli.serve import SQLITE_WORKERS
from conftest import ADMIN_KEY, ROOT, Capgate, Upstream, gateway_config, self_signed

QUICK = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi mock:delay_ms=20"}],
}


class Parent:
    """`serve --workers N` with its output (JSON log lines and the banner) in a file."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        *args: str,
        db: Path | None = None,
        admin_key: str | None = ADMIN_KEY,  # None: the one capgate makes, from the banner
        database_url: str | None = None,  # default: sqlite:///<db>
    ) -> None:
        self.db = db or tmp / "capgate.db"
        database_url = database_url or f"sqlite:///{self.db}"
        self.out = tmp / f"out-{time.monotonic_ns()}.log"
        config_path = tmp / f"capgate-{time.monotonic_ns()}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGATE_")}
        env |= {"CAPGATE_LOG_FORMAT": "json", "CAPGATE_LOG_LEVEL": "info"}
        env["TMPDIR"] = str(tmp)  # the parent's metrics directory, even if it is killed
        if admin_key is not None:
            env["CAPGATE_ADMIN_KEY"] = admin_key
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "capgate", "serve", "--config", str(config_path),
                 "--database-url", database_url, "--port", "0", *args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        found = self.wait_for(r"capgate listening on (\S+)", 60)
        self.url = found.group(1)
        if admin_key is None:
            admin_key = self.wait_for(r"export CAPGATE_ADMIN_KEY=(\S+)").group(1)
        self.server = Capgate(self.url, self.db, self.proc, admin_key)

    def text(self) -> str:
        return self.out.read_text("utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30, count: int = 1) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.text()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} (x{count}) in:\n{self.text()}")

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.text().splitlines() if x.startswith("{")]

    def workers(self) -> dict[int, int]:
        """The current pid of each worker, by number."""
        started = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.text())
        return {int(number): int(pid) for number, pid in started}

    def pids_by_prefix(self) -> dict[str, int]:
        """Which worker (pid) served the requests of each request-id prefix."""
        return {
            line["request_id"][:16]: line["pid"]
            for line in self.lines()
            if line.get("event") == "request"
        }

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def parents() -> Iterator[list[Parent]]:
    started: list[Parent] = []
    yield started
    for parent in started:
        parent.close()


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


async def _fire(url: str, key: str, bodies: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """All bodies at once, each on its own connection; (status, request id) for each."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(body: dict[str, Any]) -> tuple[int, str]:
            headers = {"x-api-key": key, "content-type": "application/json"}
            async with session.post(
                url + "/v1/messages", data=orjson.dumps(body), headers=headers
            ) as r:
                await r.read()
                return r.status, r.headers.get("x-capgate-request-id", "")

        return await asyncio.gather(*(one(body) for body in bodies))


def _spread(url: str, key: str, n: int) -> list[tuple[int, str]]:
    """Bursts of n quick requests until both workers answered some (almost always the
    first burst); every (status, request id)."""
    results: list[tuple[int, str]] = []
    for _ in range(5):
        results += asyncio.run(_fire(url, key, [QUICK] * n))
        if len({rid[:16] for _, rid in results}) == 2:
            break
    return results


def _reach_both(url: str, key: str, status: int = 200, verify: Any = True) -> set[str]:
    """Request-id prefixes of GET /v1/models (free) on new connections, until both workers
    answered one: which worker accepts a connection is the kernel's and the loops' choice."""
    prefixes: set[str] = set()
    with httpx.Client(verify=verify, timeout=30, headers={"connection": "close"}) as client:
        for _ in range(200):
            answer = client.get(url + "/v1/models", headers={"x-api-key": key})
            assert answer.status_code == status, answer.text
            prefixes.add(answer.headers["x-capgate-request-id"][:16])
            if len(prefixes) == 2:
                break
    return prefixes


def _books(
    server: Capgate, key: str, requests: int, timeout: float = 30
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The key's ledger and usage once every worker has written its settlements (a read
    lands on one worker, which waits only for its own): one entry per request and nothing
    reserved."""
    deadline = time.monotonic() + timeout
    while True:
        entries = server.ledger(key=key)
        usage = {u["metric"]: u for u in server.key_usage(key)}
        held = any(Decimal(str(u["reserved"])) for u in usage.values())
        if (len(entries) == requests and not held) or time.monotonic() > deadline:
            return entries, usage
        time.sleep(0.2)


def test_two_workers_answer_on_one_port(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    """Requests on one port land on both workers (two request-id prefixes, two pids in
    the log, both children of the parent); the live feed, held open on one worker, shows
    the requests of both; one banner."""
    parent = Parent(tmp_path, gateway_config(upstream), "--workers", "2")
    parents.append(parent)
    workers = parent.workers()
    assert sorted(workers) == [1, 2] and len(set(workers.values())) == 2
    assert all(_ppid(pid) == parent.proc.pid for pid in workers.values())
    assert parent.text().count("capgate listening on") == 1
    assert "(2 workers)" in parent.text()
    assert "share one SQLite file" not in parent.text()  # two are within what it carries
    key = parent.server.create_key("spread", [{"metric": "requests", "window": "day", "max": 1000}])

    feed: list[str] = []
    opened = threading.Event()

    def listen() -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", parent.url + "/admin/events", timeout=30,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ) as response:  # fmt: skip
            opened.set()
            for line in response.iter_lines():
                if line.startswith("data:") and '"request_id"' in line:
                    feed.append(orjson.loads(line[5:])["request_id"])

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert opened.wait(10)
    time.sleep(0.5)  # the feed's cursor is taken
    results = _spread(parent.url, key, 20)
    assert {status for status, _ in results} == {200}
    prefixes = {rid[:16] for _, rid in results}
    assert len(prefixes) == 2, prefixes  # both workers answered
    deadline = time.monotonic() + 20
    while len(feed) < len(results) and time.monotonic() < deadline:
        time.sleep(0.1)
    # One worker's feed, both workers' requests.
    assert sorted(feed) == sorted(rid for _, rid in results)
    logged = parent.pids_by_prefix()
    assert {logged[prefix] for prefix in prefixes} == set(workers.values())


def test_more_workers_than_one_sqlite_file_carries_are_warned_of(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    """Past SQLITE_WORKERS on one SQLite file the parent says once, at start, that more
    workers add nothing and what scales instead; the workers still start and answer."""
    workers = SQLITE_WORKERS + 1
    parent = Parent(tmp_path, gateway_config(upstream), "--workers", str(workers))
    parents.append(parent)
    warned = [
        line
        for line in parent.lines()
        if line.get("level") == "warning" and "share one SQLite file" in line["message"]
    ]
    assert len(warned) == 1, parent.text()
    assert warned[0]["message"].startswith(f"{workers} workers share one SQLite file")
    assert "PostgreSQL scales with cores" in warned[0]["message"]
    assert len(parent.workers()) == workers
    key = parent.server.create_key("many", [{"metric": "requests", "window": "day", "max": 100}])
    assert {status for status, _ in _spread(parent.url, key, 8)} == {200}


def _requests_by_pid(text: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        found = re.match(r"capgate_requests_total\{(.*)\} (\S+)$", line)
        if found:
            pid = re.search(r'pid="(\d+)"', found.group(1))
            assert pid is not None, line  # every per-process series says its worker
            counts[pid.group(1)] += int(float(found.group(2)))
    return dict(counts)


def test_metrics_on_any_worker_count_every_worker(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    """A scrape lands on one worker; it answers every worker's request counters, each
    series labelled with the pid that counted it, and they add up to all the requests."""
    parent = Parent(tmp_path, gateway_config(upstream), "--workers", "2")
    parents.append(parent)
    workers = {str(pid) for pid in parent.workers().values()}
    key = parent.server.create_key("counted", [])
    results = _spread(parent.url, key, 30)
    assert {status for status, _ in results} == {200}
    time.sleep(2.5)  # each worker publishes its counters every 2 s
    for _ in range(6):  # new connections: both workers answer some of the scrapes
        scraped = httpx.get(parent.url + "/metrics", headers={"connection": "close"})
        assert scraped.status_code == 200
        by_pid = _requests_by_pid(scraped.text)
        assert set(by_pid) == workers, by_pid
        assert sum(by_pid.values()) == len(results)


def _database_url(engine: str, request: pytest.FixtureRequest) -> str | None:
    """None: the SQLite file beside the test; a fresh PostgreSQL database otherwise."""
    if engine == "sqlite":
        return None
    return str(request.getfixturevalue("postgres").new_database())


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_budget_race_across_workers_never_overspends(
    upstream: Upstream,
    tmp_path: Path,
    parents: list[Parent],
    engine: str,
    request: pytest.FixtureRequest,
) -> None:
    """200 requests at once against a budget that pays for ~3 worst cases: never more than
    the budget, counter == ledger, one entry per request, nothing held; both workers
    decided some. On either engine."""
    config = gateway_config(upstream, server={"state_dir": str(tmp_path / "state")})
    database_url = _database_url(engine, request)
    parent = Parent(tmp_path, config, "--workers", "2", database_url=database_url)
    parents.append(parent)
    budget = Decimal("0.04")
    bodies = [
        {**QUICK, "max_tokens": 400, "stream": i % 2 == 0,
         "messages": [{"role": "user", "content": f"{i} mock:words=300 mock:delay_ms=30"}]}
        for i in range(200)
    ]  # fmt: skip
    deciders: set[str] = set()
    for race in range(5):  # on a loaded machine one worker may take a whole burst: again
        name = f"race-{race}"
        key = parent.server.create_key(
            name, [{"metric": "cost_usd", "window": "day", "max": str(budget)}]
        )
        results = asyncio.run(_fire(parent.url, key, bodies))
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 402}, statuses
        entries, usage = _books(parent.server, name, len(results))
        outcomes = Counter(e["outcome"] for e in entries)
        assert (outcomes["ok"], outcomes["refused"]) == (statuses[200], statuses[402])
        assert {e["request_id"] for e in entries} == {rid for _, rid in results}
        spent = sum(Decimal(e["cost_usd"]) for e in entries)
        assert Decimal(usage["cost_usd"]["used"]) == spent <= budget
        assert Decimal(usage["cost_usd"]["reserved"]) == 0
        assert statuses[200] >= 3
        deciders = {rid[:16] for _, rid in results}
        if len(deciders) == 2:
            break
    assert len(deciders) == 2  # both workers decided some of one burst


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_killed_worker_is_replaced_and_its_reservations_swept(
    upstream: Upstream,
    tmp_path: Path,
    parents: list[Parent],
    engine: str,
    request: pytest.FixtureRequest,
) -> None:
    """`kill -9` of the worker serving slow streams: the parent starts another (a new
    pid), the port keeps answering, and after the lease the dead worker's reservations
    are charged in full (`lease_expired`) by a live one; the books balance. On either
    engine."""
    config = gateway_config(
        upstream, server={"lease_seconds": 2, "state_dir": str(tmp_path / "state")}
    )
    database_url = _database_url(engine, request)
    parent = Parent(tmp_path, config, "--workers", "2", database_url=database_url)
    parents.append(parent)
    key = parent.server.create_key("victim", [{"metric": "cost_usd", "window": "day", "max": 10}])
    asyncio.run(_fire(parent.url, key, [QUICK] * 20))  # in the log: which prefix is whose
    # Each request's line is written once it is settled, maybe after its answer arrived:
    # with none of them read yet, the victim below would be a guess.
    parent.wait_for(r'"event":\s*"request"', count=20)
    by_prefix = parent.pids_by_prefix()

    slow = {**QUICK, "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "slow mock:words=200 mock:stream_delay_ms=100"}]}  # fmt: skip
    started = threading.Event()
    ids: list[str] = []

    def stream() -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "POST", parent.url + "/v1/messages", json=slow, headers={"x-api-key": key}, timeout=30
        ) as response:  # fmt: skip
            ids.append(response.headers["x-capgate-request-id"])
            for _ in response.iter_bytes():
                started.set()

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    assert started.wait(10)
    pids = set(parent.workers().values())
    victim = by_prefix.get(ids[0][:16]) or (pids - set(by_prefix.values())).pop()
    number = next(n for n, pid in parent.workers().items() if pid == victim)
    os.kill(victim, signal.SIGKILL)
    thread.join(10)
    # A worker starts in seconds alone, in tens of seconds on a loaded machine: the same
    # time as the parent's start is given.
    replaced = parent.wait_for(rf"worker {number} started \(pid (\d+)\)", 60, count=2)
    assert int(replaced.group(1)) != victim and parent.proc.poll() is None
    assert "killed by SIGKILL" in parent.text()
    answers = asyncio.run(_fire(parent.url, key, [QUICK] * 10))
    assert [status for status, _ in answers] == [200] * 10

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = parent.server.ledger(key="victim")
        if any(e["outcome"] == "lease_expired" for e in entries):
            break
        time.sleep(0.3)
    entries, usage = _books(parent.server, "victim", 31)
    outcomes = Counter(e["outcome"] for e in entries)
    assert outcomes == {"ok": 30, "lease_expired": 1}, outcomes
    expired = next(e for e in entries if e["outcome"] == "lease_expired")
    assert expired["request_id"] == ids[0] and expired["output_tokens"] == 1000
    cost = usage["cost_usd"]
    assert Decimal(cost["reserved"]) == 0
    assert Decimal(cost["used"]) == sum(Decimal(e["cost_usd"]) for e in entries)


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    parent = Parent(tmp_path, gateway_config(upstream), "--workers", "2")
    parents.append(parent)
    key = parent.server.create_key("drained", [{"metric": "cost_usd", "window": "day", "max": 10}])
    workers = set(parent.workers().values())
    slow = {**QUICK, "messages": [{"role": "user", "content": "slow mock:delay_ms=1500"}]}

    async def in_flight() -> list[tuple[int, str]]:
        fired = asyncio.ensure_future(_fire(parent.url, key, [slow] * 8))
        await asyncio.sleep(0.7)  # all of them admitted, waiting on the upstream
        parent.proc.send_signal(signal.SIGTERM)
        return await fired

    results = asyncio.run(in_flight())
    assert [status for status, _ in results] == [200] * 8
    assert parent.proc.wait(30) == 0
    assert not any(_alive(pid) for pid in workers)
    assert not list(tmp_path.glob("capgate-metrics-*"))  # the parent cleaned up
    assert "Traceback" not in parent.text()
    # The books, read by a single process on the same database afterwards.
    after = Parent(tmp_path, gateway_config(upstream), db=parent.db)
    parents.append(after)
    entries = after.server.ledger(key="drained")
    assert sorted(e["request_id"] for e in entries) == sorted(rid for _, rid in results)
    assert all(e["outcome"] == "ok" for e in entries)
    cost = {u["metric"]: u for u in after.server.key_usage("drained")}["cost_usd"]
    assert Decimal(cost["reserved"]) == 0
    assert Decimal(cost["used"]) == sum(Decimal(e["cost_usd"]) for e in entries)


def test_workers_stop_when_their_parent_is_killed(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    """`kill -9` of the parent: the workers see their orders pipe close and stop, rather
    than live on holding the port."""
    parent = Parent(tmp_path, gateway_config(upstream), "--workers", "2")
    parents.append(parent)
    workers = list(parent.workers().values())
    parent.proc.send_signal(signal.SIGKILL)
    parent.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def test_a_worker_that_keeps_dying_stops_everything_with_one_line(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    """A worker killed, then unable to start again (its CLI provider's program is gone):
    restarted with a growing backoff, then the parent gives up with one line and exits 1."""
    program = tmp_path / "fake-claude"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    config = gateway_config(upstream)
    config["providers"].append({"name": "local", "type": "claude-cli", "command": str(program)})
    parent = Parent(tmp_path, config, "--workers", "2")
    parents.append(parent)
    program.unlink()
    began = time.monotonic()
    os.kill(parent.workers()[1], signal.SIGKILL)
    assert parent.proc.wait(60) == 1
    elapsed = time.monotonic() - began
    text = parent.text()
    assert len(re.findall("starting another in", text)) == 4
    assert elapsed > 0.5 + 1 + 2 + 4  # backed off, did not spin
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"capgate: worker 1 \(pid \d+\) ended \(exit status 1\): workers died 5 times "
        r"within 60 s; stopping",
        last,
    ), last
    assert not any(_alive(pid) for pid in parent.workers().values())


def test_a_taken_port_fails_at_once_without_the_database(
    upstream: Upstream, tmp_path: Path, parents: list[Parent]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fresh = tmp_path / "fresh.db"
        done = subprocess.run(
            [sys.executable, "-m", "capgate", "serve", "--demo", "--workers", "2",
             "--port", str(port), "--database-url", f"sqlite:///{fresh}"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr  # one line
    assert done.stderr.startswith("capgate: cannot start:")
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert done.stdout == ""
    assert not list(tmp_path.glob("fresh.db*"))  # not created, nor its secrets or locks


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--workers", "0"), {}), (("--workers", "-2"), {}), ((), {"CAPGATE_WORKERS": "0"})],
    ids=["zero", "negative", "env-zero"],
)
def test_workers_below_one_are_refused(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    db = tmp_path / "never.db"
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--database-url", f"sqlite:///{db}", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 2
    assert "capgate: bad configuration: server.workers:" in done.stderr, done.stderr
    assert "greater than or equal to 1" in done.stderr
    assert not db.exists()


def test_a_demo_with_workers_decides_its_keys_once(tmp_path: Path, parents: list[Parent]) -> None:
    """`serve --demo --workers 2`: one admin key and one demo key, made by the parent, in
    one secrets file; both work on every worker; a restart hands out the same."""
    db = tmp_path / "demo.db"
    seen = []
    for _ in range(2):
        parent = Parent(tmp_path, {}, "--demo", "--workers", "2", db=db, admin_key=None)
        parents.append(parent)
        demo = parent.wait_for(r"export CAPGATE_KEY=(\S+)").group(1)
        assert "REPLACED" not in parent.text()
        seen.append((parent.server.admin_key, demo))
        results = asyncio.run(_fire(parent.url, demo, [QUICK] * 16))
        assert [status for status, _ in results] == [200] * 16
        assert len(_reach_both(parent.url, demo)) == 2  # the demo key works on both
        for _ in range(6):  # the admin key, on whichever worker each connection lands
            keys = httpx.get(
                parent.url + "/admin/keys",
                headers={"authorization": f"Bearer {parent.server.admin_key}"},
            )
            assert keys.status_code == 200, keys.text
            assert [k["name"] for k in keys.json()["items"]] == ["demo"]
        parent.close()
    assert seen[0] == seen[1]
    kept = orjson.loads(Path(f"{db}.secrets").read_bytes())
    assert (kept["admin_key"], kept["demo_key"]) == seen[0]


def test_a_worker_that_cannot_start_stops_the_start(tmp_path: Path) -> None:
    """A failure every worker would share (here a CLI provider's program is missing) is
    said once, by worker 1 and the parent, and nothing keeps running."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {"providers": [{"name": "local", "type": "claude-cli", "command": "/nonexistent/x"}]}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "capgate", "serve", "--config", str(config), "--workers", "3",
         "--port", "0", "--database-url", f"sqlite:///{tmp_path / 'c.db'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    assert re.fullmatch(r"capgate: worker \d+: bad configuration: provider \"local\".*", lines[0])
    assert re.fullmatch(
        r"capgate: worker 1 \(pid \d+\) stopped before it answered \(exit status 1\)", lines[1]
    )
    assert "listening" not in done.stdout


def test_workers_serve_tls(upstream: Upstream, tmp_path: Path, parents: list[Parent]) -> None:
    cert, key = self_signed(tmp_path)
    parent = Parent(
        tmp_path, gateway_config(upstream), "--workers", "2",
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    parents.append(parent)
    assert parent.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    assert len(_reach_both(parent.url, "sk-cg-nope", 401, context)) == 2
    answer = httpx.get(parent.url + "/health", verify=context)
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
