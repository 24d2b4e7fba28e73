"""The health summary shared by ``dicomvault status --json`` and ``GET /api/status``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dicomvault.archive.copies import CopyPolicy
from dicomvault.audit import verify_chain
from dicomvault.catalog import audit_log, rejections
from dicomvault.archive.core import Archive


def archive_status(archive: Archive, verify_audit: bool = False) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from dicomvault.jobs.verify.scrub import scrub_status

    # The two passes over 10^6-entry indexes (byte totals, scrub proofs) run beside the rest:
    # SQLite releases the GIL while it counts (benchmarks/status_scale.py).
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="status") as pool:
        stats_job, scrub_job = pool.submit(archive.catalog.statistics), pool.submit(scrub_status, archive)
        return _archive_status(archive, verify_audit, stats_job.result, scrub_job.result)


def _archive_status(archive: Archive, verify_audit: bool, statistics: Any, scrubbed: Any) -> dict[str, Any]:
    site = archive.site.health()
    alerts = []
    if not site.get("ok"):
        alerts.append(f"primary site unhealthy: {site.get('error', 'unknown error')}")
    free, total = site.get("free_bytes"), site.get("total_bytes")
    if isinstance(free, int) and isinstance(total, int) and total and free / total < 0.1:
        alerts.append(f"primary site has only {free // 2**30} GiB free ({free / total:.0%})")
    with archive.catalog.read() as conn:
        audit_rows = audit_log.last_row_id(conn)
        audit: dict[str, Any] = {"rows": audit_rows}
        # IOCM: rejected instances (hidden from every answer) and those due for deletion
        rejected: dict[str, Any] = {**rejections.counts(conn, time.time()),
                                    "delete_after": archive.settings.iocm.delete_after}
        if verify_audit:
            report = verify_chain(conn)
            audit.update(chain_ok=report.ok, first_bad_id=report.first_bad_id, reason=report.reason)
            if not report.ok:
                alerts.append(f"audit chain broken at row {report.first_bad_id}: {report.reason}")
    # --- ATNA audit export (audit/forward.py) ---
    from dicomvault.audit.forward import export_status

    audit["export"] = export_status(archive.catalog, archive.settings)
    alerts += audit["export"].pop("alerts")
    # --- end ATNA audit export ---
    sites: dict[str, Any] = {"primary": site}
    live = archive.replication.state() if archive.replication is not None else {}
    from dicomvault.replicate.outbox import Outbox
    from dicomvault.replicate.service import running_sites

    # Which sites a running serve copies to: this process's own service, else the one another
    # process on this host announces; None = no serve running here (or it cannot tell).
    running = list(live) if archive.replication is not None else running_sites(archive.settings)
    outbox = Outbox(archive.catalog)
    for replica in [*archive.settings.replicas, *_added_since_start(archive)]:
        lag = outbox.lag(replica.name)
        entry: dict[str, Any] = {"url": _redacted(replica.url), "offsite": replica.offsite, "rate": replica.rate,
                                 "sees_plaintext": replica.is_pacs,
                                 "schedule": list(replica.schedule), **lag,
                                 "started": None if running is None else replica.name in running}
        if entry["started"] is False:  # added since serve started: nothing copies to it yet
            entry["not_started"] = "added after `dicomvault serve` started: restart serve to start copying"
        if replica.name in live:
            entry.update(live[replica.name])
        if not entry["reachable"]:
            alerts.append(f"site {replica.name} unreachable: {entry.get('site_error') or entry.get('last_error')}")
        if lag["dead_letters"]:
            alerts.append(f"site {replica.name}: {lag['dead_letters']} copies dead-lettered; "
                          f"fix the cause, then `dicomvault sites retry {replica.name}`")
        sites[replica.name] = entry
    # --- storage commitment (ingest/commitment.py) ---
    from dicomvault.ingest.commitment import commitment_status

    commitment = commitment_status(archive.catalog, archive.settings)
    if commitment["undeliverable"]:
        alerts.append(f"storage commitment: {commitment['undeliverable']} report(s) undeliverable, no [peers] entry "
                      f"for AE title(s) {', '.join(commitment['undeliverable_ae_titles'])}")
    # --- end storage commitment ---
    # --- reconcile (jobs/reconcile/job.py) ---
    from dicomvault.jobs.reconcile.runs import reconcile_status

    reconcile = reconcile_status(archive.catalog, archive.settings)
    alerts.extend(reconcile["alerts"])
    # --- end reconcile ---
    # --- scrub: copies proven within the period (jobs/verify/scrub.py) ---
    from dicomvault.archive import quarantine

    scrub = scrubbed()
    scrub["quarantined"] = quarantine.active(archive.catalog)
    alerts += scrub["alerts"] + quarantine.alerts(scrub["quarantined"])
    # --- end scrub ---
    # --- restore drills: the last (successful) drill per site (jobs/drill/runs.py) ---
    from dicomvault.jobs.drill.runs import drill_status

    drills = drill_status(archive.catalog, archive.settings)
    alerts += drills["alerts"]
    # --- end restore drills ---
    # --- restore and network-export jobs (jobs/restore/plan.py) ---
    from dicomvault.jobs.restore.plan import recent_jobs, restore_alerts, status_lock_dir

    restores = recent_jobs(archive.catalog, lock_dir=status_lock_dir(archive.settings))
    alerts += restore_alerts(restores)
    # --- end restore jobs ---
    # --- catalog snapshots and the primary's refill after a rebuild (jobs/rebuild/snapshot.py, jobs/rebuild/refill.py) ---
    from dicomvault.jobs.rebuild.refill import owed_to_primary
    from dicomvault.jobs.rebuild.snapshot import snapshot_status

    snapshots = snapshot_status(archive.catalog, archive.settings)
    alerts += snapshots["alerts"]
    refill_owed = owed_to_primary(archive.catalog)
    if refill_owed:
        sites["primary"]["refill_owed"] = refill_owed
        alerts.append(f"the primary lacks {refill_owed} object(s) (after a rebuild on a new host?): reads use the "
                      "replicas; `dicomvault serve` copies them back")
    # --- end catalog snapshots ---
    # --- who may do what over DICOM (access.py) ---
    from dicomvault.ingest.gate import access_status

    access = access_status(archive.settings, archive.catalog, time.time())
    alerts += access["alerts"]
    # --- end access ---
    from dicomvault.jobs.retention.plan import retention_status

    retention = retention_status(archive.catalog, archive.settings.retention)  # deletes nothing
    from dicomvault.jobs.keys.state import key_state

    keys = key_state(archive)  # key ids and ages; what deletion cannot shred
    from dicomvault.jobs.retention.delete import deletion_status

    deleted = deletion_status(archive.catalog)  # the last 30 days, and site tasks still pending
    if deleted["pending_over_24h"]:
        alerts.append(f"{deleted['pending_over_24h']} deletion(s) pending on a site for over 24 h (site "
                      "unreachable?): `dicomvault deletions` shows which, `dicomvault deletions retry` finishes them")
    from dicomvault.jobs.alerts.engine import alerting_status

    alerting = alerting_status(archive.catalog, archive.settings)  # [alerts] channels; open alerts
    alerts += alerting.pop("alerts")
    policy = CopyPolicy.from_settings(archive.settings)  # what storage commitment holds copies to
    stats = statistics()  # waited for last: it ran beside everything above
    newest = stats["newest_ingest"]
    report = {
        "ok": not alerts,
        "generated_at": time.time(),
        "counts": stats["counts"],
        "bytes_received": stats["bytes_received"],
        "bytes_stored": stats["bytes_stored"],
        "compression_ratio": round(stats["bytes_received"] / stats["bytes_stored"], 3) if stats["bytes_stored"] else None,
        "newest_ingest": newest,
        "newest_ingest_age_seconds": round(time.time() - newest, 1) if newest else None,
        "sites": sites,
        "policy": {"copies": policy.copies, "offsite_copies": policy.offsite_copies,
                   "rpo": archive.settings.policy.rpo},
        "commitment": commitment,
        "reconcile": reconcile,  # jobs/reconcile/job.py
        "restores": restores,
        "scrub": scrub,
        "drills": drills,
        "snapshots": snapshots,
        "audit": audit,
        "access": access,
        "retention": retention,
        "rejections": rejected,
        "deletions": deleted,
        "alerting": alerting,
        "alerts": alerts,
        "catalog": archive.catalog.url.split("://", 1)[0],
        "key_fingerprint": archive.keyring.fingerprint,
        "keys": keys,
    }
    # --- protection state: protected / at risk / unprotected (archive/readiness.py) ---
    from dicomvault.archive.readiness import PROTECTED, assess

    recovery_key = Path(archive.settings.base_dir) / "recovery-key.pem"  # where init writes it
    report["protection"] = assess(report, counted_sites=policy.sites, rpo_seconds=archive.settings.policy.rpo_seconds,
                                  rpo=archive.settings.policy.rpo,
                                  recovery_key_on_host=str(recovery_key) if recovery_key.exists() else None)
    report["ok"] = not alerts and report["protection"]["state"] == PROTECTED
    # --- end protection state ---
    return report


def _added_since_start(archive: Archive) -> list[Any]:
    """Inside serve: sites the configuration file names now that serve did not start with
    (`sites add` while it runs). They are shown, not started, until serve restarts."""
    if archive.replication is None or archive.settings.config_file is None:
        return []
    from dicomvault.config import ConfigError, load_settings

    try:
        current = load_settings(archive.settings.config_file)
    except (ConfigError, OSError):  # edited into an invalid state: serve keeps what it started with
        return []
    started = {replica.name for replica in archive.settings.replicas}
    return [replica for replica in current.replicas if replica.name not in started]


def _redacted(url: str) -> str:
    """Site URLs may carry credentials (user:secret@host); never show them."""
    if "@" in url.split("/", 3)[2] if url.count("/") >= 2 else False:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
