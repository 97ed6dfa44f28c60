"""Running a CLI under limits: an argument list (never a shell), a filtered environment, a
fresh empty working directory, its own process group (so all of it can be stopped), a
slot of the provider's concurrency cap, one deadline for the whole run (the wait for a
slot included) and a cap on what it may print. Failures become `UpstreamFailed` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from capgate.config import ConfigError
from capgate.errors import UpstreamFailed, UpstreamTimeout
from capgate.provider_config import ProviderConfig

GRACE_S = 2.0  # between SIGTERM and SIGKILL
_STDERR_KEPT = 64 * 1024
# Not inherited from the server's environment: capgate's own settings, API credentials
# (a CLI given ANTHROPIC_API_KEY bills that key instead of its login) and anything named
# like a secret. What a CLI needs goes in the provider's `env`.
_WITHHELD = re.compile(
    r"^(CAPGATE_|ANTHROPIC_|OPENAI_|AZURE_OPENAI_|CLAUDE_CODE_OAUTH)"
    r"|(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$|SECRET|PASSWORD",
    re.IGNORECASE,
)


def child_environment(
    environ: Mapping[str, str],
    secrets: Collection[str],
    defaults: Mapping[str, str],
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The server's environment without CAPGATE_* and secrets (by name, or by value: a
    provider key of the config), then `defaults`, then the provider's `env`."""
    kept = {
        name: value
        for name, value in environ.items()
        if not _WITHHELD.search(name) and value not in secrets
    }
    return {**kept, **defaults, **extra}


def resolve_program(config: ProviderConfig, env: Mapping[str, str]) -> str:
    """The CLI's absolute path, found when the server starts."""
    found = shutil.which(config.program, path=env.get("PATH", os.defpath))
    if found is None:
        raise ConfigError(
            f'provider "{config.name}" ({config.type}): the command {config.program!r} was not '
            "found or is not executable; install it or set `command` to its path"
        )
    return os.path.abspath(found)


class CLIRun:
    """One running CLI. `line()` reads its stdout within the deadline and the output cap;
    `finish()` waits for its exit; `stop()` / `kill()` end the whole process group. Every
    way out ends in `_stop`: the group is gone, the directory removed, the slot freed."""

    def __init__(
        self,
        label: str,
        proc: asyncio.subprocess.Process,
        stdin: bytes,
        workdir: Path,
        deadline: float,
        timeout_s: float,
        max_mb: float,
        release: Callable[[], None],
    ) -> None:
        self._label = label
        self._proc = proc
        self._workdir = workdir
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._max_mb = max_mb
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._release = release
        self._printed = 0
        self._over = False
        self._stderr = bytearray()
        self._stopping: asyncio.Future[None] | None = None
        self._feeder = asyncio.ensure_future(self._feed(stdin))
        self._errors = asyncio.ensure_future(self._drain_stderr())

    async def _feed(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):  # it exited without reading it all
            pass

    async def _drain_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while chunk := await stderr.read(65536):
            self._count(len(chunk))
            self._stderr += chunk
            del self._stderr[:-_STDERR_KEPT]

    def _count(self, size: int) -> None:
        self._printed += size
        if self._printed > self._max_bytes and not self._over:
            self._over = True
            self.kill()

    @property
    def stderr(self) -> str:
        """The end of what it printed on stderr, where the reason for a failure is."""
        text = " ".join(self._stderr.decode("utf-8", "replace").split())
        return text if len(text) <= 500 else "..." + text[-497:]

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self._label} did not finish within timeout_s={self._timeout_s:g} s; it was stopped",
            charge_all=True,  # it may have been generating
        )

    def _too_much(self) -> UpstreamFailed:
        return UpstreamFailed(
            f"{self._label} printed more than max_output_mb={self._max_mb:g}; it was stopped",
            charge_all=True,
        )

    async def line(self) -> bytes:
        """The next line of stdout; b"" at its end."""
        stdout = self._proc.stdout
        assert stdout is not None
        line = b""
        try:
            async with asyncio.timeout_at(self._deadline):
                line = await stdout.readline()
        except TimeoutError:
            await self.stop()
            raise self._timed_out() from None
        except ValueError:  # one line longer than the whole cap
            self._over = True
        self._count(len(line))
        if self._over:
            await self.stop()
            raise self._too_much()
        return line

    async def read_all(self) -> bytes:
        lines = []
        while line := await self.line():
            lines.append(line)
        return b"".join(lines)

    async def finish(self) -> int:
        """Wait for the exit (within the deadline) and clean up; the exit code."""
        try:
            async with asyncio.timeout_at(self._deadline):
                code = await self._proc.wait()
                await self._errors
        except TimeoutError:
            await self.stop()
            raise self._timed_out() from None
        await self.stop()
        return code

    def kill(self) -> None:
        """Stop the run from synchronous code (the client went away)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def stop(self) -> None:
        self.kill()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)  # its own session: the group id is its pid

    async def _stop(self) -> None:
        try:
            if self._proc.returncode is None:
                self._signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), GRACE_S)
            self._signal(signal.SIGKILL)  # whatever is left of the group
            await self._proc.wait()
        finally:
            for task in (self._feeder, self._errors):
                task.cancel()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._release()


class CLIRunner:
    """Starts the runs of one provider, at most `max_concurrency` at a time."""

    def __init__(self, config: ProviderConfig, program: str, env: Mapping[str, str]) -> None:
        self.program = program
        self.label = f'provider "{config.name}" ({config.type})'
        self._env = dict(env)
        self._timeout_s = config.timeout_s
        self._max_mb = config.max_output_mb
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._runs: set[CLIRun] = set()

    async def start(
        self,
        argv: Callable[[Path], list[str]],
        stdin: bytes,
        env: Mapping[str, str],
        files: Mapping[str, str],
    ) -> CLIRun:
        """A started run, once a slot is free. `argv` gets the run's directory (where
        `files` are written); the working directory is an empty folder inside it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.label}: no free slot within timeout_s={self._timeout_s:g} s "
                "(all max_concurrency runs were busy)"
            ) from None
        workdir = Path(tempfile.mkdtemp(prefix="capgate-cli-"))
        run: CLIRun | None = None

        def release() -> None:
            self._slots.release()
            if run is not None:
                self._runs.discard(run)

        try:
            for name, text in files.items():
                (workdir / name).write_text(text, "utf-8")
            (workdir / "work").mkdir()
            proc = await asyncio.create_subprocess_exec(
                *argv(workdir),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir / "work",
                env={**self._env, **env},
                start_new_session=True,
                limit=int(self._max_mb * 1024 * 1024),
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            self._slots.release()
            raise UpstreamFailed(f"{self.label} could not start {self.program}: {exc}") from exc
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            self._slots.release()
            raise
        run = CLIRun(
            self.label, proc, stdin, workdir, deadline, self._timeout_s, self._max_mb, release
        )
        self._runs.add(run)
        return run

    async def close(self) -> None:
        """Stop every run still going (server shutdown)."""
        await asyncio.gather(*(run.stop() for run in list(self._runs)))
