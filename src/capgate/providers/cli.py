"""CLI providers: a local Claude Code or Codex, logged in to its own plan, as the backend
(the ai-cli-bridge way). Each request runs the CLI once, non-interactively, with the prompt
on stdin; its output becomes the answer the real API would have sent, so the gateway
reserves, relays and settles exactly as for an HTTP provider.

    ClaudeCLIProvider  claude-cli  /v1/messages          (claude_code.py: flags, parsing)
    CodexCLIProvider   codex-cli   /v1/chat/completions  (codex_exec.py: flags, parsing)

A request a CLI cannot honour (client tools, images, a model name that is not a plain
name) is answered 400 before any process starts. A failed run raises `UpstreamFailed`
(502; `UpstreamTimeout`, 504, past `timeout_s`) or, when the CLI reports the API's own
400/404/413/422/429, answers that status in the dialect's error shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import orjson

from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers import claude_code, codex_exec
from capgate.providers.base import Endpoint
from capgate.providers.cli_process import CLIRun, CLIRunner, child_environment, resolve_program
from capgate.providers.prompt import Unsupported, shorten

_JSON = "application/json"
_SSE = "text/event-stream"


class CLIAnswer:
    """An answer made from a CLI's output: its first bytes, and for a stream the rest as
    the run produces it. `close()` stops the run."""

    __slots__ = ("_content_type", "_head", "_run", "cost", "rest", "status")

    def __init__(
        self,
        status: int,
        content_type: str,
        head: bytes,
        run: CLIRun | None = None,
        cost: int | None = None,
    ) -> None:
        self.status = status
        self._content_type = content_type
        self._head = head
        self.rest: AsyncIterator[bytes] | None = None
        self._run = run
        self.cost = cost  # nano-dollars; a stream sets it when the CLI's result arrives

    @property
    def headers(self) -> Mapping[str, str]:
        return {"content-type": self._content_type}

    @property
    def cost_nano(self) -> int | None:
        return self.cost

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._head:
            yield self._head
        if self.rest is not None:
            async for piece in self.rest:
                yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    def close(self) -> None:
        if self._run is not None:
            self._run.kill()


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unsupported(f"the request body is not valid JSON: {exc}") from None


class _CLIProvider:
    endpoint: Endpoint
    defaults: Mapping[str, str] = {}

    def __init__(
        self,
        config: ProviderConfig,
        environ: Mapping[str, str],
        secrets: Collection[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.type: str = config.type
        self.dialects = config.dialects
        # It times itself out (stopping its processes) at timeout_s, and its first byte
        # may come only when its run ends: the gateway's wait is a backstop behind that.
        self.first_byte_timeout_s = config.timeout_s + 5
        self.chat_output_field = "max_tokens"
        env = child_environment(environ, secrets, self.defaults, config.env)
        self._runner = CLIRunner(config, resolve_program(config, env), env)
        self._clock = clock

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is self.endpoint

    def _failed(self, status: int, message: str) -> CLIAnswer:
        """Statuses the client should see are answered; the rest are the gateway's."""
        message = f"{self._runner.label}: {message}"
        if status == 502:
            raise UpstreamFailed(message)
        return CLIAnswer(status, _JSON, self._error_body(status, message))

    def _error_body(self, status: int, message: str) -> bytes:
        raise NotImplementedError

    def _no_output(self, run: CLIRun, code: int, output: bytes) -> UpstreamFailed:
        detail = run.stderr or shorten(output.decode("utf-8", "replace"), 500) or "no output"
        return UpstreamFailed(f"{self._runner.label}: exit code {code}, no result: {detail}")

    async def close(self) -> None:
        await self._runner.close()


