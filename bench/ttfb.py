#!/usr/bin/env python3
"""Time to first byte of streamed answers, one request at a time on one keep-alive socket.

For each request it records, from just before the request is sent:
  first_byte   the first byte of the HTTP answer (status line),
  first_event  the first SSE `data:` line of the body (what a user sees as the first token),
  total        the end of the answer (the chunked body's last chunk).
Plain blocking sockets and a small HTTP/1.1 parser: no client library in the timings.

    python bench/ttfb.py --url http://127.0.0.1:4000/v1/messages --body-file B.json \
        --key sk-... --requests 300          # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit


class Answer:
    __slots__ = ("first_byte", "first_event", "status", "total")

    def __init__(self) -> None:
        self.status = 0
        self.first_byte = self.first_event = self.total = 0.0


def _request_bytes(host: str, port: int, path: str, body: bytes, key: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines += [f"x-api-key: {key}", f"Authorization: Bearer {key}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def one(sock: socket.socket, request: bytes) -> Answer:
    """Send one request and read its whole answer (no pipelining: nothing else is due)."""
    ans = Answer()
    buf = bytearray()
    t0 = time.perf_counter()
    sock.sendall(request)
    head_end = -1
    length = -1  # Content-Length, or -1 for chunked
    pos = 0  # chunked: where the next chunk-size line starts
    while True:
        data = sock.recv(262144)
        now = time.perf_counter()
        if not data:
            raise ConnectionError("the server closed the connection")
        if not ans.first_byte:
            ans.first_byte = now - t0
        buf += data
        if head_end < 0:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(buf[:head_end]).lower()
            ans.status = int(head[9:12])
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            pos = head_end + 4
        if not ans.first_event and buf.find(b"data:", head_end) >= 0:
            ans.first_event = now - t0
        if length >= 0:
            if len(buf) >= head_end + 4 + length:
                break
            continue
        finished = False
        while True:  # walk the complete chunks
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                finished = len(buf) >= eol + 4
                break
            if len(buf) < eol + 2 + size + 2:
                break
            pos = eol + 2 + size + 2
        if finished:
            break
    ans.total = time.perf_counter() - t0
    if not ans.first_event:
        ans.first_event = ans.total
    return ans


def measure(url: str, body: bytes, key: str | None, requests: int, warmup: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request_bytes(host, port, parts.path or "/", body, key)
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answers = []
    bad = sent = 0
    deadline = time.monotonic() + 120  # bounded whatever happens
    try:
        for i in range(warmup + requests):
            if time.monotonic() > deadline:
                break
            sent += 1
            ans = one(sock, request)
            if ans.status != 200:
                bad += 1
            if i >= warmup:
                answers.append(ans)
    finally:
        sock.close()

    def ms(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)

    out: dict = {"url": url, "requests": len(answers), "sent": sent, "non_200": bad}
    for name in ("first_byte", "first_event", "total"):
        values = [getattr(a, name) for a in answers]
        out[name + "_ms"] = {
            "p50": round(statistics.median(values) * 1000, 3),
            "p90": ms(values, 0.9),
            "p99": ms(values, 0.99),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="time to first byte of streamed answers")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", help="request body (JSON text)")
    parser.add_argument("--body-file")
    parser.add_argument("--key")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    elif args.body:
        body = args.body.encode()
    else:
        sys.exit("ttfb: give --body or --body-file")
    print(json.dumps(measure(args.url, body, args.key, args.requests, args.warmup)))


if __name__ == "__main__":
    main()
