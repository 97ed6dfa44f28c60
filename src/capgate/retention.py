"""Ledger pruning (`server.ledger_retention_days`): each process, at start and then
hourly, folds the ledger entries of whole UTC days older than the retention into daily
sums (store/ledger_daily.py) and deletes them, in batches of 1,000 (one transaction
each). With `server.ledger_archive_dir`, each batch is first appended to a gzip'd JSON
Lines file there (the shape of `GET /admin/requests?format=ndjson`); a batch that cannot
be archived is not deleted. Two processes may archive the same batch (the fold itself
happens once): tell lines apart by `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from capgate.errors import CapgateError
from capgate.http.admin_json import entry_json
from capgate.store.ledger_daily import DAY_S, LedgerPruning, day_start
from capgate.store.records import LedgerEntry

log = logging.getLogger(__name__)

EVERY_S = 3600.0
BATCH = 1000


class LedgerPruner:
    def __init__(
        self,
        store: LedgerPruning,
        days: int,
        archive_dir: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._days = days
        self._archive = Path(archive_dir) if archive_dir else None
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="capgate-ledger-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(EVERY_S)

    async def prune(self) -> int:
        """Fold every entry of the whole days older than the retention; how many."""
        cutoff = day_start(self._clock() - self._days * DAY_S)
        folded = 0
        try:
            while True:
                batch = await self._store.old_entries(cutoff, BATCH)
                if not batch:
                    break
                if self._archive is not None:
                    await asyncio.to_thread(self._write_archive, batch)
                folded += await self._store.fold_entries([e.id for e in batch], cutoff)
                if len(batch) < BATCH:
                    break
                await asyncio.sleep(0.05)  # let requests' writes go between batches
        except (CapgateError, OSError) as exc:
            log.warning("ledger retention: stopped for now (%s)", type(exc).__name__)
        if folded:
            log.info("ledger retention: %d entries older than %d days folded", folded, self._days)
        return folded

    def _write_archive(self, batch: list[LedgerEntry]) -> None:
        assert self._archive is not None
        self._archive.mkdir(parents=True, exist_ok=True, mode=0o700)
        day = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")
        path = self._archive / f"capgate-ledger-{day}-{os.getpid()}.jsonl.gz"
        lines = b"".join(orjson.dumps(entry_json(e)) + b"\n" for e in batch)
        with gzip.open(path, "ab") as out:  # appended members make one valid gzip file
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())
