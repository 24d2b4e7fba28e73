"""Rebuilding the catalog from one site and the offline recovery key (promise 3).

The scenario: the archive host is gone (disk, keys, catalog), or only its catalog is lost or
corrupt. What remains is any one site (an S3 bucket, a NAS, the primary's object folder)
and the recovery key printed at ``init``. ``rebuild_index``:

1. opens the newest catalog snapshot on the site with the recovery key (falling back to an
   older one if the newest does not authenticate);
2. restores the host keys from it when they are missing or were freshly made by ``init``
   on a new host (the archive's own site key names and wraps every existing object);
3. loads every catalog table from it into an empty catalog (SQLite or PostgreSQL; the
   snapshot records its schema revision, newer schemas accept older snapshots);
4. lists the site's objects and opens only those the snapshot does not know (written after
   it), indexing each from its own sealed metadata, in order of receipt (so the newest
   version of an instance is numbered last and its attributes are the ones the catalog shows);
5. squares the copy rows with reality: a copy the site lacks is owed again, and the primary's
   copies that the (possibly new, empty) primary lacks are owed to it; `serve` (or
   ``--refill``) copies them back from the replicas while reads fall back to them;
6. appends a ``rebuild-index`` row to the audit chain, which continues from the snapshot's
   head, so ``audit verify`` still proves everything up to the snapshot.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog, deletions, rebuild, snapshots
from dicomvault.catalog import schema as t
from dicomvault.catalog.db import HEAD_REVISION
from dicomvault.catalog.snapshots import iter_rows
from dicomvault.config import Settings
from dicomvault.catalog import keys as key_rows
from dicomvault.crypto.envelope import DecryptionError, read_header
from dicomvault.crypto.keys import KeyError_, Keyring, RecoveryKey, write_host_keys
from dicomvault.dicom.iocm import KOS_SOP_CLASS
from dicomvault.archive.repository import IntegrityError
from dicomvault.sites import SiteError, open_site

from dicomvault.jobs.rebuild.snapshot import SnapshotError, open_snapshot

if TYPE_CHECKING:
    from dicomvault.sites.base import Site

log = logging.getLogger(__name__)

PRIMARY = "primary"


class RebuildError(Exception):
    """The rebuild cannot run; the message says what to do. Nothing was changed."""


@dataclass
class RebuildReport:
    site: str
    snapshot: str | None = None
    snapshot_created_at: float | None = None
    snapshot_rows: int = 0
    skipped_snapshots: list[dict[str, str]] = field(default_factory=list)  # newer ones that failed
    keys_restored: bool = False
    key_records_read: int = 0  # wrapped study keys the snapshot left out, read from the site
    keys_without_record: list[str] = field(default_factory=list)
    objects_on_site: int = 0
    objects_after_snapshot: int = 0
    unreadable_objects: list[dict[str, str]] = field(default_factory=list)
    rejection_notes_reapplied: int = 0  # IOCM notes stored after the snapshot (catalog/rejections.py)
    deleted_objects_skipped: int = 0  # copies of deleted studies a site still holds (catalog/deletions.py)
    copies_owed_to_site: int = 0
    copies_owed_to_primary: int = 0
    instances: int = 0
    studies: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, seconds=round(self.seconds, 3))


def _site_settings(settings: Settings, name: str) -> tuple[str, dict[str, object]]:
    if name == PRIMARY:
        return settings.primary_site_url, {}
    for replica in settings.replicas:
        if replica.name == name:
            if replica.is_pacs:
                raise RebuildError(f"site {name} is a PACS (dicom://): it holds no sealed objects or snapshots")
            return replica.url, replica.option_map
    names = ", ".join([PRIMARY, *(r.name for r in settings.replicas if not r.is_pacs)])
    raise RebuildError(f"no site named {name!r} in {settings.config_file}; configured: {names}. Add the site "
                       "(`dicomvault sites add NAME URL`, with its options in [sites.NAME]) first")


def _newest_snapshot(site: "Site", recovery: RecoveryKey,
                     report: RebuildReport) -> tuple[str, dict[str, Any], bytes]:
    try:
        names = site.list_snapshots()
    except SiteError as exc:
        raise RebuildError(f"cannot list catalog snapshots on {site.url}: {exc}") from exc
    if not names:
        raise RebuildError(
            f"site {site.url} holds no catalog snapshot (they are written by `dicomvault serve` and "
            "`dicomvault snapshot`), so its site key cannot be recovered: use `dicomvault recover-read` to "
            "write every instance out with the recovery key, then `dicomvault import` them into a new vault")
    for name in reversed(names):
        try:
            metadata, payload = open_snapshot(site.get_snapshot(name), recovery)
        except (SnapshotError, SiteError, KeyError) as exc:
            log.error("ALERT: catalog snapshot %s on %s is unusable: %s", name, site.url, exc)
            report.skipped_snapshots.append({"name": name, "reason": str(exc)})
            continue
        return name, metadata, payload
    raise RebuildError(f"none of the {len(names)} catalog snapshots on {site.url} opens with this recovery key "
                       f"(newest: {report.skipped_snapshots[0]['reason']}); is it this archive's recovery key?")


def _restore_keys(settings: Settings, metadata: dict[str, Any], recovery: RecoveryKey,
                  catalog_is_empty: bool) -> bool:
    """Put the archive's own site key (and the recovery public key) in place; True if written."""
    recovery_public = recovery.public_key()
    if serialization.load_pem_public_key(metadata["recovery_public"].encode()).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw) != recovery_public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise RebuildError("the snapshot names a different recovery key than the one given")
    # Snapshots since key rotation carry the whole key file (every generation, the naming key).
    keyring = (Keyring.from_text(metadata["site_keys"], recovery_public, "the snapshot's site keys")
               if "site_keys" in metadata else Keyring(base64.b64decode(metadata["site_key"]), recovery_public))
    wanted = keyring.fingerprint
    key_file, public_file = settings.site_key_file, settings.recovery_public_key_file
    if key_file.exists():
        try:
            current = Keyring.load(key_file, public_file).fingerprint
        except KeyError_:
            current = None
        if current == wanted:
            return False
        if not catalog_is_empty:
            raise RebuildError(f"{key_file} is another archive's site key and the catalog already indexes "
                               "instances under it: rebuild into a fresh data directory (`dicomvault init`)")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (key_file, public_file):
            if path.exists():
                path.rename(path.with_name(f"{path.name}.replaced-{stamp}"))
    write_host_keys(key_file, public_file, keyring, recovery_public)
    return True


