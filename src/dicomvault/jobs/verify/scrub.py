"""The background scrub: inside ``dicomvault serve``, every copy on every readable site is
proven (read back, authenticated, SHA-256-checked; ``jobs/verify/job.py``) at least once per
``[scrub] period``, least recently proven first, at most at ``[scrub] rate``.

Each round takes up to ``ROUND`` due copies per site; when a round was full it goes on at
once, otherwise it waits ``check_every``. Copies become due as they age, so the work spreads
over the period by itself (a copy proven at ingest or replication is due a period later).
``scrub_status`` is what ``status`` shows: per site, how many copies were proven within the
period, the oldest proof, and the last run's findings; overdue copies and unrepaired damage
are alerts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from dicomvault.catalog.audit_log import last_event
from dicomvault.catalog.copies import proof_summary
from dicomvault.config import parse_duration
from dicomvault.replicate.throttle import RateLimiter, Schedule, parse_rate

from dicomvault.jobs.verify.job import readable_site_names, verify

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

ROUND = 1000  # copies per site per round
SCRUB_ACTOR = "scrub"
GRACE = 86400.0  # a copy is overdue one day after its period ran out


class ScrubScheduler:
    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self.settings = archive.settings.scrub
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        rate = parse_rate(self.settings.rate)
        self._limiter = RateLimiter(Schedule(rate)) if rate else None

    def start(self) -> None:
        if not self.settings.enabled:
            log.warning("[scrub] enabled = false: copies are not proven in the background; run `dicomvault verify`")
            return
        self._thread = threading.Thread(target=self._run, name="scrub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _pace(self, nbytes: int) -> None:
        if self._stop.is_set():
            raise InterruptedError("scrub stopping")
        if self._limiter is not None:
            self._limiter.acquire(nbytes)

    def _run(self) -> None:
        period = parse_duration(self.settings.period)
        pause = parse_duration(self.settings.check_every)
        while not self._stop.is_set():
            try:
                report = verify(self.archive, SCRUB_ACTOR, due_before=time.time() - period, limit=ROUND,
                                pace=self._pace, workers=2)
                full = any(result.checked >= ROUND for result in report.sites.values())
            except InterruptedError:
                return
            except Exception:  # noqa: BLE001 - a scrub round must never take `serve` down
                log.exception("scrub round failed; trying again in %s", self.settings.check_every)
                full = False
            if not full:
                self._stop.wait(pause)


def scrub_status(archive: "Archive", now: float | None = None) -> dict[str, Any]:
    """Per site: copies, proven within the period, oldest proof; the last run; and alerts."""
    now = time.time() if now is None else now
    period = parse_duration(archive.settings.scrub.period)
    sites: dict[str, Any] = {}
    alerts: list[str] = []
    with archive.catalog.read() as conn:
        for name in readable_site_names(archive.settings):
            proofs = proof_summary(conn, name, fresh_since=now - period, overdue_before=now - period - GRACE)
            total, fresh, overdue, oldest = proofs["copies"], proofs["fresh"], proofs["overdue"], proofs["oldest"]
            sites[name] = {"copies": total, "proven_within_period": fresh, "overdue": overdue,
                           "oldest_proof_age_seconds": round(now - oldest, 1) if oldest else None}
            if overdue:
                alerts.append(f"site {name}: {overdue} copies not proven for more than {archive.settings.scrub.period}"
                              " (is the scrub running? `dicomvault verify --site " + name + "`)")
        last = last_event(conn, "verify")
    last_run = None
    if last is not None:
        detail = json.loads(last.detail or "{}")
        last_run = {"at": last.ts, "by": last.actor, "outcome": last.outcome, "sites": detail.get("sites", {})}
        unrepaired = sum(int(s.get("unrepaired", 0)) for s in detail.get("sites", {}).values())
        if unrepaired:
            alerts.append(f"last verification found {unrepaired} damaged or missing copies it could NOT repair; "
                          "see `dicomvault verify` and the audit log (action damage)")
        for name, result in detail.get("sites", {}).items():  # S3 Object Lock (jobs/verify/retention.py)
            lock = result.get("retention") or {}
            if lock.get("warning"):
                alerts.append(f"site {name}: {lock['warning']}")
            if lock.get("failed"):
                alerts.append(f"site {name}: Object Lock retention could not be set on {lock['failed']} copies: "
                              f"{lock.get('error')}")
    return {"enabled": archive.settings.scrub.enabled, "period": archive.settings.scrub.period,
            "rate": archive.settings.scrub.rate, "sites": sites, "last_run": last_run, "alerts": alerts}
