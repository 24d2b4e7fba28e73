"""Object Lock retention on the copies ``verify`` reads (S3 sites with ``object_lock_days``).

With ``object_lock_days = N`` on a bucket that has Object Lock, every object is written with
a retain-until date N days ahead (``S3Site.put_if_absent``). Retention can still go missing
or run short: objects written before the option was set, an object replaced by hand, a
GOVERNANCE retention shortened or removed by someone holding the bypass permission, or
simply time passing. The GetObject that verify already does to read a copy also reports the
retention of the version it returned, so checking it costs no extra request:

* **Policy.** Every copy the catalog still lists stays locked at least N/2 days ahead
  (``RENEW_FRACTION``). A copy that verifies but has no retention in force (none, or
  expired) or less than N/2 days of it left is given now + N days, in its own mode if it
  has one (else the site's ``object_lock_mode``). Retention is only ever lengthened: S3
  refuses to shorten COMPLIANCE, and a later date (N was lowered) is left alone. So as long
  as every copy is verified at least once per N/2 days (``[scrub] period`` <= N/2), no copy
  the catalog lists is ever unlocked, while a copy the catalog no longer lists (deleted by
  policy) is not renewed and becomes deletable at most N days after its last renewal.
  Cost: one PutObjectRetention per copy about every N/2 days.
* **Evidence.** Counts per site in the verify report and its audit row (``retention``);
  copies found with no retention in force are audited (action ``retention``, 500 per row)
  and logged as an ALERT; failures to set it are counted with the first error, and
  ``status`` alerts on them and on a bucket without Object Lock (from the last verify).
* Damaged or missing copies are not touched here (verify repairs them; a rewritten copy
  gets retention from ``put_if_absent``), and ``--no-repair`` reports without changing
  anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.sites import SiteError

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

RENEW_FRACTION = 0.5  # renew when less than this share of object_lock_days is left
AUDIT_BATCH = 500


@dataclass
class RetentionResult:
    days: int  # the site's object_lock_days
    object_lock: bool = False  # the bucket has Object Lock (else nothing can be locked there)
    missing: int = 0  # verified copies with no retention in force (none, or expired)
    short: int = 0  # verified copies whose retention ends within days * RENEW_FRACTION
    fixed: int = 0  # of missing + short: retention set or extended to now + days
    failed: int = 0  # of missing + short: could not be (the first reason in ``error``)
    error: str | None = None
    warning: str | None = None


class RetentionKeeper:
    """Checks, and renews, the retention of one site's copies as they verify (thread-safe)."""

    def __init__(self, site: Any, fix: bool) -> None:
        self.site = site
        self.fix = fix
        self.result = RetentionResult(int(site.object_lock_days))
        self.active = False  # the bucket has Object Lock: check each copy
        self._missing: list[str] = []
        self._unfixed: set[str] = set()
        self._lock = threading.Lock()
        health = site.health()  # the same words as `sites test` and the dashboard
        if health.get("error"):
            self.result.warning = f"Object Lock not checked: {health['error']}"
        elif health.get("warning"):
            self.result.warning = str(health["warning"])
        else:
            self.result.object_lock = self.active = health.get("object_lock") is True

    @classmethod
    def for_site(cls, site: Any, fix: bool) -> RetentionKeeper | None:
        """A keeper for a site that holds copies under Object Lock retention, else None."""
        if site.capabilities.object_lock and site.object_lock_days > 0:
            return cls(site, fix)
        return None

    def keep(self, object_id: str, retention: Any) -> None:
        """``object_id``'s copy verified, and S3 reported ``retention`` for it: renew if due."""
        now = dt.datetime.now(dt.timezone.utc)
        until = retention.until
        in_force = retention.mode is not None and until is not None and until > now
        if in_force and until >= now + dt.timedelta(days=self.result.days * RENEW_FRACTION):
            return
        error = None
        if self.fix:
            try:
                self.site.extend_retention(object_id, now + dt.timedelta(days=self.result.days),
                                           retention.mode if in_force else None, retention.version_id)
            except SiteError as exc:
                error = str(exc)
        with self._lock:
            if in_force:
                self.result.short += 1
            else:
                self.result.missing += 1
                self._missing.append(object_id)
            if error is not None:
                self.result.failed += 1
                self.result.error = self.result.error or error
                self._unfixed.add(object_id)
            elif self.fix:
                self.result.fixed += 1

    def finish(self, archive: Archive, actor: str, site_name: str) -> RetentionResult:
        """Log and audit what was found; the result goes into the site's verify result."""
        result = self.result
        if result.warning:
            log.error("ALERT: site %s: %s", site_name, result.warning)
        if result.missing:
            log.error("ALERT: %d verified copies on site %s had no Object Lock retention in force; %s", result.missing,
                      site_name, "retention set again" if self.fix else "left as is (--no-repair)")
        if result.failed:
            log.error("ALERT: Object Lock retention could not be set on %d copies on site %s: %s", result.failed,
                      site_name, result.error)
        for start in range(0, len(self._missing), AUDIT_BATCH):
            batch = self._missing[start:start + AUDIT_BATCH]
            unfixed = [name for name in batch if name in self._unfixed]
            with archive.catalog.write() as conn:
                append(conn, AuditEvent(
                    actor=actor, action="retention", subject=site_name,
                    outcome="success" if self.fix and not unfixed else "failure",
                    detail={"problem": "no Object Lock retention in force", "objects": batch,
                            "set_for_days": result.days if self.fix else None, "not_set": unfixed,
                            "error": result.error if unfixed else None}))
        return result
