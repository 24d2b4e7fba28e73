"""Capacity planning, the ingest charts and the RTO estimate (``dicomvault capacity``,
``GET /api/capacity``, ``/api/ingest-history``, ``/api/rto``).

Everything is read from the catalog, never by listing a site: totals and growth from the daily
rollup (catalog/capacity.py), a site's bytes from its copy rows (every version's stored bytes
minus the copies it is still owed), free space from the file system of a file site's root.

The forecast, per site, ``H`` years (1, 3, 5) from now::

    bytes now
      - what expires by then: studies whose keep-until day (catalog/retention.py) falls before
        the horizon and that no hold covers (only with [retention] enabled: otherwise nothing
        is ever deleted), times the site's share of all stored bytes
      + new data kept at the horizon: the 30-day growth rate (stored bytes per day) times, per
        retention rule, that rule's share of the studies that arrived in the last 30 days (the
        default rule alone when none arrived) times min(H, the rule's keep period); a rule kept
        "forever" or by age (keep_after_age) keeps all of it

``days_until_full`` is a site's free bytes over the 30-day growth rate (no expiries counted).
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from dicomvault.catalog import capacity as rollup
from dicomvault.catalog.db import PRIMARY_SITE
from dicomvault.config import RetentionSettings, Settings, parse_period

DAY = 86400.0
YEAR_DAYS = 365.25
HORIZONS = (1, 3, 5)
RANGES = {"24h": (3600, 24), "30d": (86400, 30)}  # bucket seconds, buckets
_UNIT_DAYS = {"years": YEAR_DAYS, "months": YEAR_DAYS / 12, "days": 1.0}

DiskUsage = Callable[[str], Any]  # shutil.disk_usage: (total, used, free)


def _growth(rows: list[Any], today: int, days: int) -> dict[str, float]:
    window = [row for row in rows if row.day > today - days]
    return {"instances_per_day": round(sum(int(r.instances) for r in window) / days, 3),
            "bytes_stored_per_day": round(sum(int(r.bytes_stored) for r in window) / days, 1)}


def keep_days(retention: RetentionSettings, rule_name: str) -> float | None:
    """How many days a study under ``rule_name`` is kept (None: forever, or decided by the
    patient's age, which the forecast cannot know for studies not yet made)."""
    rule = next((r for r in retention.rules if r.name == rule_name), None)
    keep = retention.default if rule is None else rule.keep
    if rule is not None and rule.keep_after_age is not None:
        return None
    if not keep or keep == "forever":
        return None
    count, unit = parse_period(keep)
    return count * _UNIT_DAYS[unit]


def _file_root(url: str) -> str | None:
    if not url.startswith("file://"):
        return None
    parsed = urlparse(url)
    return unquote(parsed.netloc + parsed.path) or None


def _disk(url: str, disk_usage: DiskUsage) -> tuple[int | None, int | None]:
    """(capacity, free) bytes of a file site's file system; (None, None) where the site cannot say."""
    root = _file_root(url)
    if root is None:
        return None, None
    try:
        usage = disk_usage(root)
    except OSError:
        return None, None
    return int(usage.total), int(usage.free)


def capacity_report(catalog: Any, settings: Settings, now: float | None = None,
                    disk_usage: DiskUsage = shutil.disk_usage) -> dict[str, Any]:
    """The ``GET /api/capacity`` body (and ``dicomvault capacity --json``)."""
    now = time.time() if now is None else now
    today = rollup.day_of(now)
    horizons = {f"{h}y": (datetime.fromtimestamp(now, timezone.utc) + timedelta(days=h * YEAR_DAYS)).date().isoformat()
                for h in HORIZONS}
    sites = [(PRIMARY_SITE, settings.primary_site_url)] + [(r.name, r.url) for r in settings.replicas]
    with catalog.read() as conn:
        modalities = rollup.by_modality(conn)
        days = rollup.daily(conn, today - 89)
        shortfalls = {name: rollup.site_shortfall(conn, name) for name, _url in sites}
        retention = settings.retention
        expiring = rollup.expiring(conn, max(horizons.values())) if retention.enabled else []
        mix = rollup.rule_mix_since(conn, now - 30 * DAY) if retention.enabled else {}
    growth = {"30d": _growth(days, today, 30), "90d": _growth(days, today, 90)}
    total_stored = sum(int(m.bytes_stored) for m in modalities)
    rate = growth["30d"]["bytes_stored_per_day"]
    mix = mix or {"default": 1}
    studies = sum(mix.values())
    def kept(rule: str) -> float:  # days a new study under ``rule`` stays; nothing expires while disabled
        days = keep_days(retention, rule) if retention.enabled else None
        return float("inf") if days is None else days

    kept_new = {label: rate * sum(count / studies * min(h * YEAR_DAYS, kept(rule)) for rule, count in mix.items())
                for label, h in zip(horizons, HORIZONS)}
    gone = {label: sum(size for day, size in expiring if day < horizon) for label, horizon in horizons.items()}
    site_rows = []
    for name, url in sites:
        known, short = shortfalls[name]
        stored = max(total_stored - short, 0) if known else 0
        share = stored / total_stored if total_stored else 0.0
        capacity, free = _disk(url, disk_usage)
        site_rows.append({
            "site": name, "bytes_stored": stored, "capacity_bytes": capacity, "free_bytes": free,
            "days_until_full": round(free / rate, 1) if free is not None and rate > 0 else None,
            "forecast_bytes": {label: max(int(stored - share * gone[label] + kept_new[label]), 0)
                               for label in horizons}})
    return {
        "as_of": now,
        "by_modality": [{"modality": m.modality, "instances": int(m.instances), "bytes_original": int(m.bytes_original),
                         "bytes_stored": int(m.bytes_stored),
                         "ratio": round(int(m.bytes_original) / int(m.bytes_stored), 3) if m.bytes_stored else None}
                        for m in modalities],
        "growth": growth,
        "sites": site_rows,
    }


class RangeError(ValueError):
    """An ingest-history range other than 24h or 30d."""


def ingest_history(catalog: Any, range_: str, now: float | None = None) -> dict[str, Any]:
    """Versions received and their original bytes in 24 hourly or 30 daily buckets (UTC, the
    last one holding ``now``), zeros where nothing arrived."""
    if range_ not in RANGES:
        raise RangeError(f"range={range_[:40]!r}: give range=24h (hourly buckets) or range=30d (daily buckets)")
    now = time.time() if now is None else now
    bucket, count = RANGES[range_]
    first = (int(now) // bucket - (count - 1)) * bucket
    points = [{"t": float(first + k * bucket), "instances": 0, "bytes": 0} for k in range(count)]
    with catalog.read() as conn:
        if range_ == "24h":
            for received_at, size in rollup.receipts_since(conn, first):
                k = int((received_at - first) // bucket)
                if 0 <= k < count:
                    points[k]["instances"] += 1
                    points[k]["bytes"] += size
        else:
            for row in rollup.daily(conn, first // bucket):
                k = int(row.day) - first // bucket
                if 0 <= k < count:
                    points[k]["instances"] += int(row.versions)
                    points[k]["bytes"] += int(row.bytes_original)
    return {"range": range_, "bucket_seconds": bucket, "points": points}


def _rate(catalog: Any) -> tuple[float | None, str]:
    """(bytes per second, which history it comes from): restore and export jobs first (sent into
    a PACS), else restore drills; (None, why) without either."""
    with catalog.read() as conn:
        jobs = [j for j in rollup.restore_rates(conn, 10) if j[5] > 0]
        drills = [] if jobs else list(rollup.drill_rates(conn, 10))
    if jobs:
        sent, seconds = sum(j[5] for j in jobs), sum(j[4] for j in jobs)
        peers = sorted({j[2] for j in jobs})
        return sent / seconds, (f"{len(jobs)} restore/export job(s) (id {', '.join(str(j[0]) for j in jobs)}) into "
                                f"{', '.join(peers)}: {sent} bytes in {seconds:.1f} s of sending")
    if drills:
        sent, seconds = sum(int(d.bytes) for d in drills), sum(float(d.seconds) for d in drills)
        where = sorted({f"{d.site}->{d.target}" for d in drills})
        return sent / seconds, (f"{len(drills)} restore drill(s) ({', '.join(where)}; no restore job yet): "
                                f"{sent} bytes in {seconds:.1f} s")
    return None, "no restore job or drill has measured a rate yet: run `dicomvault drill` or a restore"


def rto_estimate(catalog: Any, now: float | None = None) -> dict[str, Any]:
    """How long restoring what arrived in the last 24 h into the PACS would take at the measured rate."""
    now = time.time() if now is None else now
    with catalog.read() as conn:
        arrived = rollup.arrivals_since(conn, now - DAY)
    rate, basis = _rate(catalog)
    return {"last_24h": {**arrived, "seconds": round(arrived["bytes"] / rate, 1) if rate else None,
                         "rate_bytes_per_second": round(rate, 1) if rate else None, "basis": basis}}
