"""`dicomvault retention plan`: what expires when under the ``[retention]`` rules, as a
report that deletes nothing (it brings the stored keep-until dates up to date first, which
is the catalog's cache of the rules, not data).

The report: the rules in force, per year (and per month for the coming 12 months) how many
studies and stored bytes reach their keep-until day, the studies due now (expired and not
held) with the rule that decided each, expired studies kept by a legal hold, and how many
studies are kept forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import holds, retention

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog
    from dicomvault.config import RetentionSettings

log = logging.getLogger(__name__)
DUE_LISTED = 1000  # the report lists at most this many due studies (the counts are complete)


def _audit(catalog: "Catalog", actor: str, event: str, settings: "RetentionSettings", **detail: Any) -> None:
    """One ``retention`` audit row: a plan read (it lists patients' studies) or a recompute."""
    with catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action="retention", subject=event, detail={
            "event": event, "rules_hash": settings.fingerprint(), "rules": [r.name for r in settings.rules],
            "default": settings.default, **detail}))


def plan(catalog: "Catalog", settings: "RetentionSettings", now: float | None = None,
         actor: str = "dicomvault:retention") -> dict[str, Any]:
    now = time.time() if now is None else now
    recomputed = retention.refresh(catalog, settings)
    today = retention.today(now)
    this_month = today[:7]
    horizon = f"{int(today[:4]) + 1}-{today[5:7]}"  # months listed: this one and the next 11
    by_year: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_month: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_rule: dict[str, int] = defaultdict(int)
    forever = [0, 0]
    due: list[dict[str, Any]] = []
    due_count, due_bytes = 0, 0
    held_expired: list[dict[str, Any]] = []
    with catalog.read() as conn:
        rows = retention.plan_rows(conn, now)
        for row in rows:
            size = int(row.bytes)
            by_rule[row.rule or retention.DEFAULT_RULE] += 1
            if row.keep_until is None:
                forever[0] += 1
                forever[1] += size
                continue
            expired = row.keep_until < today
            entry = {"study_uid": row.study_uid, "patient_id": row.patient_id, "study_date": row.study_date,
                     "keep_until": row.keep_until, "rule": row.rule, "bytes": size}
            if expired and row.held:
                entry["holds"] = [{"id": h.id, "reason": h.reason} for h in holds.holds_on_study(conn, row.study_uid)]
                held_expired.append(entry)
                continue
            if expired:
                due_count += 1
                due_bytes += size
                if len(due) < DUE_LISTED:
                    due.append(entry)
                continue
            by_year[row.keep_until[:4]][0] += 1
            by_year[row.keep_until[:4]][1] += size
            if row.keep_until[:7] < horizon:
                by_month[row.keep_until[:7]][0] += 1
                by_month[row.keep_until[:7]][1] += size
    _audit(catalog, actor, "plan", settings, studies=len(rows), due=due_count, held=len(held_expired),
           recomputed=recomputed)
    return {
        "as_of": today,
        "enabled": settings.enabled,
        "schedule": settings.schedule,
        "rules_hash": settings.fingerprint(),
        "rules": [rule.describe() for rule in settings.rules],
        "default": settings.default,
        "recomputed": recomputed,
        "studies": len(rows),
        "by_rule": dict(sorted(by_rule.items())),
        "forever": {"studies": forever[0], "bytes": forever[1]},
        "due_now": {"studies": due_count, "bytes": due_bytes, "listed": len(due)},
        "due": due,
        "held": held_expired,
        "by_month": [{"month": m, "studies": v[0], "bytes": v[1]} for m, v in sorted(by_month.items())
                     if m >= this_month],
        "by_year": [{"year": y, "studies": v[0], "bytes": v[1]} for y, v in sorted(by_year.items())],
        "deletion": "not performed: this report changes nothing; `dicomvault retention run` deletes what is due",
    }


def retention_status(catalog: "Catalog", settings: "RetentionSettings", now: float | None = None) -> dict[str, Any]:
    """For `status`: the rules in force, studies due, holds in force (no recomputation)."""
    now = time.time() if now is None else now
    with catalog.read() as conn:
        counts = retention.counts(conn, now, settings.fingerprint())
        active = holds.count_active(conn)
    return {"enabled": settings.enabled, "rules": [rule.name for rule in settings.rules],
            "default": settings.default, "due": counts["due"], "expired_held": counts["expired_held"],
            "stale": counts["stale"], "holds_active": active}


def refresh_in_background(catalog: "Catalog", settings: "RetentionSettings") -> threading.Thread:
    """At `serve` start: bring every study's keep-until up to date with the rules in force
    (all of them after a rule change), without holding up the listeners."""
    def run() -> None:
        try:
            count = retention.refresh(catalog, settings)
        except Exception:  # noqa: BLE001 - the next start or `retention plan` tries again
            log.exception("[retention] recomputing keep-until dates failed")
            return
        if count:
            log.info("[retention] keep-until dates computed for %d stud(ies) under the rules in force", count)
            _audit(catalog, "dicomvault:serve", "recompute", settings, studies=count)

    thread = threading.Thread(target=run, name="retention-refresh", daemon=True)
    thread.start()
    return thread
