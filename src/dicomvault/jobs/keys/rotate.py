"""``keys rotate``: a new site-key generation (and, if asked, a new recovery key), with every
study key record re-wrapped under it on the catalog and on every site.

Re-wrapping touches only the small key records: the data keys, and so every sealed payload,
stay as they are. The order keeps every step recoverable: the key file gains the new
generation first (a crash after leaves a file that opens both old and new records), then
each record is re-wrapped in the catalog and re-written on every site, and only when every
site took every record is an old generation dropped from the file. A generation still
needed (a site that was unreachable, objects sealed before key records that carry a key
wrapped by it) stays, and the report and ``status`` say why. A catalog snapshot is taken at
the end, so a rebuild from any site finds the new key file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomvault.archive.keystore import record_of
from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import keys as key_rows
from dicomvault.crypto.keys import KeyError_, replace_host_keys, new_recovery_key
from dicomvault.sites import SiteError
from dicomvault.sites.journal import held_elsewhere

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.sites.base import Site

log = logging.getLogger(__name__)

ACTION = "keys-rotate"


class RotationError(Exception):
    """Rotation cannot start; the message says what to do. Nothing was changed."""


@dataclass
class RotationReport:
    new_kek_id: str
    old_kek_ids: list[str]
    new_recovery_id: str | None = None
    recovery_key_file: str | None = None
    records: int = 0
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {written, failed, error}
    retired: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # generation -> why it stays
    snapshot: str | None = None
    old_recovery_key_still_opens: str | None = None
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return all(not site["failed"] for site in self.sites.values())

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "complete": self.complete, "seconds": round(self.seconds, 3)}


def key_sites(archive: "Archive") -> dict[str, "Site"]:
    """Every site that holds key records: the primary and each ciphertext replica."""
    from dicomvault.jobs.verify.job import readable_sites

    return {name: site for name, site in readable_sites(archive).items() if site.capabilities.keys}


def rotate(archive: "Archive", actor: str, *, new_recovery_key_file: Path | None = None,
           progress: Callable[[int, int], None] | None = None) -> RotationReport:
    settings = archive.settings
    journal = Path(getattr(archive.site, "root", settings.base_dir)) / "journal"
    if held_elsewhere(journal):
        raise RotationError("another process (dicomvault serve, or an import) is ingesting into this archive: it "
                            "would keep wrapping new study keys with the old site key; stop it, rotate, start it")
    if new_recovery_key_file is not None and new_recovery_key_file.exists():
        raise RotationError(f"{new_recovery_key_file} already exists; give a new path for the new recovery key")
    started = time.time()
    old = archive.keyring
    try:
        public = new_recovery_key(new_recovery_key_file) if new_recovery_key_file is not None else None
    except (KeyError_, OSError) as exc:
        raise RotationError(f"cannot write the new recovery key: {exc}") from exc
    new = old.rotated(public)
    replace_host_keys(settings.site_key_file, settings.recovery_public_key_file, new)
    archive.keyring = archive.repository.keyring = archive.keys.keyring = new
    report = RotationReport(new_kek_id=new.kek_id, old_kek_ids=old.kek_ids,
                            new_recovery_id=new.recovery_id if public is not None else None,
                            recovery_key_file=str(new_recovery_key_file) if public is not None else None)
    sites = key_sites(archive)
    report.sites = {name: {"written": 0, "failed": 0, "error": None} for name in sites}
    with archive.catalog.read() as conn:
        total = int(key_rows.summary(conn)["total"])
        rows = list(key_rows.rows(conn))
    for done, row in enumerate(rows, 1):
        if not row.wrapped_site:
            continue  # a rebuild left it unfilled (no record anywhere): nothing to re-wrap
        fresh = new.rewrap(record_of(row))
        with archive.catalog.write() as conn:
            key_rows.rewrap(conn, row.key_id, kek_id=fresh.kek_id, wrapped_site=fresh.wrapped_by_site,
                            recovery_id=fresh.recovery_id, wrapped_recovery=fresh.wrapped_for_recovery)
        report.records += 1
        if not row.embedded:  # embedded keys have no records on the sites (their objects carry them)
            for name, site in sites.items():
                _put(site, name, fresh.key_id, fresh.to_bytes(), report)
        if progress:
            progress(done, total)
    archive.keys.forget([row.key_id for row in rows])
    _retire(archive, report)
    if public is not None:
        with archive.catalog.read() as conn:
            embedded = key_rows.summary(conn)["embedded"]
        report.old_recovery_key_still_opens = (
            f"catalog snapshots taken before this one, and {embedded} stud(ies) whose objects carry their own "
            "key (sealed before key records): keep the old recovery key offline as long as those copies exist")
    report.snapshot = _snapshot(archive, actor)
    report.seconds = time.time() - started
    with archive.catalog.write() as conn:
        append(conn, AuditEvent(actor=actor, action=ACTION, subject=new.kek_id,
                                outcome="success" if report.complete else "partial",
                                detail={k: v for k, v in report.to_dict().items() if k != "recovery_key_file"}))
    return report


def _put(site: "Site", name: str, key_id: str, record: bytes, report: RotationReport) -> None:
    outcome = report.sites[name]
    if outcome["error"] is not None and outcome["failed"] > 20:
        outcome["failed"] += 1  # the site is down: do not wait on each record
        return
    try:
        site.put_key(key_id, record)
        outcome["written"] += 1
    except SiteError as exc:
        outcome["failed"] += 1
        outcome["error"] = str(exc)


def _retire(archive: "Archive", report: RotationReport) -> None:
    """Drop the old generations nothing needs any more from the key file."""
    with archive.catalog.read() as conn:
        summary = key_rows.summary(conn)
    keyring = archive.keyring
    retire: set[str] = set()
    for kek_id in keyring.kek_ids[:-1]:
        if summary["by_kek"].get(kek_id):
            report.kept[kek_id] = f"{summary['by_kek'][kek_id]} key record(s) in the catalog still use it"
        elif not report.complete:
            report.kept[kek_id] = "a site did not take every re-wrapped record: run `keys rotate` again when it is back"
        elif kek_id == keyring.kek_ids[0] and summary["embedded"]:
            report.kept[kek_id] = (f"{summary['embedded']} stud(ies) have objects sealed before key records, whose "
                                   "headers carry a key wrapped by it")
        else:
            retire.add(kek_id)
    if retire:
        retired = keyring.retiring(retire)
        replace_host_keys(archive.settings.site_key_file, archive.settings.recovery_public_key_file, retired)
        archive.keyring = archive.repository.keyring = archive.keys.keyring = retired
        report.retired = sorted(retire)


def _snapshot(archive: "Archive", actor: str) -> str | None:
    from dicomvault.jobs.rebuild.snapshot import take_snapshot

    try:
        return take_snapshot(archive, actor).name
    except Exception as exc:  # noqa: BLE001 - the rotation stands; the next scheduled snapshot carries it
        log.error("ALERT: no catalog snapshot after the key rotation (%s): take one with `dicomvault snapshot`", exc)
        return None
