"""The one path every instance takes into the archive, whatever brought it (DIMSE, import...).

Order matters for promise 1 (acknowledged means durable): the sealed object is made durable
on the site first (as an intent the site keeps until released), then the catalog
transaction (hierarchy + version + audit row) commits, and only then does the caller
acknowledge. Intents are released in batches, only after the site's directory entries and
the catalog have been hardened (``DurabilityBarrier``). A crash at any point therefore
leaves either an intent that ``recover`` re-indexes from the object's own metadata, or a
durable row; never a row without its object and never a lost acknowledged instance.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord, retention
from dicomvault.config import RetentionSettings
from dicomvault.crypto import Keyring, StudyKey
from dicomvault.crypto.envelope import read_header
from dicomvault.dicom import DatasetMismatch, DicomFormatError, parse_part10
from dicomvault.dicom import iocm
from dicomvault.archive.rejection import apply_rejection
from dicomvault.archive.repository import IntegrityError, Repository
from dicomvault.sites import SiteError

from dicomvault.archive.committer import CatalogCommitter, PendingRow

log = logging.getLogger(__name__)

INSTANCES = Counter("dicomvault_ingest_instances_total", "Instances offered to the archive", ["outcome"])
BYTES_RECEIVED = Counter("dicomvault_ingest_bytes_received_total", "Original bytes of newly stored instances")
BYTES_STORED = Counter("dicomvault_ingest_bytes_stored_total", "Sealed bytes written for newly stored instances")
LATENCY = Histogram(
    "dicomvault_ingest_seconds", "Time from receipt to durable commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# From this size on, an instance's two SHA-256s run on a helper thread while zstd compresses
# it on the caller's: both release the GIL, so on two cores the ~1 ms of hashing a 512x512 CT
# hides behind its ~1.5 ms of compression (a sender waits for every acknowledgement, so this
# is latency it would otherwise see). Smaller instances are not worth the thread hop.
OVERLAP_MIN_BYTES = 128 * 1024
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest-hash")


def content_digests(data: bytes, transfer_syntax_uid: str, dataset_offset: int) -> tuple[bytes, str, str]:
    """(SHA-256 of the Part-10 bytes, its hex, SHA-256 of transfer syntax + data set).

    The second one identifies the instance's content whatever its file meta header says, so
    the same data set sent twice is recognised as one version."""
    whole = hashlib.sha256(data)
    dataset = hashlib.sha256(transfer_syntax_uid.encode() + b"\0")
    dataset.update(memoryview(data)[dataset_offset:])
    return whole.digest(), whole.hexdigest(), dataset.hexdigest()


class IngestRejected(Exception):
    """The instance was refused; ``reason`` is meant for the sender (DICOM ErrorComment)."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        # "invalid" (sender's data), "mismatch" (the data set is not the instance its C-STORE
        # request announced) or "storage" (our side: retry later)
        self.kind = kind


def storage_failure_reason(exc: BaseException) -> str:
    """A short, sender-readable cause for a failure on our side (disk full, read-only...).

    DICOM's Error Comment holds 64 characters, so the cause comes first and the details
    (paths, driver messages) stay in the log.
    """
    text = str(exc).lower()
    errno_reasons = {28: "storage is full", 30: "storage is read-only", 122: "storage quota is exhausted",
                     13: "storage permission denied", 5: "storage I/O error"}
    for cause in (exc, exc.__cause__, getattr(exc, "orig", None)):
        code = getattr(cause, "errno", None)
        if isinstance(code, int) and code in errno_reasons:
            return errno_reasons[code]
    for needle, reason in (
        ("disk is full", "storage is full"), ("storage is full", "storage is full"),
        ("readonly", "storage is read-only"), ("read-only", "storage is read-only"),
        ("disk i/o error", "storage I/O error"), ("database is locked", "catalog is busy"),
        ("quota", "storage quota is exhausted"),
    ):
        if needle in text:
            return reason
    return f"storage failure ({type(exc).__name__})"


