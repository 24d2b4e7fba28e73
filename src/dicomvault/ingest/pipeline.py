"""The one path every instance takes into the archive, whatever brought it (DIMSE, import...).

Order matters for promise 1 (acknowledged means durable): the sealed object is fsynced on
the site first, then the catalog transaction (hierarchy + version + audit row) commits, and
only then does the caller acknowledge. A crash before the commit leaves at most a complete,
self-describing object that ``recover`` re-indexes; never a row without its object.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord
from dicomvault.crypto import Keyring, StudyKey
from dicomvault.dicom import DicomFormatError, parse_part10
from dicomvault.repository import IntegrityError, Repository
from dicomvault.sites import SiteError

log = logging.getLogger(__name__)

INSTANCES = Counter("dicomvault_ingest_instances_total", "Instances offered to the archive", ["outcome"])
BYTES_RECEIVED = Counter("dicomvault_ingest_bytes_received_total", "Original bytes of newly stored instances")
BYTES_STORED = Counter("dicomvault_ingest_bytes_stored_total", "Sealed bytes written for newly stored instances")
LATENCY = Histogram(
    "dicomvault_ingest_seconds", "Time from receipt to durable commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class IngestRejected(Exception):
    """The instance was refused; ``reason`` is meant for the sender (DICOM ErrorComment)."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "invalid" (sender's data) or "storage" (our side: retry later)


@dataclass(frozen=True)
class IngestResult:
    sop_instance_uid: str
    version: int
    duplicate: bool
    object_id: str


