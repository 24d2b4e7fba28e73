"""Where the dashboard's figures come from besides ``archive_status()``.

The protection state (``status["protection"]``), alerts with acknowledgement, capacity,
ingest history and the RTO estimate come from the modules that own them; each function below
returns exactly what that module's API endpoint answers, so the page and the API agree.
"""

from __future__ import annotations

import time
from typing import Any

from dicomvault.archive.core import Archive
from dicomvault.catalog import alerts as alert_rows
from dicomvault.jobs import capacity as capacity_jobs
from dicomvault.jobs.alerts import engine as alert_engine

RANGES = ("24h", "30d")  # the ingest charts


def protection(status: dict[str, Any]) -> dict[str, Any]:
    """``status["protection"]`` (contract: state and reasons); FALLBACK from ``ok``/``alerts``."""
    if isinstance(status.get("protection"), dict):
        return status["protection"]
    reasons = [{"code": "alert", "severity": "at risk", "text": text} for text in status.get("alerts", [])]
    return {"state": "protected" if status.get("ok") else "at risk", "reasons": reasons}


def alerts(archive: Archive, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Open alerts as ``GET /api/alerts`` lists them (jobs/alerts/engine.py), each with its id
    for the acknowledge button. With ``[alerts] enabled = false`` no engine raises any: the
    status lines are shown instead, without ids (so without a button)."""
    if archive.settings.alerts.enabled:
        return [alert_engine.public(alert) for alert in alert_rows.list_alerts(archive.catalog)]
    now = time.time()
    return [{"id": None, "key": text, "severity": "at risk", "text": text, "raised_at": now, "last_sent_at": None,
             "acknowledged_by": None, "acknowledged_at": None, "resolved_at": None}
            for text in status.get("alerts", [])]


NotAvailable = alert_engine.AlertError  # an alert that cannot be acknowledged (unknown, resolved)


def acknowledge(archive: Archive, alert_id: int, actor: str) -> dict[str, Any]:
    """``POST /api/alerts/{id}/ack``'s work (audited ``alert-ack``): no more reminders."""
    return alert_engine.public(alert_engine.acknowledge(archive.catalog, alert_id, actor))


def ingest_history(archive: Archive, range_: str, now: float | None = None) -> dict[str, Any]:
    """``GET /api/ingest-history?range=`` (jobs/capacity.py)."""
    return capacity_jobs.ingest_history(archive.catalog, range_, now)


def capacity(archive: Archive, now: float | None = None) -> dict[str, Any]:
    """``GET /api/capacity``: bytes per modality, growth, per-site space and forecast (jobs/capacity.py)."""
    return capacity_jobs.capacity_report(archive.catalog, archive.settings, now)


def rto(archive: Archive, now: float | None = None) -> dict[str, Any]:
    """``GET /api/rto``: the last 24 h and how long restoring it would take (jobs/capacity.py)."""
    return capacity_jobs.rto_estimate(archive.catalog, now)