def _fill_key_records(archive: Any, site: "Site", report: "RebuildReport") -> None:
    """Snapshots leave out the wrapped keys of shreddable studies (catalog/keys.py): take them
    from the site's key records, and put those on the new primary too. A key with no record is
    a study deleted after the snapshot: its copies are shredded and its rows cannot be read."""
    with archive.catalog.read() as conn:
        wanted = key_rows.missing_wrapping(conn)
    for count, key_id in enumerate(wanted, 1):
        try:
            record = archive.keys.fetch_record(key_id, [site])
        except KeyError:
            report.keys_without_record.append(key_id)
            continue
        with archive.catalog.write() as conn:
            key_rows.rewrap(conn, key_id, kek_id=record.kek_id, wrapped_site=record.wrapped_by_site,
                            recovery_id=record.recovery_id, wrapped_recovery=record.wrapped_for_recovery)
        if archive.site.url != site.url:
            archive.site.put_key(key_id, record.to_bytes())
        report.key_records_read += 1
    if report.keys_without_record:
        log.error("ALERT: %d study key(s) in the snapshot have no key record on %s (studies deleted since the "
                  "snapshot?): their instances cannot be read", len(report.keys_without_record), site.url)


def _check_compatible(payload: bytes) -> None:
    """Refuse, before anything is changed, a snapshot this dicomvault cannot load."""
    header, _rows = iter_rows(payload)
    if str(header.get("revision", "")) > HEAD_REVISION:
        raise RebuildError(f"the snapshot was taken by a newer dicomvault (schema {header['revision']}, this one "
                           f"knows {HEAD_REVISION}): upgrade dicomvault first")
    tables = {table.name: table for table in t.metadata.sorted_tables}
    for table_name, table_columns in header["tables"]:
        table = tables.get(table_name)
        unknown = [c for c in table_columns if table is None or c not in table.c]
        if unknown:
            raise RebuildError(f"snapshot table {table_name} has columns this dicomvault does not know ({unknown}): "
                               "upgrade dicomvault first")


def rebuild_index(settings: Settings, site_name: str, recovery_key_file: Path, *, force: bool = False,
                  actor: str = "cli", progress: Callable[[str, int], None] | None = None) -> RebuildReport:
    """Rebuild the catalog (and, when missing, the host keys) from ``site_name`` alone."""
    started = time.time()
    report = RebuildReport(site=site_name)
    url, options = _site_settings(settings, site_name)
    try:
        recovery = RecoveryKey.load(recovery_key_file)
        site = open_site(url, options)
    except (KeyError_, SiteError) as exc:
        raise RebuildError(str(exc)) from exc
    name, metadata, payload = _newest_snapshot(site, recovery, report)
    report.snapshot, report.snapshot_created_at = name, float(metadata["created_at"])
    catalog = Catalog(settings.catalog_url)
    try:
        existing = rebuild.count_versions(catalog)
        if existing and not force:
            raise RebuildError(f"the catalog {settings.catalog_url} already indexes {existing} object(s); "
                               "rebuild-index fills an empty catalog: move it aside, or pass --force to replace "
                               "its contents")
        _check_compatible(payload)
        report.keys_restored = _restore_keys(settings, metadata, recovery, catalog_is_empty=not existing)
        report.snapshot_rows, known = snapshots.load_tables(catalog, payload, progress)
        with catalog.write() as conn:  # the snapshot did not contain its own record
            snapshots.add_snapshot_records(conn, [{
                "site": site_name, "name": name, "started_at": report.snapshot_created_at,
                "finished_at": report.snapshot_created_at, "state": "ok", "size": 0,
                "row_count": report.snapshot_rows, "audit_head": str(metadata["audit_head"]["hash"]), "error": None}])
    finally:
        catalog.close()
    del payload

    from dicomvault.archive.core import Archive  # the keys are in place now: open the archive normally

    archive = Archive.open(settings)
    try:
        archive.keys.sources = [site]  # key records of objects newer than the snapshot
        _fill_key_records(archive, site, report)
        on_site = _adopt_newer_objects(archive, site, site_name, known, report, progress)
        _square_copies(archive.catalog, archive.site, site_name, on_site, report)
        report.instances, report.studies = rebuild.count_instances_and_studies(archive.catalog)
        report.seconds = time.time() - started
        with archive.catalog.write() as conn:
            append(conn, AuditEvent(actor=actor, action="rebuild-index", subject=site_name,
                                    outcome="success" if not report.unreadable_objects else "partial",
                                    detail={"snapshot": name, "snapshot_audit_head": metadata.get("audit_head"),
                                            **{k: v for k, v in report.to_dict().items()
                                               if k not in ("unreadable_objects",)},
                                            "unreadable": len(report.unreadable_objects)}))
    finally:
        archive.close()
    return report


