"""The parent of `capgate serve --workers N`: it keeps N worker processes answering on the
one listening socket it bound, and does no request work itself.

Each worker is a fresh interpreter (not a fork: the parent has a log thread, and no store,
event loop or connection may be shared), started with the listening socket among its file
descriptors and its orders as one JSON line on stdin. The parent keeps that pipe open for
the worker's life: its end is how a worker learns that the parent is gone (`kill -9`
included) and stops, instead of living on with the port. A worker says `ready` on stdout
once it answers, then sends its stdout to stderr.

A worker that dies is started again after a backoff (0.5 s, doubling); when workers died
`crashes` times within `within` seconds, the parent stops everything with one line and
exits 1, so a worker that cannot start does not spin. SIGTERM / SIGINT are passed to the
workers, which finish the requests in flight and write their settlements; the parent
waits for them all, then exits (0 when they all ended cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("capgate.workers")

CRASHES = 5  # worker deaths ...
WITHIN_S = 60.0  # ... within this many seconds: stop everything
BACKOFF_S = 0.5  # before the first restart; doubles with each recent death, up to 10 s
READY = b"ready"


class WorkerFailed(Exception):
    """A worker could not start (or workers kept dying): the message says which and how."""


@dataclass
class _Slot:
    number: int  # 1..N, as the logs name it
    proc: asyncio.subprocess.Process | None = None


@dataclass
class Supervisor:
    """Starts `count` workers with `command`, hands each `order` (one line on stdin) and the
    file descriptors `fds`, restarts the ones that die, stops them all on a signal."""

    count: int
    command: Sequence[str]
    order: bytes
    fds: tuple[int, ...]
    crashes: int = CRASHES
    within_s: float = WITHIN_S
    backoff_s: float = BACKOFF_S
    clock: Callable[[], float] = time.monotonic
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _deaths: list[float] = field(default_factory=list, init=False)  # recent, by `clock`
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _gave_up: str | None = field(default=None, init=False)

    @property
    def pids(self) -> list[int]:
        return [slot.proc.pid for slot in self._slots if slot.proc is not None]

    async def start(self) -> None:
        """All workers answering, or WorkerFailed (the started ones are stopped again).
        The first starts alone: a failure every worker would share is reported once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._slots = [_Slot(n) for n in range(1, self.count + 1)]
        try:
            await self._start(self._slots[0])
            await asyncio.gather(*(self._start(slot) for slot in self._slots[1:]))
        except WorkerFailed:
            await self._stop_all()
            raise

    async def run(self) -> int:
        """Until SIGTERM / SIGINT, or until workers keep dying; the exit status."""
        keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        await self._stop.wait()
        codes = await self._stop_all()
        await asyncio.gather(*keepers)
        if self._gave_up is not None:
            raise WorkerFailed(self._gave_up)
        return 0 if all(code == 0 for code in codes) else 1

    async def _start(self, slot: _Slot) -> None:
        proc = await self._spawn(slot)
        if proc.returncode is not None:
            raise WorkerFailed(
                f"worker {slot.number} (pid {proc.pid}) stopped before it answered "
                f"({_status(proc.returncode)})"
            )

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        """A worker, once it answers; or one that has already ended."""
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=self.fds,
            process_group=0,  # a terminal's Ctrl-C reaches the parent, which passes it on
        )
        slot.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self.order + b"\n")  # the pipe stays open: see the module's doc
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        while line := await proc.stdout.readline():  # what it prints before: passed on
            if line.strip() == READY:
                log.info("worker %d started (pid %d)", slot.number, proc.pid)
                return proc
            sys.stderr.buffer.write(line)
        await proc.wait()  # it ended before it answered
        return proc

    async def _keep(self, slot: _Slot) -> None:
        """Start the slot's worker again each time it dies, until stopped or given up."""
        while slot.proc is not None:
            code = await slot.proc.wait()
            if self._stop.is_set():
                return
            now = self.clock()
            self._deaths = [t for t in self._deaths if now - t < self.within_s] + [now]
            what = f"worker {slot.number} (pid {slot.proc.pid}) ended ({_status(code)})"
            if len(self._deaths) >= self.crashes:
                self._gave_up = (
                    f"{what}: workers died {len(self._deaths)} times within "
                    f"{self.within_s:g} s; stopping"
                )
                self._stop.set()
                return
            delay = min(self.backoff_s * 2 ** (len(self._deaths) - 1), 10.0)
            log.warning("%s; starting another in %.1f s", what, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            try:
                await self._spawn(slot)
            except OSError as exc:  # no process could be made (EAGAIN, EMFILE): a death too
                log.error("worker %d could not be started: %s", slot.number, exc)
            if self._stop.is_set():  # stopped while it started: _stop_all may have missed it
                _terminate(slot.proc)

    async def _stop_all(self) -> list[int]:
        """SIGTERM to every worker; their exit statuses once they have all ended."""
        procs = [slot.proc for slot in self._slots if slot.proc is not None]
        for proc in procs:
            _terminate(proc)
        return [await proc.wait() for proc in procs]


def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