class ClaudeCLIProvider(_CLIProvider):
    endpoint = Endpoint.MESSAGES
    defaults = claude_code.DEFAULT_ENV

    def _error_body(self, status: int, message: str) -> bytes:
        return claude_code.error_body(status, message)

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> CLIAnswer:
        try:
            job = claude_code.messages_job(_parse(body))
        except Unsupported as exc:
            return CLIAnswer(400, _JSON, claude_code.error_body(400, str(exc)))
        program = self._runner.program

        def argv(workdir: Path) -> list[str]:
            return job.argv(program, workdir)

        run = await self._runner.start(argv, job.prompt.encode(), job.env(), job.files())
        try:
            if job.stream:
                return await self._stream(run, job)
            output = await run.read_all()
            code = await run.finish()
        except BaseException:
            run.kill()
            raise
        result = claude_code.find_result(output)
        if result is None:
            raise self._no_output(run, code, output)
        if result.is_error:
            return self._failed(*result.failure())
        answer = claude_code.message_body(result, job.model, claude_code.message_id())
        return CLIAnswer(200, _JSON, answer, cost=result.cost_nano)

    async def _stream(self, run: CLIRun, job: claude_code.ClaudeJob) -> CLIAnswer:
        """Read until the API's first event (then stream the rest as it comes) or the
        result (an error is answered with its status, not as a broken stream)."""
        events = claude_code.MessagesStream(job.model, claude_code.message_id())
        seen = []
        while line := await run.line():
            data = claude_code.parse_line(line)
            if data is None:
                seen.append(line)
                continue
            if data.get("type") == "result":
                await run.finish()
                result = claude_code.ClaudeResult(data)
                if result.is_error:
                    return self._failed(*result.failure())
                return CLIAnswer(200, _SSE, events.finish(result), cost=result.cost_nano)
            head = events.feed(data)
            if head:
                answer = CLIAnswer(200, _SSE, head, run)
                answer.rest = self._rest(run, events, answer)
                return answer
        raise self._no_output(run, await run.finish(), b"".join(seen))

    async def _rest(
        self, run: CLIRun, events: claude_code.MessagesStream, answer: CLIAnswer
    ) -> AsyncIterator[bytes]:
        """The stream after its first event. A failure now can only end it with an
        `error` event (the status is sent); the gateway charges what was relayed."""
        label = self._runner.label
        try:
            while line := await run.line():
                data = claude_code.parse_line(line)
                if data is None:
                    continue
                if data.get("type") == "result":
                    result = claude_code.ClaudeResult(data)
                    if result.is_error:
                        status, message = result.failure()
                        yield claude_code.stream_error(f"{label}: {message}", status)
                        return
                    answer.cost = result.cost_nano  # known before message_stop goes out
                    yield events.finish(result)
                    await run.finish()
                    return
                block = events.feed(data)
                if block:
                    yield block
            yield claude_code.stream_error(f"{label}: the output ended without a result")
        except UpstreamFailed as exc:  # timed out, or printed too much
            yield claude_code.stream_error(exc.message)
        finally:
            run.kill()  # a no-op when it has finished


class CodexCLIProvider(_CLIProvider):
    endpoint = Endpoint.CHAT

    def _error_body(self, status: int, message: str) -> bytes:
        return codex_exec.error_body(status, message)

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> CLIAnswer:
        try:
            job = codex_exec.chat_job(_parse(body))
        except Unsupported as exc:
            return CLIAnswer(400, _JSON, codex_exec.error_body(400, str(exc)))
        program = self._runner.program

        def argv(workdir: Path) -> list[str]:
            return job.argv(program, workdir)

        run = await self._runner.start(argv, job.prompt.encode(), {}, job.files())
        try:
            output = await run.read_all()
            code = await run.finish()
        except BaseException:
            run.kill()
            raise
        result = codex_exec.read_events(output)
        failure = result.failure()
        if failure is not None:
            if result.error is None and code != 0:
                raise self._no_output(run, code, output)
            return self._failed(*failure)
        ident, created = codex_exec.completion_id(), int(self._clock())
        if job.stream:
            stream = codex_exec.completion_stream(
                result, job.model, ident, created, job.include_usage
            )
            return CLIAnswer(200, _SSE, stream)
        return CLIAnswer(200, _JSON, codex_exec.completion_body(result, job.model, ident, created))


def cli_provider(
    config: ProviderConfig, environ: Mapping[str, str], secrets: Collection[str] = ()
) -> ClaudeCLIProvider | CodexCLIProvider:
    """The provider for a `claude-cli` or `codex-cli` entry of the config. Raises
    ConfigError when its command is missing."""
    cls = ClaudeCLIProvider if config.type == "claude-cli" else CodexCLIProvider
    return cls(config, environ, secrets)
