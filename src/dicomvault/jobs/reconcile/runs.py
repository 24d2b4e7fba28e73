"""The ``reconcile_runs`` table: recording each reconcile run, auditing it, and reading the
runs back for ``dicomvault status`` (:func:`reconcile_status`) and its alerts.

Kept apart from the run itself (``reconcile``) because ``status`` and the schedule read the
runs without running anything: everything that touches ``reconcile_runs`` is here.

Persistence and audit
---------------------
Each run is a ``reconcile_runs`` row: inserted as ``running`` (:func:`start_run`), finished as
``completed`` (the comparison ran; ``error`` holds a backfill failure if any) or ``failed``
(could not run: PACS unreachable, association rejected, a query refused, interrupted) by
:func:`finish_run`, or marked failed from outside by :func:`abandon_run` when it does not
stop in time. The summary counts are columns (``missing_in_vault`` is what the vault still
lacks after any backfill), the report is JSON (each list capped at ``REPORT_LIST_LIMIT``
entries; the CLI's ``--json`` has them all). Every run is audited (action ``reconcile``,
subject the peer) in the transaction that finishes its row.

Status
------
``reconcile_status`` gives the latest run per peer for ``dicomvault status`` and alerts when
the vault lacks something, when the latest run failed, or when the schedule has stopped
running. Studies only in the vault are not an alert.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog, reconciles
from dicomvault.config import Settings, find_peer
from dicomvault.jobs.reconcile.report import COMPLETED, FAILED, RUNNING, ReconcileReport, dicom_date

REPORT_LIST_LIMIT = 1000  # entries per list in the persisted report (the CLI's --json has all)
SCHEDULER_ACTOR = "dicomvault:reconcile-scheduler"


# --- recording a run ----------------------------------------------------------------------


def start_run(catalog: Catalog, report: ReconcileReport) -> None:
    """Insert the run's row as ``running`` and set ``report.run_id``."""
    r = report
    r.run_id = reconciles.add_run(catalog, peer=r.peer, date_from=r.date_from, date_to=r.date_to,
                                  backfill=r.backfill_requested, state=RUNNING, actor=r.actor,
                                  started_at=r.started_at)


def finish_run(catalog: Catalog, report: ReconcileReport) -> None:
    """Stamp ``finished_at``, store the outcome, counts and report in the run's row, and audit it."""
    r = report
    r.finished_at = time.time()
    report_json = json.dumps(r.to_dict(REPORT_LIST_LIMIT), separators=(",", ":"), default=str)
    detail = {
        "run_id": r.run_id, "peer_ae_title": r.peer_ae_title, "peer_address": r.peer_address,
        "date_from": r.date_from, "date_to": r.date_to, "chunk_days": r.chunk_days, "chunks": r.chunks,
        "backfill": r.backfill_requested, "state": r.state, **r.totals(),
        "duration_seconds": r.duration_seconds,
    }
    if r.error:
        detail["error"] = r.error
    with catalog.write() as conn:
        reconciles.record_outcome(
            conn, r.run_id, state=r.state, finished_at=r.finished_at, pacs_studies=r.pacs_studies,
            vault_studies=r.vault_studies, missing_in_vault=r.missing_in_vault, missing_in_pacs=r.missing_in_pacs,
            backfilled_instances=r.backfilled_instances, report=report_json, error=r.error)
        append(conn, AuditEvent(actor=r.actor or "dicomvault", action="reconcile", subject=r.peer,
                                outcome="success" if r.state == COMPLETED and not r.error else "failure",
                                detail=detail))


def abandon_run(catalog: Catalog, report: ReconcileReport, reason: str) -> None:
    """Record a run that does not stop in time as failed (and audit it), unless its row is no
    longer ``running``; if the run finishes after all, :func:`finish_run` overwrites this."""
    r = report
    if r.run_id is None or r.state != RUNNING:
        return
    with catalog.write() as conn:
        if reconciles.fail_if_still(conn, r.run_id, RUNNING, FAILED, time.time(), reason):
            append(conn, AuditEvent(actor=r.actor or "dicomvault", action="reconcile", subject=r.peer,
                                    outcome="failure", detail={"run_id": r.run_id, "date_from": r.date_from,
                                                               "date_to": r.date_to, "error": reason}))


def last_scheduled_run(catalog: Catalog, peer: str) -> float | None:
    """When the schedule last started a run with ``peer`` (a peer name), or None."""
    return reconciles.last_started_by(catalog, SCHEDULER_ACTOR, peer)


