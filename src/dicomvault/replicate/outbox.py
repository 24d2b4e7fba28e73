"""The replication outbox, on the catalog's ``copies`` table.

Rows are created "owed" by the ingest transaction itself (see ``Catalog.add_copies``), so
there is no window in which an acknowledged object exists without a pending copy. Workers
only ever move a row forward once the copy is *verified*; a crash between upload and
``mark_verified`` leaves the row owed and the next attempt finds the object already there
(put-if-absent) and verifies it. Nothing is counted as copied that was not checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text, update

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t

_DUE = (
    select(t.copies.c.object_id, t.copies.c.size, t.copies.c.attempts, t.copies.c.owed_since)
    .where(
        t.copies.c.site == bindparam("site"), t.copies.c.state == "owed",
        t.copies.c.next_attempt_at <= bindparam("now"),
    )
    .order_by(t.copies.c.next_attempt_at, t.copies.c.id)
    .limit(bindparam("limit"))
)
_VERIFIED = (
    update(t.copies)
    .where(t.copies.c.site == bindparam("b_site"), t.copies.c.object_id == bindparam("b_object_id"))
    .values(state="verified", attempts=t.copies.c.attempts + 1, last_error=None,
            copied_at=bindparam("b_now"), verified_at=bindparam("b_now"))
)
_FAILED = (
    update(t.copies)
    .where(t.copies.c.site == bindparam("b_site"), t.copies.c.object_id == bindparam("b_object_id"))
    .values(state=bindparam("b_state"), attempts=bindparam("b_attempts"), last_error=bindparam("b_error"),
            next_attempt_at=bindparam("b_next"))
)


@dataclass(frozen=True)
class CopyTask:
    object_id: str
    size: int
    attempts: int
    owed_since: float = 0.0


class Outbox:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def due(self, site: str, limit: int, now: float | None = None) -> list[CopyTask]:
        """Copies owed to ``site`` whose next attempt is due, oldest first."""
        params = {"site": site, "now": time.time() if now is None else now, "limit": limit}
        with self.catalog.read() as conn:
            return [CopyTask(r.object_id, int(r.size), int(r.attempts), float(r.owed_since)) for r in conn.execute(_DUE, params)]

    def mark_verified(self, site: str, object_ids: list[str], actor: str) -> None:
        """Record verified copies (one audit row per batch, listing the objects)."""
        if not object_ids:
            return
        now = time.time()
        with self.catalog.write() as conn:
            conn.execute(_VERIFIED, [{"b_site": site, "b_object_id": oid, "b_now": now} for oid in object_ids])
            append(conn, AuditEvent(actor=actor, action="replicate", subject=site, outcome="success",
                                    detail={"objects": object_ids}))

    def mark_failed(self, site: str, task: CopyTask, error: str, next_attempt_at: float, dead: bool,
                    count_attempt: bool, actor: str) -> None:
        """Record a failed attempt; a dead-lettered copy is audited (and alerted by the caller)."""
        attempts = task.attempts + (1 if count_attempt else 0)
        with self.catalog.write() as conn:
            conn.execute(_FAILED, {"b_site": site, "b_object_id": task.object_id, "b_state": "dead" if dead else "owed",
                                   "b_attempts": attempts, "b_error": error[:1000], "b_next": next_attempt_at})
            if dead:
                append(conn, AuditEvent(actor=actor, action="replicate", subject=site, outcome="dead",
                                        detail={"object": task.object_id, "attempts": attempts, "error": error[:500]}))

    def retry_dead(self, site: str) -> int:
        """Re-owe every dead-lettered copy of ``site`` (after the cause was fixed)."""
        with self.catalog.write() as conn:
            result = conn.execute(
                update(t.copies).where(t.copies.c.site == site, t.copies.c.state == "dead")
                .values(state="owed", attempts=0, next_attempt_at=0.0)
            )
            count = int(result.rowcount or 0)
            append(conn, AuditEvent(actor="dicomvault:cli", action="replicate-retry", subject=site,
                                    detail={"copies": count}))
            return count

    def reschedule_now(self, site: str) -> None:
        """A site came back: everything it is owed is due at once, not at its backed-off time."""
        with self.catalog.write() as conn:
            conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.state == "owed")
                         .values(next_attempt_at=0.0))

    def set_site_state(self, site: str, reachable: bool, error: str | None) -> None:
        """Persist a reachability transition (audited: an outage is a security-relevant event)."""
        now = time.time()
        with self.catalog.write() as conn:
            conn.execute(delete(t.site_state).where(t.site_state.c.site == site))
            conn.execute(insert(t.site_state).values(site=site, reachable=int(reachable), last_error=error, changed_at=now))
            append(conn, AuditEvent(actor=f"dicomvault:replicate:{site}", action="site-state", subject=site,
                                    outcome="reachable" if reachable else "unreachable",
                                    detail={"error": error} if error else {}))

    def site_state(self, site: str) -> dict[str, Any]:
        with self.catalog.read() as conn:
            row = conn.execute(select(t.site_state).where(t.site_state.c.site == site)).first()
        if row is None:
            return {"reachable": True, "unreachable_since": None, "site_error": None}
        return {"reachable": bool(row.reachable), "unreachable_since": None if row.reachable else row.changed_at,
                "site_error": row.last_error}

    def lag(self, site: str, window: float = 60.0) -> dict[str, Any]:
        """Backlog, live RPO (age of the oldest owed copy), recent throughput and errors."""
        now = time.time()
        with self.catalog.read() as conn:
            owed = conn.execute(
                select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0), func.min(t.copies.c.owed_since))
                .where(t.copies.c.site == site, t.copies.c.state == "owed")
            ).one()
            verified = conn.execute(
                select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0), func.max(t.copies.c.verified_at))
                .where(t.copies.c.site == site, t.copies.c.state == "verified")
            ).one()
            recent = conn.execute(
                select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0))
                .where(t.copies.c.site == site, t.copies.c.state == "verified",
                       t.copies.c.verified_at >= now - window)
            ).one()
            dead = conn.execute(
                select(func.count()).where(t.copies.c.site == site, t.copies.c.state == "dead")
            ).scalar_one()
            failing = conn.execute(
                select(func.count()).where(t.copies.c.site == site, t.copies.c.state == "owed",
                                           t.copies.c.last_error.is_not(None))
            ).scalar_one()
            last_error = conn.execute(text(
                "SELECT last_error FROM copies WHERE site = :site AND last_error IS NOT NULL"
                " ORDER BY next_attempt_at DESC LIMIT 1"
            ), {"site": site}).scalar()
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
            "dead_letters": int(dead),
            "failing_copies": int(failing),
            "last_error": last_error,
        }
