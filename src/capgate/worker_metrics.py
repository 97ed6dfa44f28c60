"""`serve --workers N`: every worker's request metrics, whichever worker is scraped.

A scrape of the shared port reaches one worker, at the kernel's choice: each worker's own
counters alone would jump from one worker's totals to another's between scrapes. So each
worker writes its counters (`capgate.metrics.Metrics`) to its own file in a directory the
parent made, every `PUBLISH_S` seconds and when it stops, and a scrape answers its own
counters, fresh, and the other workers' latest files, each series labelled with the `pid`
of the worker that counted it. `sum without (pid) (rate(capgate_requests_total[5m]))` is
then the rate of the whole server, and a worker that is restarted is a new `pid` whose
counters start at 0 (the old one's file stays for `STALE_S`, then is dropped).

The store-backed gauges (`capgate_limit_*`, `capgate_ledger_*`, reservations) need none of
this: every worker reads the same database. The circuit-breaker gauges stay per worker.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

PUBLISH_S = 2.0
STALE_S = 600.0  # a file not written for this long belongs to a worker that has ended


class WorkerMetrics(Collector):
    """This worker's request metrics (`own`) and the other workers', labelled by pid."""

    def __init__(
        self,
        own: Collector,
        directory: Path,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own = own
        self._directory = directory
        self._pid = str(pid or os.getpid())
        self._clock = clock

    def publish(self) -> None:
        """Write this worker's counters, whole (another worker never reads half a file)."""
        families = [
            [family.name, family.type, family.documentation,
             [[s.name, s.labels, s.value] for s in family.samples]]
            for family in self._own.collect()
        ]  # fmt: skip
        path = self._directory / f"{self._pid}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):  # the parent removed the directory: it is ending
            tmp.write_bytes(orjson.dumps(families))
            os.replace(tmp, path)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for family in self._own.collect():
            for sample in family.samples:
                _into(merged, family.name, family.type, family.documentation).add_sample(
                    sample.name, {**sample.labels, "pid": self._pid}, sample.value
                )
        for pid, families in self._others():
            for name, kind, doc, samples in families:
                into = _into(merged, name, kind, doc)
                for sample, labels, value in samples:
                    into.add_sample(sample, {**labels, "pid": pid}, value)
        yield from merged.values()

    def _others(self) -> Iterator[tuple[str, list[Any]]]:
        now = self._clock()
        for path in self._directory.glob("*.json"):
            pid = path.stem
            if pid == self._pid:
                continue
            try:
                if now - path.stat().st_mtime > STALE_S:
                    path.unlink()
                    continue
                families = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # gone meanwhile
            if isinstance(families, list):
                yield pid, families


def _into(merged: dict[str, Metric], name: str, kind: str, doc: str) -> Metric:
    family = merged.get(name)
    if family is None:
        family = merged[name] = Metric(name, doc, kind)
    return family


def remove(directory: Path) -> None:
    """The parent's cleanup at exit."""
    for path in directory.glob("*"):
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
