"""In-process archive: recovery-key-only reads, crash-recovery adoption, dedup and versions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest

from dicomvault.archive.core import Archive
from dicomvault.sites.journal import live_records
from dicomvault.archive.disaster import RecoveryReader
from dicomvault.crypto import DecryptionError, RecoveryKey, open_object
from dicomvault.archive.write import IngestRejected



def test_every_object_opens_with_only_the_recovery_key(archive: Archive, ct_small: Path, tmp_path: Path) -> None:
    original = ct_small.read_bytes()
    archive.ingestor.ingest(original, source="test", actor="test")
    recovery = RecoveryKey.load(tmp_path / "recovery-key.pem")
    names = list(archive.site.list())
    assert len(names) == 1
    blob = archive.site.get(names[0])
    assert b"CompressedSamples" not in blob and pydicom.dcmread(ct_small).PatientID.encode() not in blob
    with pytest.raises(DecryptionError, match="carries no key"):
        open_object(blob, recovery=recovery)  # the object alone is not enough: its key lives in a record
    metadata, restored = RecoveryReader(recovery, archive.site).open(blob)  # the site's key record is
    assert restored == original
    assert metadata["sha256"] == hashlib.sha256(original).hexdigest()
    assert metadata["attributes"]["sop_instance_uid"] == pydicom.dcmread(ct_small).SOPInstanceUID


def test_crash_between_object_write_and_commit_is_adopted(archive: Archive, ct_small: Path) -> None:
    """Simulate the crash window: the object is durable, its catalog commit never ran."""
    data = ct_small.read_bytes()
    study_uid = pydicom.dcmread(ct_small).StudyInstanceUID
    key = archive.ingestor.study_key(study_uid)
    from dicomvault.dicom import parse_part10

    parsed = parse_part10(data)
    digest = hashlib.sha256(data)
    metadata = {
        "format": 1, "attributes": parsed.attributes.to_dict(), "sha256": digest.hexdigest(),
        "dataset_sha256": "d" * 64, "dataset_offset": parsed.dataset_offset, "size_original": len(data),
        "received_at": 1.0, "source": "test", "key_id": key.key_id,
    }
    saved = archive.repository.save(key, digest.digest(), metadata, data)
    assert archive.catalog.statistics()["counts"]["versions"] == 0
    assert len(live_records(archive.site.root / "journal")) == 1, "the object was acknowledged through the journal"
    archive.site.close_journal()  # the process dies here: its journal lock goes with it
    reopened = Archive.open(archive.settings)  # a fresh process would do this at start-up
    adopted = reopened.ingestor.recover()
    assert adopted == [saved.object_id]
    assert reopened.catalog.statistics()["counts"]["versions"] == 1
    assert not list(reopened.site.intents.iterdir()), "intent links must be cleared after recovery"
    assert live_records(reopened.site.root / "journal") == [], "journal records must be released after recovery"
    assert reopened.ingestor.recover() == []


def test_duplicate_and_new_version(archive: Archive, ct_small: Path, tmp_path: Path) -> None:
    data = ct_small.read_bytes()
    first = archive.ingestor.ingest(data, source="a", actor="t")
    again = archive.ingestor.ingest(data, source="b", actor="t")
    assert (first.duplicate, again.duplicate, again.version) == (False, True, 1)
    ds = pydicom.dcmread(ct_small)
    ds.PatientName = "Corrected^Name"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    second = archive.ingestor.ingest(changed.read_bytes(), source="c", actor="t")
    assert (second.duplicate, second.version) == (False, 2)
    versions = archive.catalog.versions_for_uid(ds.SOPInstanceUID, all_versions=True)
    assert [v.version for v in versions] == [1, 2]
    assert len(list(archive.site.list())) == 2


@pytest.mark.parametrize(
    "data, reason",
    [(b"hello world, not dicom at all" * 10, "not a DICOM file"), (b"", "not a DICOM file")],
)
def test_garbage_is_refused_with_reason_and_nothing_stored(archive: Archive, data: bytes, reason: str) -> None:
    with pytest.raises(IngestRejected, match=reason):
        archive.ingestor.ingest(data, source="t", actor="t")
    assert list(archive.site.list()) == []
    assert archive.catalog.statistics()["counts"]["versions"] == 0


def test_sealed_bytes_for_copying_come_from_a_verified_replica_when_the_primary_lacks_them(
        archive: Archive, ct_small: Path, tmp_path: Path) -> None:
    """After a rebuild on a new disk the primary is empty while it is refilled; replication to
    a third site must copy a replica's copy that verifies, never a damaged one."""
    from dicomvault.sites import open_site

    result = archive.ingestor.ingest(ct_small.read_bytes(), source="test", actor="test", wait_for_index=True)
    blob = archive.site.get(result.object_id)
    damaged, healthy = open_site(f"file://{tmp_path / 'bad'}"), open_site(f"file://{tmp_path / 'good'}")
    damaged.put_if_absent(result.object_id, blob[:-1] + bytes([blob[-1] ^ 1]))
    healthy.put_if_absent(result.object_id, blob)
    archive.repository.fallbacks = [("bad", lambda: damaged), ("good", lambda: healthy)]

    assert archive.repository.sealed(result.object_id) == blob  # the primary's, while it has it
    archive.site.delete(result.object_id)
    assert archive.repository.sealed(result.object_id) == blob  # "bad" fails to open: "good"'s
    with pytest.raises(KeyError):
        archive.repository.sealed(result.object_id, skip="good")  # the target itself is never the source
