"""Structured logs: the standard `logging` module, one line per event, to stderr (where
systemd and container runtimes collect them), as text or JSON lines.

Loggers: `capgate.access` (one line per finished or refused request), `capgate.admin`
(one line per admin action), `capgate.upstream` (upstream failures, circuit-breaker
changes), `capgate.*` (the rest). A line's fields are only gathered when a handler
emits it, so a level that is off costs one comparison per request.

Never logged: keys, admin keys, cookies, prompts or answers. An error is logged by its
kind only (`upstream 503`, `client disconnected`): what follows the first colon may quote
an upstream's body, which may quote the prompt. The ledger keeps the whole text
(`GET /admin/requests`), found by the line's request_id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from logging.handlers import QueueHandler, QueueListener
from typing import IO, TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web

from capgate.core.limits import Scope, nano_to_decimal_str
from capgate.errors import CapgateError
from capgate.store.base import Outcome, Reservation

if TYPE_CHECKING:
    from capgate.metrics import Metrics

ACCESS = logging.getLogger("capgate.access")
ADMIN = logging.getLogger("capgate.admin")
UPSTREAM = logging.getLogger("capgate.upstream")

# Key-shaped strings (capgate's, OpenAI's, Anthropic's, bearer tokens) in error texts.
_KEYISH = re.compile(r"(sk-[A-Za-z0-9_*-]{3})[A-Za-z0-9_*-]+|(Bearer\s+)\S+", re.IGNORECASE)
_MAX_ERROR = 200


def scrub(error: str, limit: int = _MAX_ERROR) -> str:
    """An error fit for a log line: its kind (up to the first colon), short, with
    key-shaped strings masked."""
    kind = error.split(":", 1)[0][: limit * 2]
    return _KEYISH.sub(lambda m: (m.group(1) or m.group(2)) + "…", kind)[:limit]


class Line:
    """A log line's event name and fields, rendered only when a handler emits it: as
    `event k=v ...` by the text format, as one JSON object by the json format."""

    __slots__ = ("event", "values")

    def __init__(self, event: str, values: Mapping[str, Any] | None = None) -> None:
        self.event = event
        self.values = values

    def fields(self) -> Mapping[str, Any]:
        return self.values or {}

    def __str__(self) -> str:
        parts = [self.event]
        for name, value in self.fields().items():
            if value is None:
                continue
            if isinstance(value, str):
                parts.append(f"{name}={value}" if _plain(value) else f"{name}={_quoted(value)}")
            elif isinstance(value, bool):
                parts.append(f"{name}=true" if value else f"{name}=false")
            else:
                parts.append(f"{name}={value}")
        return " ".join(parts)


def _plain(text: str) -> bool:
    """Whether a text value can be written as it is: not empty, no space, `=`, `"` or
    backslash, nothing unprintable (a control character, a line break, any Unicode
    space). Otherwise it is written as a JSON string: a line stays one line, and a value
    cannot pass for another field."""
    return (
        text.isprintable()
        and bool(text)
        and " " not in text
        and "=" not in text
        and '"' not in text
        and "\\" not in text
    )


def _quoted(text: str) -> str:
    return orjson.dumps(text).decode()


class _Finished(Line):
    __slots__ = ("outcome", "res")

    def __init__(self, res: Reservation, outcome: Outcome) -> None:
        super().__init__("request")
        self.res, self.outcome = res, outcome

    def fields(self) -> Mapping[str, Any]:
        info, out = self.res.info, self.outcome
        return {
            "request_id": info.request_id,
            "key": self.res.key.name,
            "endpoint": info.endpoint,
            "model": info.model,
            "provider": info.provider,
            "upstream_model": out.upstream_model or info.upstream_model,
            "stream": info.stream,
            "status": out.status,
            "outcome": out.outcome,
            "cost_usd": nano_to_decimal_str(out.cost_nano),
            "input_tokens": out.usage.input_tokens if out.usage is not None else None,
            "output_tokens": out.usage.output_tokens if out.usage is not None else None,
            "latency_ms": round(out.latency_ms, 1),
            "ttft_ms": round(out.ttft_ms, 1) if out.ttft_ms is not None else None,
            "attempts": out.attempts,
            "error": scrub(out.error) if out.error else None,
            "flags": list(out.flags) if out.flags else None,
        }


class _Refused(Line):
    __slots__ = ("endpoint", "exc", "key", "model", "request_id")

    def __init__(
        self,
        request_id: str | None,
        key: Scope | None,
        endpoint: str,
        model: Any,
        exc: CapgateError,
    ) -> None:
        super().__init__("request")
        self.request_id, self.key, self.endpoint = request_id, key, endpoint
        self.model, self.exc = model, exc

    def fields(self) -> Mapping[str, Any]:
        exc = self.exc
        return {
            "request_id": self.request_id,
            "key": self.key.name if self.key is not None else None,
            "endpoint": self.endpoint,
            "model": self.model[:100] if isinstance(self.model, str) else None,
            "status": exc.status,
            "outcome": "refused",
            "reason": exc.headers.get("x-capgate-refusal") or exc.kind,
        }


class AccessLog:
    """The request lines, from where a request ends: its settlement or its refusal. The
    request metrics (`capgate.metrics`) are counted here too, when on."""

    __slots__ = ("_log", "_metrics", "_queued")

    def __init__(self, log: logging.Logger = ACCESS, metrics: Metrics | None = None) -> None:
        self._log = log
        self._metrics = metrics
        # Lines of requests that ended in this loop turn, logged at the next one (after
        # their answers are written), all by one callback.
        self._queued: list[tuple[int, _Finished]] = []

    def finished(
        self, res: Reservation, outcome: Outcome, pending: asyncio.Future[None] | None = None
    ) -> None:
        """`pending` is the queued settlement (a traced request's span waits for it)."""
        if self._metrics is not None:
            self._metrics.finished(res, outcome)
        # A flagged entry (usage above the reservation, unreadable usage) is a warning:
        # the alert an operator sees before any dashboard is opened.
        level = logging.WARNING if outcome.flags else logging.INFO
        if self._log.isEnabledFor(level):
            queued = self._queued
            if not queued:
                try:  # after the answers are written: a line's record waits for them
                    asyncio.get_running_loop().call_soon(self._log_queued)
                except RuntimeError:  # no loop: at once
                    self._log.log(level, _Finished(res, outcome))
                    return
            queued.append((level, _Finished(res, outcome)))

    def _log_queued(self) -> None:
        queued, self._queued = self._queued, []
        log = self._log.log
        for level, line in queued:
            log(level, line)

    def refused(
        self, request_id: str | None, key: Scope | None, endpoint: str, body: Any, exc: CapgateError
    ) -> None:
        if self._metrics is not None:
            self._metrics.refused(
                endpoint, body.get("model") if isinstance(body, dict) else None, exc
            )
        if self._log.isEnabledFor(logging.INFO):
            model = body.get("model") if isinstance(body, dict) else None
            self._log.info(_Refused(request_id, key, endpoint, model, exc))


# -- the admin API ----------------------------------------------------------------------


def logged_admin_routes(routes: list[web.RouteDef]) -> list[web.RouteDef]:
    """The admin routes, each also writing one line per call: who, what, which, how it
    ended. Changes at info, reads at debug (the dashboard polls). Wrapping the routes
    rather than adding a middleware keeps the gateway's own requests free of it."""
    return [web.route(r.method, r.path, _logged(r.handler), **r.kwargs) for r in routes]


def _logged(handler: Any) -> Any:
    async def logged(request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        finally:
            level = logging.DEBUG if request.method in ("GET", "HEAD") else logging.INFO
            if ADMIN.isEnabledFor(level):
                resource = request.match_info.route.resource
                fields = {
                    "actor": request.get("actor"),
                    "method": request.method,
                    "route": resource.canonical if resource is not None else request.path,
                    "target": request.match_info.get("name"),
                    "status": status,
                }
                ADMIN.log(level, Line("admin", fields))

    return logged


# -- setup ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, (pid), event or message, and the fields."""

    def __init__(self, pid: int | None = None) -> None:
        super().__init__()
        self._pid = pid
        self._seconds = _SecondText("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": f"{self._seconds(record.created)}.{int(record.created % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._pid is not None:
            data["pid"] = self._pid
        msg = record.msg
        if isinstance(msg, Line) and not record.args:
            data["event"] = msg.event
            data.update((k, v) for k, v in msg.fields().items() if v is not None)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


class _SecondText:
    """A time's text to the second, made once a second (a log line's time; a change of
    daylight saving time falls on a second)."""

    __slots__ = ("_convert", "_format", "_second", "_text")

    def __init__(self, fmt: str, convert: Callable[[float | None], time.struct_time]) -> None:
        self._format, self._convert = fmt, convert
        self._second, self._text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self._format, self._convert(second))
            self._second = second
        return self._text


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` (with `[pid]` after the logger's name under `serve --workers`), as
    `logging.Formatter` writes it, at a third of its cost: the time's text is made once a
    second, and the line is put together without `%`-formatting the record's dict. On
    the writer thread, but its CPU is the process's: one line per request."""

    def __init__(self, pid: int | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self._after_name = "" if pid is None else f"[{pid}]"
        self._seconds = _SecondText(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # local, as logging's

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        text = (
            f"{self.formatTime(record)} {record.levelname} {record.name}{self._after_name}: "
            f"{record.message}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}" if text[-1:] != "\n" else text + record.exc_text
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            text = f"{text}\n{stack}" if text[-1:] != "\n" else text + stack
        return text


class _Records:
    """The writer thread's queue, taken in batches. A line put while the thread is busy or
    resting between batches wakes nobody; only a line put while it waits for want of
    lines wakes it. Under load the thread then wakes once per `REST_S`, not once per
    line: on this 2-core VM a wake-up per request line (a futex, a thread switch, the GIL
    handed over and back) cost 25-50 µs of CPU per request at c=64 and ~80 µs at c=1,
    more than the formatting (docs/performance.md, "The log writer, woken per batch")."""

    __slots__ = ("_items", "_waiting", "_wake")

    def __init__(self) -> None:
        self._items: collections.deque[logging.LogRecord | None] = collections.deque()
        self._wake = threading.Event()
        self._waiting = False

    def put_nowait(self, record: logging.LogRecord | None) -> None:
        self._items.append(record)  # deque.append is atomic: any thread may put
        if self._waiting:
            self._waiting = False
            self._wake.set()

    put = put_nowait

    def take(self, limit: int) -> list[logging.LogRecord | None]:
        """Up to `limit` records, waiting for the first one."""
        items = self._items
        while not items:
            self._waiting = True
            if items:  # put between the look and the flag: it did not wake us
                self._waiting = False
                break
            self._wake.wait()
            self._wake.clear()
        n = min(len(items), limit)
        return [items.popleft() for _ in range(n)]


class _Deferred(QueueHandler):
    """Hands records to the writer thread as they are: formatting and the write to stderr
    happen there, never on the event loop (a stalled stderr reader cannot stall it)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        """As Handler.handle without its lock: the queue is thread-safe on its own."""
        if self.filter(record):
            self.queue.put_nowait(record)
            return True
        return False


class _Batches(QueueListener):
    """The writer thread: it takes every record queued since it last looked, formats
    them, writes them to its one stream in one write and one flush, and rests `REST_S`
    before it looks again (a line waits at most that long; one put into an empty queue
    wakes it at once)."""

    _MAX_BATCH = 1024
    REST_S = 0.02

    def _monitor(self) -> None:
        records = cast("_Records", self.queue)
        (handler,) = self.handlers
        assert isinstance(handler, logging.StreamHandler)
        while True:
            batch = records.take(self._MAX_BATCH)
            lines = []
            for record in batch:
                if record is None:  # QueueListener's sentinel: stop() was called
                    continue
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:  # noqa: BLE001 - logging's own rule: report it, go on
                    handler.handleError(record)
                    continue
                last = record
            if lines:
                with handler.lock or contextlib.nullcontext():
                    try:
                        handler.stream.write("".join(lines))
                        handler.flush()
                    except Exception:  # noqa: BLE001 - as StreamHandler.emit does
                        handler.handleError(last)
            if any(record is None for record in batch):
                return
            if len(batch) < self._MAX_BATCH:
                time.sleep(self.REST_S)


def configure(
    level: str, fmt: str, stream: IO[str] | None = None, pid: int | None = None
) -> QueueListener:
    """Send every log line to stderr (or `stream`) in the chosen format and level, through
    a writer thread. Stop the returned listener at exit: it writes what is queued. With
    `pid` (`serve --workers`), each line says which process wrote it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(pid) if fmt == "json" else TextFormatter(pid))
    # No caller, thread or process lookups for each record: no format here uses them.
    logging._srcfile = None  # documented in logging's "Optimization" section
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    records = _Records()
    listener = _Batches(cast("queue.Queue[logging.LogRecord]", records), handler)
    root = logging.getLogger()
    root.handlers[:] = [_Deferred(cast("queue.Queue[logging.LogRecord]", records))]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our own lines say more
    listener.start()
    return listener
