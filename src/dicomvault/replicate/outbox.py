"""The replication outbox, on the catalog's ``copies`` table.

Rows are created "owed" by the ingest transaction itself (see ``Catalog.add_copies``), so
there is no window in which an acknowledged object exists without a pending copy. Workers
only ever move a row forward once the copy is *verified*; a crash between upload and
``mark_verified`` leaves the row owed and the next attempt finds the object already there
(put-if-absent) and verifies it. Nothing is counted as copied that was not checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog
from dicomvault.catalog import outbox as q

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyTask:
    object_id: str
    size: int
    attempts: int
    owed_since: float = 0.0


class Outbox:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # Called after a batch of verified copies commits: the copy policy may now hold for
        # those objects, so whoever waits on it (storage commitment) looks again at once.
        self.on_verified: list[Callable[[], None]] = []

    def due(self, site: str, limit: int, now: float | None = None) -> list[CopyTask]:
        """Copies owed to ``site`` whose next attempt is due, oldest first."""
        now = time.time() if now is None else now
        with self.catalog.read() as conn:
            return [CopyTask(r.object_id, int(r.size), int(r.attempts), float(r.owed_since))
                    for r in q.due_copies(conn, site, now, limit)]

    def mark_verified(self, site: str, object_ids: list[str], actor: str) -> None:
        """Record verified copies (one audit row per batch, listing the objects), then tell
        the ``on_verified`` listeners."""
        if not object_ids:
            return
        now = time.time()
        with self.catalog.write() as conn:
            q.mark_copies_verified(conn, site, object_ids, now)
            append(conn, AuditEvent(actor=actor, action="replicate", subject=site, outcome="success",
                                    detail={"objects": object_ids}))
        for listener in self.on_verified:
            try:
                listener()
            except Exception:  # noqa: BLE001 - the copies are recorded; a listener must not undo that
                log.exception("a listener for verified copies failed")

    def mark_failed(self, site: str, task: CopyTask, error: str, next_attempt_at: float, dead: bool,
                    count_attempt: bool, actor: str) -> None:
        """Record a failed attempt; a dead-lettered copy is audited (and alerted by the caller)."""
        attempts = task.attempts + (1 if count_attempt else 0)
        with self.catalog.write() as conn:
            q.record_copy_failure(conn, site, task.object_id, dead=dead, attempts=attempts, error=error[:1000],
                                  next_attempt_at=next_attempt_at)
            if dead:
                append(conn, AuditEvent(actor=actor, action="replicate", subject=site, outcome="dead",
                                        detail={"object": task.object_id, "attempts": attempts, "error": error[:500]}))

    def retry_dead(self, site: str) -> int:
        """Re-owe every dead-lettered copy of ``site`` (after the cause was fixed)."""
        with self.catalog.write() as conn:
            count = q.reowe_dead_copies(conn, site)
            append(conn, AuditEvent(actor="dicomvault:cli", action="replicate-retry", subject=site,
                                    detail={"copies": count}))
            return count

    def reschedule_now(self, site: str) -> None:
        """A site came back: everything it is owed is due at once, not at its backed-off time."""
        with self.catalog.write() as conn:
            q.make_owed_copies_due(conn, site)

    def set_site_state(self, site: str, reachable: bool, error: str | None) -> None:
        """Persist a reachability transition (audited: an outage is a security-relevant event)."""
        now = time.time()
        with self.catalog.write() as conn:
            q.set_site_state(conn, site, reachable, error, now)
            append(conn, AuditEvent(actor=f"dicomvault:replicate:{site}", action="site-state", subject=site,
                                    outcome="reachable" if reachable else "unreachable",
                                    detail={"error": error} if error else {}))

    def site_state(self, site: str) -> dict[str, Any]:
        with self.catalog.read() as conn:
            row = q.site_state_row(conn, site)
        if row is None:
            return {"reachable": True, "unreachable_since": None, "site_error": None}
        return {"reachable": bool(row.reachable), "unreachable_since": None if row.reachable else row.changed_at,
                "site_error": row.last_error}

    def lag(self, site: str, window: float = 60.0) -> dict[str, Any]:
        """Backlog, live RPO (age of the oldest owed copy), recent throughput and errors."""
        now = time.time()
        with self.catalog.read() as conn:
            lag = q.copy_lag(conn, site, now, window)
        owed, verified, recent = lag["owed"], lag["verified"], lag["recent"]
        return {
            **self.site_state(site),
            "backlog_objects": int(owed[0]),
            "backlog_bytes": int(owed[1]),
            "oldest_owed_age_seconds": round(now - owed[2], 3) if owed[2] is not None else 0.0,
            "verified_objects": int(verified[0]),
            "verified_bytes": int(verified[1]),
            "last_verified_at": verified[2],
            "throughput_bytes_per_second": round(int(recent[1]) / window, 1),
            "throughput_objects_per_second": round(int(recent[0]) / window, 3),
            "dead_letters": int(lag["dead"]),
            "failing_copies": int(lag["failing"]),
            "last_error": lag["last_error"],
        }
