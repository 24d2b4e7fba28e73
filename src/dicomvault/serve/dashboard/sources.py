"""Where the dashboard's figures come from besides ``archive_status()``.

INTEGRATION POINT (issue 20): the protection state (helper "readiness"), alerts with
acknowledgement (helper "alerts"), capacity, ingest history and the RTO estimate (helper
"capacity") are built in parallel. Each function below returns exactly the JSON shape of that
helper's contract, computed here in a simple way until its code is merged; at merge, replace the
body with a call to the helper's function and delete the fallback. Nothing else in the dashboard
computes these figures.
"""

from __future__ import annotations

import time
from typing import Any

from dicomvault.archive.core import Archive
from dicomvault.catalog import dashboard as q

RANGES = {"24h": (24 * 3600, 3600), "30d": (30 * 86400, 86400)}  # range: (span, bucket) in seconds


def protection(status: dict[str, Any]) -> dict[str, Any]:
    """``status["protection"]`` (contract: state and reasons); FALLBACK from ``ok``/``alerts``."""
    if isinstance(status.get("protection"), dict):
        return status["protection"]
    reasons = [{"code": "alert", "severity": "at risk", "text": text} for text in status.get("alerts", [])]
    return {"state": "protected" if status.get("ok") else "at risk", "reasons": reasons}


def alerts(archive: Archive, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Open alerts in the ``GET /api/alerts`` shape; FALLBACK: ``status["alerts"]`` without ids
    (so without an acknowledge button)."""
    now = time.time()
    return [{"id": None, "key": text, "severity": "at risk", "text": text, "raised_at": now, "last_sent_at": None,
             "acknowledged_by": None, "acknowledged_at": None, "resolved_at": None}
            for text in status.get("alerts", [])]


class NotAvailable(Exception):
    pass


def acknowledge(archive: Archive, alert_id: int, actor: str) -> dict[str, Any]:
    """``POST /api/alerts/{id}/ack``'s work; FALLBACK: alerts have no ids before the alerts helper."""
    raise NotAvailable("alerts cannot be acknowledged in this version")


def ingest_history(archive: Archive, range_: str, now: float | None = None) -> dict[str, Any]:
    """``GET /api/ingest-history?range=`` (contract shape); FALLBACK: versions received per bucket."""
    now = time.time() if now is None else now
    span, bucket = RANGES[range_]
    since = (now - span) // bucket * bucket + bucket  # whole buckets, the last one is the current one
    with archive.catalog.read() as conn:
        rows = {n: (count, size) for n, count, size in q.ingest_buckets(conn, since, bucket)}
    points = [{"t": since + n * bucket, "instances": rows.get(n, (0, 0))[0], "bytes": rows.get(n, (0, 0))[1]}
              for n in range(span // bucket)]
    return {"range": range_, "bucket_seconds": bucket, "points": points}


def capacity(archive: Archive, status: dict[str, Any], history_30d: dict[str, Any],
             now: float | None = None) -> dict[str, Any]:
    """``GET /api/capacity``'s ``sites`` (contract shape); FALLBACK from figures already gathered:
    a replica's verified bytes (status), the primary's stored bytes, free space where the site
    reports it, growth = the last 30 days' ingest at the archive's compression ratio."""
    now = time.time() if now is None else now
    ratio = status["bytes_stored"] / status["bytes_received"] if status.get("bytes_received") else 1.0
    per_day = sum(p["bytes"] for p in history_30d["points"]) * ratio / 30.0
    sites = []
    for name, entry in status.get("sites", {}).items():
        free, total = entry.get("free_bytes"), entry.get("total_bytes")
        stored = int(status["bytes_stored"] if name == "primary" else entry.get("verified_bytes", 0))
        sites.append({"site": name, "bytes_stored": stored, "capacity_bytes": total if isinstance(total, int) else None,
                      "free_bytes": free if isinstance(free, int) else None,
                      "days_until_full": round(free / per_day, 1) if isinstance(free, int) and per_day > 0 else None,
                      "forecast_bytes": {k: int(stored + per_day * 365 * y) for k, y in (("1y", 1), ("3y", 3), ("5y", 5))}})
    return {"as_of": now, "by_modality": [], "growth": {"30d": {"instances_per_day": None, "bytes_stored_per_day": per_day}},
            "sites": sites}


def rto(archive: Archive, status: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``GET /api/rto`` (contract shape); FALLBACK: the last 24 h from the ingest history, the rate
    from the newest restore job that measured one."""
    history = ingest_history(archive, "24h", now)
    instances = sum(p["instances"] for p in history["points"])
    size = sum(p["bytes"] for p in history["points"])
    rate, basis = None, "no restore has measured a rate yet: run a drill or a restore"
    for job in status.get("restores", []):
        if job.get("megabytes_per_second"):
            rate = job["megabytes_per_second"] * 1e6
            basis = f"restore job {job['id']} ({job['megabytes_per_second']} MB/s)"
            break
    else:
        drills = [(d["last_success"], name) for name, d in status.get("drills", {}).get("sites", {}).items()
                  if d.get("last_success") and d["last_success"].get("seconds")]
        if drills:
            best, name = max(drills, key=lambda pair: pair[0]["finished_at"] or 0)
            rate = best["bytes"] / best["seconds"]
            basis = f"the last drill on site {name} ({rate / 1e6:.1f} MB/s read and checked)"
    return {"last_24h": {"studies": None, "instances": instances, "bytes": size,
                         "seconds": round(size / rate, 1) if rate else None,
                         "rate_bytes_per_second": rate, "basis": basis}}
