"""Proving the copies: re-read objects on every readable site, authenticate, decrypt and check
the SHA-256 of the original bytes; rewrite a missing or damaged copy from a healthy one.

Backups fail silently (bit rot, a bucket someone emptied, a NAS that stopped taking
writes), so a copy counts only once it has been read back. Each check reads the sealed
object from the site itself (``Site.get``) and opens it with the archive's keys
(``Repository.open_blob``: AEAD authentication, decompression, SHA-256 against the
catalog). A copy that is missing or fails is raised as an ALERT, audited, and repaired:
the object is read from another site where it verifies, the bad copy is removed, the good
bytes are written under the same content-addressed name, and the repaired copy is read back
and checked again before it counts. Write-once still holds: the name always carries the same
bytes; only a copy proven wrong is replaced. A ``dicom://`` site (a PACS) cannot hand back
sealed objects and is not verified here. On an S3 site with ``object_lock_days``, each good
copy's Object Lock retention is checked and renewed on the way (``jobs/verify/retention.py``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog.copies import copies_to_prove, mark_copies_proven
from dicomvault.archive.repository import IntegrityError
from dicomvault.sites import SiteError, open_site

from dicomvault.archive import quarantine
from dicomvault.jobs.verify.retention import RetentionKeeper, RetentionResult

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.sites.base import Site

log = logging.getLogger(__name__)

PRIMARY = "primary"


class VerifyError(Exception):
    """The verification cannot run (unknown site...); the message says what to do."""


@dataclass
class Finding:
    site: str
    object_id: str
    problem: str  # missing | damaged | unreadable
    detail: str
    repaired_from: str | None = None
    repair_error: str | None = None


@dataclass
class SiteResult:
    checked: int = 0
    ok: int = 0
    missing: int = 0
    damaged: int = 0
    unreadable: int = 0  # the site did not answer (an outage is not damage: not repaired, not counted)
    repaired: int = 0
    unrepaired: int = 0
    bytes: int = 0
    retention: RetentionResult | None = None  # S3 with object_lock_days only (jobs/verify/retention.py)

    def to_dict(self) -> dict[str, Any]:
        """As in the report and the audit row: sites without Object Lock have no ``retention``."""
        data = asdict(self)
        if self.retention is None:
            del data["retention"]
        return data


@dataclass
class VerifyReport:
    started_at: float
    finished_at: float = 0.0
    sites: dict[str, SiteResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def unrepaired(self) -> int:
        return sum(r.unrepaired for r in self.sites.values())

    def to_dict(self) -> dict[str, Any]:
        seconds = max(self.finished_at - self.started_at, 1e-9)
        total_bytes = sum(r.bytes for r in self.sites.values())
        return {"started_at": self.started_at, "finished_at": self.finished_at,
                "seconds": round(seconds, 3), "original_megabytes_per_second": round(total_bytes / seconds / 1e6, 2),
                "sites": {name: result.to_dict() for name, result in self.sites.items()},
                "findings": [asdict(f) for f in self.findings], "unrepaired": self.unrepaired,
                "quarantined": self.quarantined}


def readable_site_names(settings: Any) -> list[str]:
    """Every site whose sealed objects can be read back: the primary and each replica but a PACS."""
    return [PRIMARY, *(r.name for r in settings.replicas if not r.is_pacs)]


def readable_sites(archive: "Archive") -> dict[str, "Site"]:
    by_name = {r.name: r for r in archive.settings.replicas}
    return {name: archive.site if name == PRIMARY else open_site(by_name[name].url, by_name[name].option_map)
            for name in readable_site_names(archive.settings)}


def _copies(archive: "Archive", site: str, sample: int | None, due_before: float | None = None,
            limit: int | None = None) -> list[tuple[str, str, int]]:
    """(object id, SHA-256, original size) of the copies the catalog says ``site`` holds:
    all, ``sample`` random ones, or (for the scrub) the ``limit`` least recently proven ones
    not proven since ``due_before``."""
    with archive.catalog.read() as conn:
        rows = copies_to_prove(conn, site, due_before, limit)
    if sample is not None and sample < len(rows):
        rows = random.sample(rows, sample)
    return rows


def verify(archive: "Archive", actor: str, *, only_sites: list[str] | None = None, sample: int | None = None,
           repair: bool = True, progress: Callable[[int, int], None] | None = None,
           workers: int = 0, due_before: float | None = None, limit: int | None = None,
           pace: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every copy (or ``sample`` random copies per site, or the scrub's due ones) on
    the chosen sites; repair what fails from a healthy site unless ``repair`` is False.
    ``pace(nbytes)`` is called before each check (the scrub's rate limit)."""
    sites = readable_sites(archive)
    unknown = sorted(set(only_sites or ()) - set(sites))
    if unknown:
        raise VerifyError(f"unknown or unreadable site(s) {', '.join(unknown)}; readable sites: {', '.join(sites)}")
    chosen = [name for name in sites if not only_sites or name in only_sites]
    work = {name: _copies(archive, name, sample, due_before, limit) for name in chosen}
    total = sum(len(items) for items in work.values())
    report = VerifyReport(started_at=time.time())
    done = 0
    workers = workers or max(2, os.cpu_count() or 2)
    quarantined = set(quarantine.active(archive.catalog))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        for name in chosen:
            result = report.sites.setdefault(name, SiteResult())
            if name in quarantined:
                report.quarantined.append(name)
                continue  # out of service until an operator clears it
            verified: list[str] = []
            found: list[tuple[Finding, str]] = []
            site = sites[name]
            keeper = RetentionKeeper.for_site(site, fix=repair) if work[name] else None

            def checked(items: list[tuple[str, str, int]]) -> Any:
                for start in range(0, len(items), 1000):  # bounded number of futures in flight
                    chunk = items[start:start + 1000]
                    yield from zip(chunk, pool.map(lambda item: _paced_check(archive, site, item, pace, keeper), chunk))

            # Reading, AES-GCM, zstd and SHA-256 release the GIL: a few objects are checked at once.
            for (object_id, sha256, size), problem in checked(work[name]):
                result.checked += 1
                if problem is None:
                    result.ok += 1
                    result.bytes += size
                    verified.append(object_id)
                    if len(verified) >= 500:
                        _mark_verified(archive, name, verified)
                        verified = []
                else:
                    kind, detail = problem
                    if kind == "unreadable":  # the site failed, not (necessarily) the copy
                        result.unreadable += 1
                        log.error("ALERT: site %s could not be read for object %s: %s", name, object_id, detail)
                    elif kind == "missing":
                        result.missing += 1
                    else:
                        result.damaged += 1
                    if kind != "unreadable":
                        log.error("ALERT: copy of object %s on site %s is %s: %s", object_id, name, kind, detail)
                    found.append((Finding(name, object_id, kind, detail), sha256))
                done += 1
                if progress is not None:
                    progress(done, total)
            _mark_verified(archive, name, verified)
            if keeper is not None:
                result.retention = keeper.finish(archive, actor, name)
            bad = result.missing + result.damaged
            if quarantine.looks_like_mass_damage(result.checked - result.unreadable, bad) and \
                    not quarantine.recently_cleared(archive.catalog, name):
                reason = (f"{bad} of {result.checked} copies checked were damaged or missing at once "
                          "(the signature of ransomware or of a wiped share)")
                log.error("ALERT: site %s QUARANTINED: %s", name, reason)
                quarantine.quarantine(archive.catalog, name, reason, actor)
                quarantined.add(name)
                report.quarantined.append(name)
                archive.repository.excluded.add(name)
            healthy = {n: s for n, s in sites.items() if n not in quarantined}
            for finding, sha256 in found:
                if finding.problem == "unreadable":
                    finding.repair_error = "the site did not answer; the copy may be fine: check the site, verify again"
                elif name in quarantined:
                    finding.repair_error = "site quarantined: not repaired until an operator clears it"
                elif repair:
                    _repair(archive, healthy, finding, sha256)
                if finding.repaired_from:
                    result.repaired += 1
                else:
                    result.unrepaired += 1
                report.findings.append(finding)
                _audit_finding(archive, actor, finding)
    report.finished_at = time.time()
    if due_before is not None and not report.findings and not any(r.checked for r in report.sites.values()):
        return report  # a scrub round with nothing due: no audit row every few minutes
    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action="verify", subject=",".join(chosen),
                                outcome="success" if not report.findings and not report.quarantined else
                                "repaired" if not report.unrepaired and not report.quarantined else "failure",
                                detail={"sample": sample, "sites": {n: r.to_dict() for n, r in report.sites.items()},
                                        "quarantined": report.quarantined}))
    return report


