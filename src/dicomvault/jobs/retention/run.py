"""`dicomvault retention run` and its schedule in `serve`: delete what the rules say has
expired (``retention.due_for_deletion``: past keep-until, no hold) and the IOCM-rejected
instances past ``[iocm] delete_after`` (``rejections.rejected_due``), through the deletion
engine (``delete.py``). Nothing is deleted unless ``[retention] enabled = true``.

The scheduler also retries deletions left pending on a site that was unreachable, whether
retention is enabled or not (those deletions were decided already).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import holds, rejections, retention
from dicomvault.config import parse_duration
from dicomvault.jobs.retention.delete import DeletionError, Progress, delete_instances, delete_study, retry_pending

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = "retention-scheduler"
RETRY_EVERY = 60.0  # seconds between looks for pending site tasks that are due
STARTUP_DELAY = 60.0  # the first retention run (or `schedule`, when shorter) after `serve` starts


def disabled_reason() -> str:
    return ("[retention] enabled = false: nothing is ever deleted unless configured (set enabled = true "
            "in [retention]; `dicomvault retention plan` shows what would go)")


def due(archive: "Archive", now: float) -> tuple[list[Any], list[dict[str, Any]], list[rejections.Rejected]]:
    """(studies due, expired studies a hold keeps, rejected instances due)."""
    with archive.catalog.read() as conn:
        studies = retention.due_for_deletion(conn, now)
        held = [{"study_uid": row.study_uid, "keep_until": row.keep_until, "rule": row.rule,
                 "holds": [{"id": h.id, "reason": h.reason} for h in holds.holds_on_study(conn, row.study_uid)]}
                for row in retention.plan_rows(conn, now)
                if row.held and row.keep_until is not None and row.keep_until < retention.today(now)]
        rejected = rejections.rejected_due(conn, now)
    return studies, held, rejected


def run_retention(archive: "Archive", *, actor: str, progress: Progress | None = None,
                  now: float | None = None) -> dict[str, Any]:
    """Delete every expired, unheld study and every rejected instance due; the report."""
    settings = archive.settings.retention
    if not settings.enabled:
        raise DeletionError(disabled_reason())
    retention.refresh(archive.catalog, settings)  # keep-until dates under the rules in force
    now = time.time() if now is None else now
    studies, held, rejected = due(archive, now)
    deleted: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = [{**entry, "error": "held"} for entry in held]
    for row in studies:
        try:
            record = delete_study(archive, row.study_uid, why="retention", rule=row.rule or retention.DEFAULT_RULE,
                                  reason=f"kept until {row.keep_until} under retention rule {row.rule}",
                                  actor=actor, progress=progress)
        except DeletionError as exc:  # held or gone since the list was made
            skipped.append({"study_uid": row.study_uid, "keep_until": row.keep_until, "rule": row.rule,
                            "error": str(exc)})
            continue
        deleted.append(_summary(record))
    by_code: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for item in rejected:
        by_code[(item.code, item.meaning)].append((item.study_uid, item.series_uid, item.sop_instance_uid))
    rejected_records: list[dict[str, Any]] = []
    for (code, meaning), references in by_code.items():
        records, refused = delete_instances(
            archive, references, why="rejection", rule=code, actor=actor, progress=progress,
            reason=f"rejected by an IOCM rejection note ({meaning or code}); [iocm] delete_after passed")
        rejected_records += [_summary(r) for r in records]
        skipped += [{"study_uid": r["study"], "rule": code, "error": r["error"]} for r in refused]
    retried = retry_pending(archive, actor=actor)
    report = {"as_of": retention.today(now), "deleted": deleted, "rejected": rejected_records, "skipped": skipped,
              "retried_sites": retried,
              "totals": {"studies": len(deleted), "rejection_deletions": len(rejected_records),
                         "instances": sum(r["instances"] for r in deleted + rejected_records),
                         "bytes": sum(r["bytes"] for r in deleted + rejected_records), "skipped": len(skipped)}}
    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action="retention", subject="run", detail={
            "event": "run", **report["totals"], "deletions": [r["id"] for r in deleted + rejected_records]}))
    return report


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("id", "study_uid", "patient_id", "why", "rule", "instances", "versions",
                                         "bytes", "sites")}


class RetentionScheduler:
    """In `serve`: a retention run every ``[retention] schedule`` when enabled, and pending site
    tasks retried when due (every minute)."""

    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self.settings = archive.settings.retention
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.settings.enabled:
            log.info("%s; pending deletions on sites are still retried", disabled_reason())
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        every = parse_duration(self.settings.schedule)
        next_run = time.monotonic() + min(STARTUP_DELAY, every)
        while not self._stop.is_set():
            try:
                if self.settings.enabled and time.monotonic() >= next_run:
                    report = run_retention(self.archive, actor=SCHEDULER_ACTOR)
                    next_run = time.monotonic() + every
                    if report["totals"]["studies"] or report["totals"]["rejection_deletions"]:
                        log.warning("retention run: %s", report["totals"])
                else:
                    retry_pending(self.archive, actor=SCHEDULER_ACTOR)
            except Exception:  # noqa: BLE001 - a deletion pass must never take `serve` down
                log.exception("scheduled retention run failed; trying again later")
                next_run = time.monotonic() + every
            wait = RETRY_EVERY if not self.settings.enabled else max(0.5, min(RETRY_EVERY, next_run - time.monotonic()))
            self._stop.wait(wait)
