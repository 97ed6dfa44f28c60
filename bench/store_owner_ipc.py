#!/usr/bin/env python3
"""What a store-owner process would add to each request: the messages alone.

    .venv/bin/python bench/store_owner_ipc.py [--seconds 3] [--concurrency 1,64]

One design for many workers on one SQLite file (docs/performance.md, "Where the ceiling
is") is a process that owns the file while the HTTP workers send it their reservations
and settlements over a Unix socket. This measures the part that design adds, without the
store: a worker sends a reservation request (a pickled `RequestInfo` and `Amounts`, as the
store's `reserve` takes them) and waits for its answer (a pickled `Reservation` with four
charges); the requests of one loop turn go in one message, as the writer groups them.
uvloop on both sides, as `capgate serve`. Per concurrency: round trips per second, the
mean round trip (what a request would wait for its reservation, on top of the store's
work) and the worker's CPU per round trip (pickling, the socket, the wake-ups).
"""

# ruff: noqa: S301, S603 - unpickles only what this script's own child sent; runs itself

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import uvloop  # noqa: E402

from capgate.core.engine import Amounts, Charge  # noqa: E402
from capgate.core.limits import Metric, Scope, ScopeKind  # noqa: E402
from capgate.store.base import RequestInfo, Reservation  # noqa: E402

LENGTH = struct.Struct("!I")
WORST = Amounts(1, 1000, 2000, 30_000_000)
KEY = Scope(ScopeKind.KEY, "k1", "bench", extra={"team": "bench"})


def reservation_for(request: tuple[RequestInfo, Amounts]) -> Reservation:
    info, worst = request
    charges = tuple(Charge(f"key:k1:{i}", 1_764_547_200, Metric.COST_USD, 1000) for i in range(4))
    return Reservation(info.request_id, info, charges, worst, KEY)


async def owner(path: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                size = LENGTH.unpack(await reader.readexactly(4))[0]
                requests = pickle.loads(await reader.readexactly(size))
            except asyncio.IncompleteReadError:
                return
            out = pickle.dumps([reservation_for(r) for r in requests], protocol=5)
            writer.write(LENGTH.pack(len(out)) + out)

    server = await asyncio.start_unix_server(serve, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def worker(path: str, conc: int, seconds: float) -> str:
    reader, writer = await asyncio.open_unix_connection(path)
    loop = asyncio.get_running_loop()
    turn: list[tuple[tuple[RequestInfo, Amounts], asyncio.Future[Any]]] = []
    sent: list[list[asyncio.Future[Any]]] = []

    def send() -> None:
        nonlocal turn
        batch, turn = turn, []
        body = pickle.dumps([request for request, _ in batch], protocol=5)
        writer.write(LENGTH.pack(len(body)) + body)
        sent.append([future for _, future in batch])

    async def receive() -> None:
        while True:
            size = LENGTH.unpack(await reader.readexactly(4))[0]
            answers = pickle.loads(await reader.readexactly(size))
            for future, answer in zip(sent.pop(0), answers, strict=True):
                future.set_result(answer)

    receiving = asyncio.create_task(receive())
    done, waited = 0, 0.0
    stop = time.monotonic() + seconds
    numbers = iter(range(10**12))

    async def one_at_a_time() -> None:
        nonlocal done, waited
        while time.monotonic() < stop:
            info = RequestInfo(
                f"req_{next(numbers)}", "k1", "gpt-4o-mini", "openai", "gpt-4o-mini", "chat",
                False, time.time(),
            )  # fmt: skip
            future = loop.create_future()
            if not turn:
                loop.call_soon(send)
            turn.append(((info, WORST), future))
            began = time.perf_counter()
            await future
            waited += time.perf_counter() - began
            done += 1

    cpu = time.process_time()
    await asyncio.gather(*(one_at_a_time() for _ in range(conc)))
    cpu = time.process_time() - cpu
    receiving.cancel()
    writer.close()
    return (
        f"c={conc:<3} {done / seconds:9,.0f} round trips/s  mean {waited / done * 1e6:7.0f} µs  "
        f"worker CPU {cpu / done * 1e6:5.1f} µs per round trip"
    )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--owner":
        uvloop.run(owner(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="1,64")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "owner.sock")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--owner", path], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            for conc in (int(c) for c in args.concurrency.split(",")):
                print(uvloop.run(worker(path, conc, args.seconds)), flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