def _paced_check(archive: "Archive", site: "Site", item: tuple[str, str, int],
                 pace: Callable[[int], None] | None, keeper: RetentionKeeper | None) -> tuple[str, str] | None:
    if pace is not None:
        pace(item[2])
    return _check(archive, site, item[0], item[1], keeper)


def _check(archive: "Archive", site: "Site", object_id: str, sha256: str,
           keeper: RetentionKeeper | None = None) -> tuple[str, str] | None:
    """None if the copy verifies, else (problem, detail). With a ``keeper`` whose bucket has
    Object Lock, the same GetObject reports the copy's retention, renewed if due."""
    retention = None
    try:
        if keeper is not None and keeper.active:
            blob, retention = site.get_with_retention(object_id)
        else:
            blob = site.get(object_id)
    except KeyError:
        return "missing", "the object is not on the site"
    except SiteError as exc:
        return "unreadable", str(exc)
    try:
        archive.repository.open_blob(blob, object_id, sha256)
    except IntegrityError as exc:
        return "damaged", str(exc)
    if keeper is not None and retention is not None:
        keeper.keep(object_id, retention)
    return None


def _repair(archive: "Archive", sites: dict[str, "Site"], finding: Finding, sha256: str) -> None:
    """Rewrite the copy from the first other site where the object verifies; read it back.
    ``sites`` holds the sites in service (quarantined ones are left out) and the target."""
    for source_name, source in sites.items():
        if source_name == finding.site:
            continue
        try:
            blob = source.get(finding.object_id)
            archive.repository.open_blob(blob, finding.object_id, sha256)
        except (KeyError, SiteError, IntegrityError):
            continue
        target = sites[finding.site]  # in ``sites``: the caller never repairs a quarantined site
        try:
            target.delete(finding.object_id)  # the copy proven wrong (absent: nothing to do)
            target.put_if_absent(finding.object_id, blob)
            target.flush()
            target.release_intents([finding.object_id])  # already indexed: nothing for crash recovery
            if _check(archive, target, finding.object_id, sha256) is not None:
                raise SiteError("the rewritten copy does not read back correctly")
        except (SiteError, OSError) as exc:
            finding.repair_error = f"rewriting from {source_name} failed: {exc}"
            log.error("ALERT: could not repair object %s on site %s: %s", finding.object_id, finding.site, exc)
            return
        finding.repaired_from = source_name
        _mark_verified(archive, finding.site, [finding.object_id])
        log.warning("repaired object %s on site %s from site %s", finding.object_id, finding.site, source_name)
        return
    finding.repair_error = "no other site holds a copy that verifies"
    log.error("ALERT: object %s on site %s cannot be repaired: no healthy copy anywhere", finding.object_id,
              finding.site)


def _mark_verified(archive: "Archive", site: str, object_ids: list[str]) -> None:
    """Record when these copies were last proven readable (one transaction per batch)."""
    if not object_ids:
        return
    with archive.catalog.write() as conn:
        mark_copies_proven(conn, site, object_ids, time.time())


def _audit_finding(archive: "Archive", actor: str, finding: Finding) -> None:
    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action="repair" if finding.repaired_from else "damage",
                                subject=finding.object_id,
                                outcome="success" if finding.repaired_from else "failure",
                                detail=asdict(finding)))