class Ingestor:
    def __init__(self, catalog: Catalog, repository: Repository, keyring: Keyring) -> None:
        self.catalog = catalog
        self.repository = repository
        self.keyring = keyring
        self._study_keys: dict[str, StudyKey] = {}
        self._key_lock = threading.Lock()

    def study_key(self, study_uid: str) -> StudyKey:
        """The study's data key, created (and committed) the first time the study is seen."""
        with self._key_lock:
            cached = self._study_keys.get(study_uid)
            if cached is not None:
                return cached
            with self.catalog.write() as conn:
                row = self.catalog.study_key_row(conn, study_uid)
                if row is None:
                    key = self.keyring.new_study_key()
                    self.catalog.add_study_key(conn, study_uid, key.key_id, key.wrapped_by_site, key.wrapped_for_recovery)
                else:
                    key = self.keyring.study_key_from_wrapped(row.key_id, row.wrapped_site, row.wrapped_recovery)
            if len(self._study_keys) > 10000:
                self._study_keys.clear()
            self._study_keys[study_uid] = key
            return key

    def ingest(self, data: bytes, source: str, actor: str, transfer_syntax: str | None = None) -> IngestResult:
        """Store Part-10 bytes durably, or raise IngestRejected with a reason. Never partial."""
        started = time.perf_counter()
        try:
            parsed = parse_part10(data, transfer_syntax)
        except DicomFormatError as exc:
            INSTANCES.labels("rejected").inc()
            self._audit_rejection(actor, source, str(exc))
            raise IngestRejected(str(exc)) from exc
        attrs = parsed.attributes
        digest = hashlib.sha256(data)
        sha256 = digest.hexdigest()
        dataset_sha256 = hashlib.sha256(attrs.transfer_syntax_uid.encode() + b"\0" + data[parsed.dataset_offset :]).hexdigest()

        with self.catalog.read() as conn:
            existing = self.catalog.find_version_by_content(conn, attrs.sop_instance_uid, dataset_sha256)
        if existing is not None:
            return self._record_duplicate(existing, actor, source)

        received_at = time.time()
        study_key = self.study_key(attrs.study_uid)
        metadata: dict[str, Any] = {
            "format": 1,
            "attributes": attrs.to_dict(),
            "sha256": sha256,
            "dataset_sha256": dataset_sha256,
            "dataset_offset": parsed.dataset_offset,
            "size_original": len(data),
            "received_at": received_at,
            "source": source,
            "key_id": study_key.key_id,
        }
        try:
            saved = self.repository.save(study_key, digest.digest(), metadata, data)
        except SiteError as exc:
            INSTANCES.labels("failed").inc()
            self._audit_rejection(actor, source, str(exc), attrs.sop_instance_uid, outcome="error")
            raise IngestRejected(f"{exc}; the instance was not stored, send it again later", kind="storage") from exc
        record = VersionRecord(
            sop_instance_uid=attrs.sop_instance_uid, version=0, object_id=saved.object_id, sha256=sha256,
            dataset_sha256=dataset_sha256, size_original=len(data), size_stored=saved.size_stored,
            transfer_syntax_uid=attrs.transfer_syntax_uid, codec=saved.codec, key_id=study_key.key_id,
            received_at=received_at, source=source,
        )
        try:
            result = self._commit(attrs, record, actor)
        except Exception as exc:  # noqa: BLE001 - the catalog refused: report, keep serving
            INSTANCES.labels("failed").inc()
            log.exception("catalog commit failed for %s", attrs.sop_instance_uid)
            raise IngestRejected(f"the catalog could not record the instance ({exc}); send it again later", kind="storage") from exc
        self.repository.site.release_intent(saved.object_id)
        if not result.duplicate:
            INSTANCES.labels("stored").inc()
            BYTES_RECEIVED.inc(len(data))
            BYTES_STORED.inc(saved.size_stored)
        LATENCY.observe(time.perf_counter() - started)
        return result

    def _commit(self, attrs: InstanceAttributes, record: VersionRecord, actor: str, action: str = "store") -> IngestResult:
        with self.catalog.write() as conn:
            existing = self.catalog.find_version_by_content(conn, attrs.sop_instance_uid, record.dataset_sha256)
            if existing is not None:
                duplicate = True
                version = existing.version
                object_id = existing.object_id
            else:
                duplicate = False
                version = self.catalog.add_version(conn, attrs, record)
                object_id = record.object_id
            append(
                conn,
                AuditEvent(
                    actor=actor, action=action, subject=attrs.sop_instance_uid,
                    outcome="duplicate" if duplicate else "success",
                    detail={"study": attrs.study_uid, "version": version, "object": object_id,
                            "bytes": record.size_original, "source": record.source},
                ),
            )
        return IngestResult(attrs.sop_instance_uid, version, duplicate, object_id)

    def _record_duplicate(self, existing: VersionRecord, actor: str, source: str) -> IngestResult:
        INSTANCES.labels("duplicate").inc()
        with self.catalog.write() as conn:
            append(
                conn,
                AuditEvent(
                    actor=actor, action="store", subject=existing.sop_instance_uid, outcome="duplicate",
                    detail={"version": existing.version, "object": existing.object_id, "source": source},
                ),
            )
        return IngestResult(existing.sop_instance_uid, existing.version, True, existing.object_id)

    def _audit_rejection(self, actor: str, source: str, reason: str, subject: str = "", outcome: str = "rejected") -> None:
        try:
            with self.catalog.write() as conn:
                append(conn, AuditEvent(actor=actor, action="store", subject=subject, outcome=outcome,
                                        detail={"reason": reason, "source": source}))
        except Exception:  # noqa: BLE001 - a read-only disk must not turn a refusal into a crash
            log.warning("could not audit a refused store (%s): %s", source, reason)

    def recover(self) -> list[str]:
        """After a crash: index complete objects whose catalog commit never happened."""
        adopted = []
        for object_id in self.repository.site.recover():
            with self.catalog.read() as conn:
                known = self.catalog.has_object(conn, object_id)
            if not known:
                try:
                    metadata, _ = self.repository.load(object_id)
                except IntegrityError as exc:
                    log.error("crash recovery: object %s is unreadable, leaving it for `verify`: %s", object_id, exc)
                    continue
                attrs = InstanceAttributes.from_dict(metadata["attributes"])
                record = VersionRecord(
                    sop_instance_uid=attrs.sop_instance_uid, version=0, object_id=object_id,
                    sha256=metadata["sha256"], dataset_sha256=metadata["dataset_sha256"],
                    size_original=int(metadata["size_original"]),
                    size_stored=self.repository.site.stat(object_id) or 0,
                    transfer_syntax_uid=attrs.transfer_syntax_uid, codec=metadata["codec"],
                    key_id=metadata["key_id"], received_at=float(metadata["received_at"]), source=metadata["source"],
                )
                self._commit(attrs, record, "dicomvault:recovery", action="recover")
                adopted.append(object_id)
            self.repository.site.release_intent(object_id)
        return adopted
