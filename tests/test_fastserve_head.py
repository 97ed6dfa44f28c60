"""The fast path's decisions without I/O (http/fasthead.py): which heads it serves, which
it hands to aiohttp, when it must wait; and its answers' heads."""

from __future__ import annotations

import pytest
from aiohttp import web

from capgate.http.fasthead import (
    HAND_OFF,
    HEAD_LIMIT,
    Head,
    Scan,
    answer_head,
    read_head,
    whole_answer,
)

LIMIT = 1000


def _head(line: bytes = b"POST /v1/messages HTTP/1.1", *fields: bytes) -> bytearray:
    fields = fields or (b"Host: x", b"Content-Length: 2")
    return bytearray(line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n{}")


SERVED = {
    "messages": _head(),
    "query": _head(b"POST /v1/messages?beta=true HTTP/1.1"),
    "chat": _head(b"POST /v1/chat/completions HTTP/1.1"),
    "responses": _head(b"POST /v1/responses HTTP/1.1"),
    "connection-close": _head(
        b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Connection: close"
    ),
    "at-the-limit": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 1000"),
}
HANDED = {
    "http10": _head(b"POST /v1/messages HTTP/1.0"),
    "get": _head(b"GET /v1/messages HTTP/1.1"),
    "count-tokens": _head(b"POST /v1/messages/count_tokens HTTP/1.1"),
    "admin": _head(b"POST /admin/keys HTTP/1.1"),
    "chunked": _head(b"POST /v1/messages HTTP/1.1", b"Transfer-Encoding: chunked"),
    "gzip": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Content-Encoding: gzip"),
    "expect": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Expect: 100-continue"),
    "upgrade": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Upgrade: h2c"),
    "no-length": _head(b"POST /v1/messages HTTP/1.1", b"Host: x"),
    "two-lengths": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Content-Length: 2"),
    "signed-length": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: +2"),
    "over-the-limit": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 1001"),
    "bad-name": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"Bad Name: y"),
    "folded": _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"X-A: a", b" b"),
    "bare-lf": bytearray(b"POST /v1/messages HTTP/1.1\r\nHost: x\nContent-Length: 2\r\n\r\n{}"),
    "long-line": _head(
        b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"X-Big: " + b"a" * 8200
    ),
    "space-in-path": _head(b"POST /v1/messages x HTTP/1.1"),
}


@pytest.mark.parametrize("case", list(SERVED))
def test_plain_gateway_heads_are_served(case: str) -> None:
    head = read_head(SERVED[case], LIMIT, Scan())
    assert isinstance(head, Head), head
    assert head.path.startswith("/v1/") and "?" not in head.path
    assert head.size == SERVED[case].index(b"\r\n\r\n") + 4
    assert head.keep_alive == (case != "connection-close")


@pytest.mark.parametrize("case", list(HANDED))
def test_anything_else_is_handed_to_aiohttp(case: str) -> None:
    assert read_head(HANDED[case], LIMIT, Scan()) == HAND_OFF


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        (b"PO", None),
        (b"POST /v1/mess", None),
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n", None),
        (b"GET ", HAND_OFF),  # decided at its first bytes: never waits for a whole head
        (b"POST /admin", HAND_OFF),
        (b"POST /v1/models HTTP/1.1\r\n", HAND_OFF),
        (b"POST /v1/messages HTTP/1.1\nHost", HAND_OFF),  # a bare LF: no CRLF CRLF will come
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\nX-A: 1\n\n", HAND_OFF),
        (b"POST /v1/messages?" + b"a" * HEAD_LIMIT, HAND_OFF),  # no end within the limit
    ],
)
def test_a_partial_head_waits_only_while_it_may_be_served(
    partial: bytes, expected: str | None
) -> None:
    assert read_head(bytearray(partial), LIMIT, Scan()) == expected


def _in_pieces(data: bytes, size: int) -> tuple[Head | str | None, Scan]:
    """`data` fed as it would arrive, `size` bytes at a time, until a decision."""
    buffer, scan = bytearray(), Scan()
    found: Head | str | None = None
    for at in range(0, len(data), size):
        buffer += data[at : at + size]
        found = read_head(buffer, LIMIT, scan)
        if found is not None:
            break
    return found, scan


def test_a_head_in_pieces_is_checked_once_and_decided_as_a_whole_one() -> None:
    head = _head(b"POST /v1/messages HTTP/1.1", b"Host: x", b"X-A: 1", b"Content-Length: 2")
    found, scan = _in_pieces(bytes(head), 5)
    assert isinstance(found, Head) and found.size == len(head) - 2 and found.length == 2
    # Line by line: the lines already checked are not looked at again.
    buffer, scan = bytearray(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-A: "), Scan()
    assert read_head(buffer, LIMIT, scan) is None
    assert (scan.start, scan.lines) == (len(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"), 2)


def test_past_128_lines_a_head_goes_to_aiohttp_as_it_arrives() -> None:
    """aiohttp refuses more than 128 headers (its 400): such a head is aiohttp's, decided
    at its 129th line, before its end has come."""
    many = [b"X-Many-%d: 1" % n for n in range(200)]
    head = bytes(_head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", *many))
    assert read_head(bytearray(head), LIMIT, Scan()) == HAND_OFF
    found, scan = _in_pieces(head, 13)
    assert found == HAND_OFF and scan.start < head.index(b"X-Many-140")  # before its end
    few = bytes(_head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", *many[:100]))
    assert isinstance(read_head(bytearray(few), LIMIT, Scan()), Head)
    assert isinstance(_in_pieces(few, 13)[0], Head)


def test_a_long_line_in_pieces_goes_to_aiohttp_at_its_limit() -> None:
    start = b"POST /v1/messages HTTP/1.1\r\nX-Long: " + b"a" * 9000
    found, scan = _in_pieces(start, 100)
    assert found == HAND_OFF and scan.lines == 1


def test_headers_are_kept_as_sent() -> None:
    head = read_head(
        _head(b"POST /v1/messages HTTP/1.1", b"Content-Length: 2", b"X-A: 1", b"x-a: 2"), 9, Scan()
    )
    assert isinstance(head, Head)
    assert head.headers.getall("X-A") == ["1", "2"] and head.length == 2


def test_an_answers_head_is_what_aiohttp_writes() -> None:
    response = web.Response(status=402, body=b"{}", headers={"x-capgate-request-id": "r1"})
    data = whole_answer(response, False, (), "Sat, 05 Dec 2026 12:00:00 GMT")
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"{}"
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 402 Payment Required",
        b"x-capgate-request-id: r1",
        b"Content-Type: application/octet-stream",
        b"Content-Length: 2",
        b"Date: Sat, 05 Dec 2026 12:00:00 GMT",
        b"Server: capgate",
    ]
    closing = whole_answer(response, True, (("Strict-Transport-Security", "max-age=1"),), "D")
    assert b"\r\nStrict-Transport-Security: max-age=1\r\n" in closing
    assert b"\r\nConnection: close\r\n\r\n" in closing


def test_a_header_with_a_line_break_is_never_written() -> None:
    with pytest.raises(ValueError, match="line break"):
        answer_head(200, "OK", {"x-a": "1\r\nSet-Cookie: a=b"}, "", False, (), "D", False)