def _adopt_newer_objects(archive: Any, site: "Site", site_name: str, known: set[str], report: RebuildReport,
                         progress: Callable[[str, int], None] | None) -> set[str]:
    """Index the site's objects the snapshot does not list; returns every name on the site."""
    try:
        on_site = set(site.list())
    except SiteError as exc:
        raise RebuildError(f"the catalog was loaded from snapshot {report.snapshot}, but listing the objects on "
                           f"{site.url} failed: {exc}; run rebuild-index again with --force") from exc
    report.objects_on_site = len(on_site)

    def unreadable(object_id: str, exc: Exception) -> None:
        log.error("ALERT: object %s on %s cannot be indexed: %s", object_id, site.url, exc)
        report.unreadable_objects.append({"object": object_id, "reason": str(exc)})
        on_site.discard(object_id)

    # Opened first, indexed after in order of receipt, whatever order the site lists them in:
    # two versions of one instance get their numbers as they came, and the newest one is what
    # the patient, study and series rows follow (catalog/db.py _FOLLOW). Only each object's
    # sealed header and metadata are kept between the passes.
    opened: list[tuple[float, str, bytes, int, dict[str, Any], bytes | None]] = []
    with archive.catalog.read() as conn:  # a deleted study stays deleted, even where a copy was locked
        deleted = deletions.deleted_objects(conn)
    for count, object_id in enumerate(sorted(on_site - known), 1):
        if object_id in deleted:  # a study received again after its deletion has a new key, so new names
            report.deleted_objects_skipped += 1
            continue
        try:
            blob = site.get(object_id)
            metadata, original = archive.repository.open_blob(blob, object_id)
            _header, header_end = read_header(blob)
            # Only a rejection note's plaintext is kept for the second pass (it is small): it
            # is put back in effect once indexed (``reapply_rejection``).
            note = original if metadata.get("attributes", {}).get("sop_class_uid") == KOS_SOP_CLASS else None
            opened.append((float(metadata["received_at"]), object_id, blob[:header_end], len(blob), metadata, note))
        except (KeyError, ValueError, SiteError, IntegrityError, DecryptionError) as exc:
            unreadable(object_id, exc)
        if progress:
            progress("opening objects newer than the snapshot", count)
    opened.sort(key=lambda item: item[:2])
    for count, (_received, object_id, header, size, metadata, note) in enumerate(opened, 1):
        try:
            archive.ingestor.adopt(object_id, header, metadata, "dicomvault:rebuild", "rebuild", size_stored=size)
            report.objects_after_snapshot += 1
            if note is not None:
                report.rejection_notes_reapplied += archive.ingestor.reapply_rejection(metadata, note,
                                                                                       "dicomvault:rebuild")
        except (KeyError, ValueError) as exc:
            unreadable(object_id, exc)
        if progress:
            progress("indexing objects newer than the snapshot", count)
    return on_site


def _square_copies(catalog: Catalog, primary: "Site", site_name: str, on_site: set[str],
                   report: RebuildReport) -> None:
    """Copy rows must say what the sites hold now, not what they held at the snapshot."""
    now = time.time()
    checks = [(site_name, on_site)]
    if site_name != PRIMARY:
        checks.append((PRIMARY, set(primary.list())))
    for name, present in checks:
        rows = rebuild.copies_on_site(catalog, name)
        owed = [r.id for r in rows if r.object_id not in present and r.state != "owed"]
        held = [r.id for r in rows if r.object_id in present and r.state != "verified"]
        rebuild.square_copies(catalog, owed, held, now)
        if name == site_name:
            report.copies_owed_to_site = len(owed)
        else:
            report.copies_owed_to_primary = len(owed)