# --- status -------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _run_summary(row: Any, now: float) -> dict[str, Any]:
    try:
        totals = json.loads(row.report or "{}").get("totals") or {}
    except (ValueError, AttributeError):
        totals = {}
    when = row.finished_at or row.started_at
    return {
        "run_id": row.id, "state": row.state, "actor": row.actor, "started_at": row.started_at,
        "finished_at": row.finished_at, "age_seconds": round(now - when, 1), "date_from": row.date_from,
        "date_to": row.date_to, "backfill": bool(row.backfill), "pacs_studies": row.pacs_studies,
        "vault_studies": row.vault_studies, "missing_in_vault": row.missing_in_vault,
        "missing_instances": totals.get("missing_instances"), "missing_in_pacs": row.missing_in_pacs,
        "backfilled_instances": row.backfilled_instances, "error": row.error,
    }


def _span(run: dict[str, Any]) -> str:
    return run["date_from"] if run["date_from"] == run["date_to"] else f"{run['date_from']}-{run['date_to']}"


def reconcile_status(catalog: Catalog, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The latest finished reconcile run per peer for ``status`` (a run in progress is shown
    under ``running``; when the latest finished run failed, the last completed one is under
    ``last_completed``), the schedule, and alert lines.

    Alerts: the vault lacks studies (or parts of studies) the PACS has, as the last completed
    run found them, with the command that backfills them; the latest run failed (PACS
    unreachable, association rejected, backfill failed, interrupted...); the ``[reconcile]``
    schedule's last run is more than two periods old (is ``dicomvault serve`` running?).
    Studies only in the vault are reported (``missing_in_pacs``) but never alerted: the PACS
    may have purged them on purpose, and keeping them is the vault's job.
    """
    now = time.time() if now is None else now
    cfg = settings.reconcile
    with catalog.read() as conn:
        finished = reconciles.latest_run_per_peer(conn, not_state=RUNNING)
        completed = reconciles.latest_run_per_peer(conn, state=COMPLETED)
        running = reconciles.latest_run_per_peer(conn, state=RUNNING)
        scheduled_last = None
        if cfg.peer:
            configured = find_peer(settings.peers, cfg.peer)
            peer_names = {configured.name} if configured is not None else {cfg.peer}
            scheduled_last = reconciles.last_started_by_any(conn, SCHEDULER_ACTOR, sorted(peer_names))
    peers: dict[str, Any] = {}
    alerts: list[str] = []
    today = dicom_date(_dt.date.today())
    for peer in sorted(set(finished) | set(running)):
        row, done, live = finished.get(peer), completed.get(peer), running.get(peer)
        entry: dict[str, Any] = _run_summary(row, now) if row is not None else {"run_id": None, "state": RUNNING}
        entry["running"] = None
        if live is not None and (row is None or live.id > row.id):
            entry["running"] = {"run_id": live.id, "actor": live.actor, "started_at": live.started_at,
                                "age_seconds": round(now - live.started_at, 1), "date_from": live.date_from,
                                "date_to": live.date_to, "backfill": bool(live.backfill)}
        last_ok = _run_summary(done, now) if done is not None else None
        if row is not None and last_ok is not None and done.id != row.id:
            entry["last_completed"] = last_ok
        peers[peer] = entry
        if row is not None and row.error:
            alerts.append(f"reconcile with PACS {peer} ({_span(entry)}) failed {_ago(entry['age_seconds'])} ago: "
                          f"{row.error}")
        if last_ok is not None and last_ok["missing_in_vault"]:
            instances = last_ok["missing_instances"]
            what = f"{instances} instances" if isinstance(instances, int) else "instance count unknown"
            until = "" if last_ok["date_to"] >= today else f" --until {last_ok['date_to']}"
            alerts.append(
                f"PACS {peer} has {_plural(last_ok['missing_in_vault'], 'study', 'studies')} ({what}) from "
                f"{_span(last_ok)} not in the vault (reconciled {_ago(last_ok['age_seconds'])} ago); run "
                f"`dicomvault reconcile --pacs {peer} --since {last_ok['date_from']}{until} --backfill`")
    schedule = None
    if cfg.peer:
        period = cfg.period_seconds
        schedule = {"peer": cfg.peer, "every": cfg.every, "period_seconds": period, "window_days": cfg.window_days,
                    "backfill": cfg.backfill, "last_run_at": scheduled_last}
        if scheduled_last is not None and now - scheduled_last > 2 * period + 300:
            alerts.append(f"scheduled reconcile with PACS {cfg.peer} (every {cfg.every}) last ran "
                          f"{_ago(now - scheduled_last)} ago: is `dicomvault serve` running?")
    return {"peers": peers, "schedule": schedule, "alerts": alerts}
