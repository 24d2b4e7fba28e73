"""Group commit of catalog rows for stored objects.

By the time a row is queued here its object is already durable on the site as a write
intent, which ``Ingestor.recover`` re-indexes after any crash: that is what promise 1
(acknowledged means durable) rests on. So a sender need not wait for the catalog
transaction, and many instances can share one (SQLite + SQLAlchemy cost ~1 ms per
transaction, nearly the same for 1 row or 200). DIMSE ingest acknowledges as soon as the
object is durable; `import` waits for the row so its report can tell stored from duplicate.

Rows that fail to commit are retried with backoff; their intents stay on the site (the
durability barrier only releases intents of committed objects), so nothing is lost even
if the catalog stays unwritable until the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dicomvault.catalog import InstanceAttributes, VersionRecord

log = logging.getLogger(__name__)

MAX_BATCH = 256
RETRY_DELAYS = (0.1, 0.5, 2.0, 5.0, 15.0, 30.0)


@dataclass
class PendingRow:
    attrs: InstanceAttributes
    record: VersionRecord
    actor: str
    written: bool  # the object was newly written (its intent awaits release)
    future: Future = field(default_factory=Future)
    attempts: int = 0
    next_try: float = 0.0


class CatalogCommitter:
    def __init__(self, commit_batch: Callable[[list[PendingRow]], list[Any]],
                 on_committed: Callable[[PendingRow, Any], None]) -> None:
        self._commit_batch = commit_batch  # one transaction for all rows; returns one result per row
        self._on_committed = on_committed
        self._queue: list[PendingRow] = []
        self._retry: list[PendingRow] = []
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="catalog-commit", daemon=True)
        self._thread.start()

    def submit(self, row: PendingRow) -> Future:
        with self._cond:
            self._queue.append(row)
            self._cond.notify()
        return row.future

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every queued row is committed (or given up for this run)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._retry or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        self.drain(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _take(self) -> list[PendingRow]:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                due = [row for row in self._retry if row.next_try <= now]
                if self._queue or due:
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    for row in due[: MAX_BATCH - len(batch)]:
                        self._retry.remove(row)
                        batch.append(row)
                    self._busy = True
                    return batch
                wait = min((row.next_try for row in self._retry), default=now + 1.0) - now
                self._cond.wait(max(0.01, min(wait, 1.0)))
            return []

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _commit(self, batch: list[PendingRow]) -> None:
        try:
            results = self._commit_batch(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the row(s) at fault: commit one by one
            if len(batch) > 1:
                for row in batch:
                    self._commit([row])
            else:
                self._failed(batch[0], exc)
            return
        for row, result in zip(batch, results):
            try:
                self._on_committed(row, result)
            except Exception:  # noqa: BLE001 - a listener must not undo a commit
                log.exception("after-commit hook failed for %s", row.record.sop_instance_uid)
            if not row.future.done():
                row.future.set_result(result)

    def _failed(self, row: PendingRow, exc: Exception) -> None:
        row.attempts += 1
        if not row.future.done():
            row.future.set_exception(exc)
        if row.attempts > len(RETRY_DELAYS):
            log.error("catalog row for %s still failing after %d attempts (%s); its object stays a write "
                      "intent and is re-indexed at the next start", row.record.sop_instance_uid, row.attempts, exc)
            return
        log.warning("catalog commit for %s failed (%s); retrying", row.record.sop_instance_uid, exc)
        row.next_try = time.monotonic() + RETRY_DELAYS[row.attempts - 1]
        with self._cond:
            self._retry.append(row)
