"""The fast path's bytes, without I/O: which request heads it serves itself (anything else
goes to aiohttp, untouched) and the head of its answers.

A head is served only when it is plainly a gateway call: `POST` to one of the gateway
paths (a query string allowed) over HTTP/1.1, parsed cleanly by httptools (every line
ending in CRLF, no folded header), within 8 KiB per line, exactly one Content-Length of digits
and no more than the body limit, and no Transfer-Encoding, Content-Encoding, Expect or
Upgrade. Everything else (a chunked or compressed body, `Expect: 100-continue`,
HTTP/1.0, a malformed head, a body over the limit, another route) is aiohttp's to answer,
as it always did."""

from __future__ import annotations

import re
import time
from email.utils import formatdate

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

GATEWAY_PATHS = ("/v1/messages", "/v1/chat/completions", "/v1/responses")
LINE_LIMIT = 8190  # aiohttp's max_line_size / max_field_size
HEAD_LIMIT = 64 * 1024  # a fast head is never longer; past it aiohttp decides
MAX_LINES = 128  # the request line and headers: aiohttp refuses more than 128 headers
_LINE = re.compile(
    rb"POST ("
    + b"|".join(re.escape(p.encode()) for p in GATEWAY_PATHS)
    + rb")(?:\?[!-~]*+)? HTTP/1\.1"
)
_PREFIX = b"POST /v1/"
_REFUSED = frozenset(
    {"transfer-encoding", "content-encoding", "expect", "upgrade", "content-length"}
)


class Head:
    """A request head the fast path serves."""

    __slots__ = ("headers", "keep_alive", "length", "path", "size")

    def __init__(
        self, path: str, headers: CIMultiDictProxy[str], length: int, size: int, keep_alive: bool
    ) -> None:
        self.path = path
        self.headers = headers
        self.length = length  # of the body
        self.size = size  # of the head, blank line included
        self.keep_alive = keep_alive


HAND_OFF = "hand off"  # not the fast path's: aiohttp answers it


class _Fields:
    """httptools' callbacks: the header fields as aiohttp decodes them."""

    __slots__ = ("complete", "fields", "lengths", "refused")

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.complete = False
        self.refused = False
        self.lengths = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("utf-8", "surrogateescape")
        lowered = key.lower()
        if lowered in _REFUSED:
            if lowered != "content-length" or not value.isdigit():
                self.refused = True
            else:
                self.lengths += 1
        self.fields.append((key, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.complete = True


class Scan:
    """How far the head being read has been checked, so that a head arriving in many
    packets costs its bytes once (each packet's new lines only)."""

    __slots__ = ("lines", "start")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = 0  # the bytes before it are whole lines, checked
        self.lines = 0  # how many


def read_head(buffer: bytearray, max_body: int, scan: Scan) -> Head | str | None:
    """The head at the start of `buffer` when the fast path serves it; HAND_OFF when it
    does not (or cannot tell: aiohttp will); None while more bytes are needed to decide."""
    start = scan.start
    end = buffer.find(b"\r\n\r\n", max(start - 2, 0), HEAD_LIMIT)
    if end < 0:
        return _scan(buffer, scan)
    size = end + 4
    head = bytes(buffer[:size])
    first = head.find(b"\r\n")
    line = _LINE.fullmatch(head, 0, first)
    if line is None:
        return HAND_OFF
    if scan.lines + head.count(b"\n", start) > MAX_LINES:
        return HAND_OFF  # aiohttp's max_headers
    if size - start > LINE_LIMIT and max(map(len, head[start:].split(b"\r\n"))) > LINE_LIMIT:
        return HAND_OFF
    fields = _Fields()  # a bare LF or a folded line is an HttpParserError (llhttp, strict)
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return HAND_OFF
    if not fields.complete or fields.refused or fields.lengths != 1:
        return HAND_OFF
    headers = CIMultiDictProxy(CIMultiDict(fields.fields))
    length = int(headers["content-length"])
    if length > max_body:
        return HAND_OFF  # the gateway's 413, in its dialect, by aiohttp's path
    path = line.group(1).decode("ascii")
    return Head(path, headers, length, size, parser.should_keep_alive())


def _scan(buffer: bytearray, scan: Scan) -> str | None:
    """An incomplete head: check the lines that arrived since the last look."""
    start = scan.start
    if start == 0 and not _PREFIX.startswith(bytes(buffer[: len(_PREFIX)])):
        return HAND_OFF  # another route
    if len(buffer) >= HEAD_LIMIT:
        return HAND_OFF
    last = buffer.rfind(b"\n", start)
    if last < 0:  # no new whole line
        return HAND_OFF if len(buffer) - start > LINE_LIMIT else None
    if start == 0 and not _LINE.fullmatch(buffer, 0, buffer.find(b"\n") - 1):
        return HAND_OFF  # another route, or a request line not ending in CRLF
    new = bytes(buffer[start : last + 1])
    lines = new.count(b"\n")
    if new.count(b"\r\n") != lines:
        return HAND_OFF  # lines that do not end in CRLF
    scan.lines += lines
    if scan.lines > MAX_LINES:
        return HAND_OFF  # aiohttp's max_headers
    if len(new) > LINE_LIMIT and max(map(len, new.split(b"\r\n"))) > LINE_LIMIT:
        return HAND_OFF
    if len(buffer) - (last + 1) > LINE_LIMIT:
        return HAND_OFF
    scan.start = last + 1
    return None


# What answered, as the Server header says: `capgate` here, aiohttp's own name on what
# aiohttp answers (`Python/3.x aiohttp/3.y`), so a trace of a connection shows which did.
SERVER = "capgate"
_OWN = frozenset({"content-length", "transfer-encoding", "connection"})


class Dates:
    """The Date header's value, made once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
        return self._value


def answer_head(
    status: int,
    reason: str,
    headers: CIMultiDict[str] | dict[str, str],
    framing: str,
    close: bool,
    extra: tuple[tuple[str, str], ...],
    date: str,
    has_body: bool,
) -> bytes:
    """The status line and headers as aiohttp writes them: the handler's headers in their
    order, then `framing` (Content-Length or chunked), Date and Server when not set, and
    `Connection: close` when the connection ends after this answer."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    seen_type = seen_date = seen_server = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _OWN:
            continue
        if lowered == "content-type":
            seen_type = True
        elif lowered == "date":
            seen_date = True
        elif lowered == "server":
            seen_server = True
        lines.append(f"{name}: {value}\r\n")
    for name, value in extra:
        lines.append(f"{name}: {value}\r\n")
    if has_body and not seen_type:
        lines.append("Content-Type: application/octet-stream\r\n")
    if framing:
        lines.append(framing)
    if not seen_date:
        lines.append(f"Date: {date}\r\n")
    if not seen_server:
        lines.append(f"Server: {SERVER}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    text = "".join(lines)  # each line ends in its one CRLF, unless a value holds another
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a header holds a line break")  # never sent: a 500 instead
    return (text + "\r\n").encode("utf-8")


def whole_answer(
    response: web.Response,
    close: bool,
    extra: tuple[tuple[str, str], ...],
    date: str,
) -> bytes:
    """A whole answer (headers and body) in one piece, for one write."""
    body = response.body
    if not isinstance(body, bytes):
        raise TypeError(f"the fast path writes bytes bodies, not {type(body).__name__}")
    framing = f"Content-Length: {len(body)}\r\n"
    head = answer_head(
        response.status, response.reason, response.headers, framing, close, extra, date, bool(body)
    )
    return head + body