@dataclass(frozen=True)
class IngestResult:
    sop_instance_uid: str
    version: int
    duplicate: bool
    object_id: str


class DurabilityBarrier:
    """Batches the expensive part of durability: harden site + catalog, then drop intents.

    Each ingest pays for its own object's fsyncs; the directory entries and the catalog's
    WAL are hardened here for many instances at once, in the background while serving, or
    on demand (``flush``) at the end of an import or at shutdown.
    """

    def __init__(self, catalog: Catalog, repository: Repository, interval: float = 0.5, batch: int = 1000) -> None:
        self.catalog = catalog
        self.site = repository.site
        self.interval = interval
        self.batch = batch
        self._committed: list[str] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def committed(self, object_id: str) -> None:
        with self._lock:
            self._committed.append(object_id)
            full = len(self._committed) >= self.batch
        if full:
            self._wake.set()

    def flush(self) -> int:
        with self._flush_lock:
            with self._lock:
                names, self._committed = self._committed, []
            if not names:
                return 0
            try:
                self.site.flush()
                self.catalog.barrier()
            except Exception:
                with self._lock:
                    self._committed[:0] = names  # keep the intents; try again next round
                raise
            self.site.release_intents(names)
            return len(names)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - keep intents, report, retry
                log.warning("durability barrier failed, intents kept for retry: %s", exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="durability", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001
            log.warning("final durability barrier failed; intents stay for recovery: %s", exc)


class Ingestor:
    def __init__(self, catalog: Catalog, repository: Repository, keyring: Keyring,
                 replicas: list[str] | None = None, journal: bool = True,
                 rejection_delay: float = 30 * 86400.0) -> None:
        self.catalog = catalog
        self.rejection_delay = rejection_delay  # [iocm] delete_after, for reapply_rejection
        self.replicas = list(replicas or [])  # sites owed a copy of every new object
        self.on_stored: list[Callable[[], None]] = []  # e.g. wake the replication workers
        self.committer = CatalogCommitter(self._commit_rows, self._after_commit)
        self.repository = repository
        self.keyring = keyring
        self.durability = DurabilityBarrier(catalog, repository)
        # The process that ingests owns the primary site's write-ahead journal, if it has one
        # (sites/journal.py): acknowledgements then cost one device flush, not a file creation.
        if journal:
            repository.site.enable_journal()
        # [retention]: keep-until dates follow the studies as they arrive (catalog/retention.py)
        self.retention: RetentionSettings | None = None
        self._retention_seen: set[tuple[str, str, str, str]] = set()

    def study_key(self, study_uid: str) -> StudyKey:
        """The study's data key, created (its key record durable) the first time the study is seen."""
        return self.repository.keys.study_key(study_uid)

    def forget_cached(self) -> None:
        """``Catalog.on_deleted``: a deletion removed studies, so the keep-until facts cached
        here may name rows that are gone (the study keys are the KeyStore's, which forgets
        them itself). Rebinds: called with the catalog's write lock held."""
        self._retention_seen = set()

    def refuse(self, reason: str, source: str, actor: str, kind: str = "invalid") -> IngestRejected:
        """Count and audit a refused instance; the caller raises what this returns."""
        INSTANCES.labels("rejected").inc()
        self._audit_rejection(actor, source, reason)
        return IngestRejected(reason, kind)

    def ingest(self, data: bytes, source: str, actor: str, transfer_syntax: str | None = None,
               wait_for_index: bool = True, affected: tuple[str, str] | None = None,
               rejection_note: bool = False) -> IngestResult:
        """Store Part-10 bytes durably, or raise IngestRejected with a reason. Never partial.

        Returns once the object is durable. With ``wait_for_index`` it also waits for its
        catalog row (group-committed with others), so the result says stored or duplicate;
        without, the row follows within milliseconds and the result's version is 0.
        ``affected``: a C-STORE request's (SOP Class, SOP Instance) UIDs, which the data set
        must carry too. ``rejection_note``: the caller checked the right to send an IOCM
        rejection note and applies it once this returns (ingest/iocm.py); without it, one is
        refused, so every rejection note in the archive is one that was applied.
        """
        started = time.perf_counter()
        try:
            parsed = parse_part10(data, transfer_syntax, affected)
        except DicomFormatError as exc:
            kind = "mismatch" if isinstance(exc, DatasetMismatch) else "invalid"
            raise self.refuse(str(exc), source, actor, kind) from exc
        attrs = parsed.attributes
        if attrs.sop_class_uid == iocm.KOS_SOP_CLASS and not rejection_note:
            refusal = iocm.refusal_elsewhere(data[parsed.dataset_offset:], attrs.transfer_syntax_uid)
            if refusal:
                raise self.refuse(refusal, source, actor)
        encoded: tuple[str, bytes] | None = None
        if len(data) >= OVERLAP_MIN_BYTES:
            hashing = _HASHERS.submit(content_digests, data, attrs.transfer_syntax_uid, parsed.dataset_offset)
            try:
                encoded = self.repository.encode(data, attrs.transfer_syntax_uid)
            finally:
                digest, sha256, dataset_sha256 = hashing.result()
        else:
            digest, sha256, dataset_sha256 = content_digests(data, attrs.transfer_syntax_uid, parsed.dataset_offset)

        with self.catalog.read() as conn:
            existing = self.catalog.find_version_by_content(conn, attrs.sop_instance_uid, dataset_sha256)
            self.catalog.notice_deletions(conn)  # a study deleted since (by any process): a fresh key
        if existing is not None:
            return self._record_duplicate(existing, actor, source)

        received_at = time.time()
        try:
            study_key = self.study_key(attrs.study_uid)
        except Exception as exc:  # noqa: BLE001 - the catalog refused the new key: report, keep serving
            INSTANCES.labels("failed").inc()
            log.warning("cannot record a data key for study %s: %s", attrs.study_uid, exc)
            raise IngestRejected(
                f"{storage_failure_reason(exc)}: study key not recorded; not stored, send again later", kind="storage"
            ) from exc
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
            saved = self.repository.save(study_key, digest, metadata, data, encoded=encoded)
        except SiteError as exc:
            INSTANCES.labels("failed").inc()
            self._audit_rejection(actor, source, str(exc), attrs.sop_instance_uid, outcome="error")
            log.warning("site write failed for %s: %s", attrs.sop_instance_uid, exc)
            raise IngestRejected(
                f"{storage_failure_reason(exc)}: not stored, send again later ({exc})", kind="storage"
            ) from exc
        record = VersionRecord(
            sop_instance_uid=attrs.sop_instance_uid, version=0, object_id=saved.object_id, sha256=sha256,
            dataset_sha256=dataset_sha256, size_original=len(data), size_stored=saved.size_stored,
            transfer_syntax_uid=attrs.transfer_syntax_uid, codec=saved.codec, key_id=study_key.key_id,
            received_at=received_at, source=source,
        )
        future = self.committer.submit(PendingRow(attrs, record, actor, saved.written))
        LATENCY.observe(time.perf_counter() - started)
        if not wait_for_index:
            return IngestResult(attrs.sop_instance_uid, 0, False, saved.object_id)
        try:
            return future.result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - the catalog refused: report, keep serving
            INSTANCES.labels("failed").inc()
            log.warning("catalog commit failed for %s: %s", attrs.sop_instance_uid, exc)
            raise IngestRejected(
                f"{storage_failure_reason(exc)}: catalog not updated, send again later ({exc})", kind="storage"
            ) from exc

    def _commit_rows(self, rows: list[PendingRow]) -> list[IngestResult]:
        """One catalog transaction for a batch of stored objects (the group commit)."""
        with self.catalog.write() as conn:
            return [self._index(conn, row.attrs, row.record, row.actor) for row in rows]

    def _after_commit(self, row: PendingRow, result: IngestResult) -> None:
        if row.written:
            self.durability.committed(result.object_id if not result.duplicate else row.record.object_id)
        if result.duplicate:
            INSTANCES.labels("duplicate").inc()
            return
        INSTANCES.labels("stored").inc()
        BYTES_RECEIVED.inc(row.record.size_original)
        BYTES_STORED.inc(row.record.size_stored)
        for listener in self.on_stored:
            listener()

    def close(self) -> None:
        """Commit what is queued, then harden and release intents."""
        self.committer.stop()
        self.durability.stop()

    def _commit(self, attrs: InstanceAttributes, record: VersionRecord, actor: str, action: str = "store") -> IngestResult:
        with self.catalog.write() as conn:
            return self._index(conn, attrs, record, actor, action)

    def _index(self, conn: Any, attrs: InstanceAttributes, record: VersionRecord, actor: str,
               action: str = "store") -> IngestResult:
        """Catalog rows for one stored object, inside the caller's transaction."""
        existing = self.catalog.find_version_by_content(conn, attrs.sop_instance_uid, record.dataset_sha256)
        if existing is not None:
            duplicate = True
            version = existing.version
            object_id = existing.object_id
        else:
            duplicate = False
            version = self.catalog.add_version(conn, attrs, record)
            object_id = record.object_id
            self.catalog.add_copies(conn, object_id, record.size_stored, record.received_at, self.replicas)
            if self.retention is not None:
                self._follow_retention(conn, attrs, record)
        append(
            conn,
            AuditEvent(
                actor=actor, action=action, subject=attrs.sop_instance_uid,
                outcome="duplicate" if duplicate else "success",
                detail={"study": attrs.study_uid, "version": version, "object": object_id,
                        "bytes": record.size_original, "source": record.source,
                        # for the ATNA message (audit/atna.py): its study and patient objects
                        "sop_class": attrs.sop_class_uid, "patient": attrs.patient_id},
            ),
        )
        return IngestResult(attrs.sop_instance_uid, version, duplicate, object_id)

    def follow_corrections(self, conn: Any, changed: list[tuple[str, int]]) -> None:
        """``Catalog.on_followed``: a newer version changed patient, study or series rows (a
        corrected birth date, Study Date or modality), so the keep-until dates that depend on
        them are recomputed in the same transaction."""
        if self.retention is not None:
            retention.recompute_changed(conn, self.retention, changed)

    def _follow_retention(self, conn: Any, attrs: InstanceAttributes, record: VersionRecord) -> None:
        """Recompute the study's keep-until when it gains what the rules look at (a series, so a
        modality; a SOP class; a sender): a few queries per such change, not per instance. A
        rolled-back batch can leave a study without its row: ``retention.refresh`` (serve start,
        `retention plan`) computes every study that lacks one."""
        key = (attrs.study_uid, attrs.series_uid, attrs.sop_class_uid, record.source.rpartition("@")[0])
        if key in self._retention_seen:
            return
        assert self.retention is not None
        retention.recompute_study(conn, self.retention, attrs.study_uid, record.received_at)
        if len(self._retention_seen) > 100_000:
            self._retention_seen.clear()
        self._retention_seen.add(key)

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

    def _ensure_study_key(self, study_uid: str, blob: bytes) -> None:
        """Re-create a study key row lost with its transaction: from the object's own header, or
        from its key record (the primary's, or one of ``KeyStore.sources``)."""
        header, _ = read_header(blob)
        with self.catalog.write() as conn:
            self.repository.keys.adopt(conn, study_uid, header)

    def adopt(self, object_id: str, blob: bytes, metadata: dict[str, Any], actor: str, action: str,
              size_stored: int | None = None) -> IngestResult:
        """Index an object already stored and verified, from its own sealed metadata (crash
        recovery, or a catalog rebuild meeting objects newer than its snapshot). ``blob`` may be
        the object's first bytes only (its header) when ``size_stored`` gives its size.

        Callers adopt in order of receipt (``metadata["received_at"]``): version numbers are
        given in indexing order, and an instance's newest version is the one its rows follow."""
        self._ensure_study_key(metadata["attributes"]["study_uid"], blob)
        attrs = InstanceAttributes.from_dict(metadata["attributes"])
        record = VersionRecord(
            sop_instance_uid=attrs.sop_instance_uid, version=0, object_id=object_id,
            sha256=metadata["sha256"], dataset_sha256=metadata["dataset_sha256"],
            size_original=int(metadata["size_original"]), size_stored=len(blob) if size_stored is None else size_stored,
            transfer_syntax_uid=attrs.transfer_syntax_uid, codec=metadata["codec"],
            key_id=metadata["key_id"], received_at=float(metadata["received_at"]), source=metadata["source"],
        )
        return self._commit(attrs, record, actor, action=action)

    def reapply_rejection(self, metadata: dict[str, Any], original: bytes, actor: str) -> int:
        """Put a stored IOCM rejection note back in effect (1; 0 for anything else), as when it
        was received: after a crash between its storing and its rejections, or for a note newer
        than the snapshot a catalog was rebuilt from. Only applied notes are ever stored."""
        attrs = metadata.get("attributes", {})
        if attrs.get("sop_class_uid") != iocm.KOS_SOP_CLASS:
            return 0
        try:
            note = iocm.rejection_note(original[int(metadata.get("dataset_offset", 0)):],
                                       str(attrs.get("transfer_syntax_uid", "")))
        except iocm.RejectionNoteError:
            return 0
        if note is None:
            return 0
        apply_rejection(self.catalog, note, actor=actor, source=str(metadata.get("source", "")),
                        received_at=float(metadata["received_at"]), delete_after_seconds=self.rejection_delay,
                        reapplied=True)
        return 1

    def recover(self) -> list[str]:
        """After a crash: re-index complete objects whose commit may have been lost.

        An intent that fails authentication was caught mid-write, so it was never
        acknowledged: it is discarded unless the catalog already points at it (then it is
        left alone for ``verify`` to report).
        """
        unindexed: list[tuple[float, str, dict[str, Any]]] = []
        notes: dict[str, bytes] = {}  # rejection notes among them: put back in effect once indexed
        site = self.repository.site
        for object_id in site.recover():
            with self.catalog.read() as conn:
                known = self.catalog.has_object(conn, object_id)
            try:
                metadata, original = self.repository.load(object_id)
            except (IntegrityError, KeyError) as exc:
                if known:
                    log.error("crash recovery: indexed object %s is unreadable: %s", object_id, exc)
                else:
                    log.warning("crash recovery: discarding incomplete, never acknowledged object %s", object_id)
                    site.discard(object_id)
                continue
            if known:
                self.durability.committed(object_id)
            else:
                unindexed.append((float(metadata.get("received_at", 0.0)), object_id, metadata))
                if metadata.get("attributes", {}).get("sop_class_uid") == iocm.KOS_SOP_CLASS:
                    notes[object_id] = original
        # In the order they were received (intents and journal records come back in name or
        # segment order): two new versions of one instance get their numbers as they came.
        adopted = []
        for _received, object_id, metadata in sorted(unindexed, key=lambda item: item[:2]):
            self.adopt(object_id, site.get(object_id), metadata, "dicomvault:recovery", "recover")
            if object_id in notes:
                self.reapply_rejection(metadata, notes.pop(object_id), "dicomvault:recovery")
            adopted.append(object_id)
            self.durability.committed(object_id)
        self.durability.flush()
        return adopted
