"""The primary file site's write-ahead journal (sites/journal.py), in-process.

What is checked: an acknowledged object survives the death of the process at every point
(record only, object file missing or cut short), a record torn by a crash is discarded and
never indexed, a reused segment does not bring back released records, a second process falls
back to intent files, and the group commit keeps every concurrent append.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pydicom
import pytest

from dicomvault.archive.core import Archive
from dicomvault.sites.file import FileSite
from dicomvault.sites.journal import HEADER_SIZE, Journal, JournalUnavailable, live_records

SEGMENT = 1024 * 1024  # small segments so a test fills and reuses them


def names(count: int, tag: str = "a") -> list[str]:
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(count)]


def test_records_survive_the_process_and_released_ones_stay_released(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_size=SEGMENT)
    tickets = {name: journal.append(name, name.encode() * 100) for name in names(5)}
    for name in names(5)[:2]:
        journal.release(tickets[name])
    journal.close()  # the process dies: nothing flushed beyond what append already did

    again = Journal(tmp_path / "j", segment_size=SEGMENT)
    recovered = again.recovered()
    assert [r.name for r in recovered] == names(5)[2:]
    assert all(r.data == r.name.encode() * 100 for r in recovered)
    assert sorted(live_records(tmp_path / "j")) == sorted(names(5)[2:])


def test_a_reused_segment_does_not_bring_back_released_records(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_size=SEGMENT, max_segments=2)
    blob = os.urandom(300 * 1024)
    first = [journal.append(name, blob) for name in names(3, "first")]  # fills segment 1
    for ticket in first:
        journal.release(ticket)
    second = [journal.append(name, blob) for name in names(6, "second")]  # segment 2, then 1 again
    assert all(ticket is not None for ticket in second)
    assert {ticket.segment.index for ticket in second} == {1, 2}
    journal.close()

    recovered = Journal(tmp_path / "j", segment_size=SEGMENT, max_segments=2).recovered()
    assert sorted(r.name for r in recovered) == sorted(names(6, "second"))


def test_a_full_journal_hands_the_object_back_to_the_caller(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_size=SEGMENT, max_segments=1)
    blob = os.urandom(400 * 1024)
    assert journal.append(names(1)[0], blob) is not None
    assert journal.append(names(2)[1], blob) is not None
    assert journal.append(names(3)[2], blob) is None, "no room left: the caller must take its own path"
    assert journal.append(names(1, "big")[0], os.urandom(SEGMENT)) is None, "larger than a segment"


def test_concurrent_appends_are_all_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_size=4 * SEGMENT)
    blobs = {name: os.urandom(20_000) for name in names(200)}
    todo = list(blobs)

    def sender(part: list[str]) -> None:
        for name in part:
            assert journal.append(name, blobs[name]) is not None

    threads = [threading.Thread(target=sender, args=(todo[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.close()
    recovered = Journal(tmp_path / "j", segment_size=4 * SEGMENT).recovered()
    assert {r.name: r.data for r in recovered} == blobs


def test_a_second_process_cannot_take_the_journal_and_the_site_falls_back(tmp_path: Path) -> None:
    owner = FileSite(tmp_path / "site")
    assert owner.enable_journal()
    with pytest.raises(JournalUnavailable, match="in use by another process"):
        Journal(tmp_path / "site" / "journal")
    other = FileSite(tmp_path / "site")
    assert not other.enable_journal()
    name = names(1)[0]
    assert other.put_if_absent(name, b"sealed bytes")
    assert list((tmp_path / "site" / "intents").iterdir()), "without the journal: an intent file"
    assert other.get(name) == b"sealed bytes"


def test_the_site_serves_an_object_before_and_after_its_file_is_written(tmp_path: Path) -> None:
    site = FileSite(tmp_path / "site")
    assert site.enable_journal()
    name, data = names(1)[0], os.urandom(100_000)
    assert site.put_if_absent(name, data) is True
    assert site.put_if_absent(name, data) is False, "the same content-addressed object is stored once"
    assert site.get(name) == data and site.stat(name) == len(data)
    assert list(site.list()) == [name]
    site.flush()
    assert site.path_of(name).read_bytes() == data
    assert list(site.list()) == [name]
    assert live_records(tmp_path / "site" / "journal") == [name], "released only after the catalog is hardened"
    assert site.health()["journal_pending"] == 1
    site.release_intents([name])
    assert live_records(tmp_path / "site" / "journal") == []
    assert site.health()["journal_pending"] == 0 and site.health()["ok"]


def crash_after_ack(archive: Archive, ct: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Ingest one instance (acknowledged: in the journal), then 'die' before its row commits
    (the kill -9 tests in test_crash_safety.py do this to a real server, at random points)."""
    monkeypatch.setattr(archive.ingestor.committer, "submit", lambda row: row.future)  # never committed
    archive.ingestor.ingest(ct.read_bytes(), source="test", actor="test", wait_for_index=False)
    site = archive.site
    assert isinstance(site, FileSite)
    site.close_journal()
    (name,) = live_records(site.root / "journal")
    return name


@pytest.fixture
def crashed(archive: Archive, ct_small: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Archive, str]:
    return archive, crash_after_ack(archive, ct_small, monkeypatch)


def test_an_object_file_cut_short_by_the_crash_is_rewritten_from_the_journal(crashed, ct_small: Path) -> None:
    archive, name = crashed
    path = archive.site.path_of(name)
    sealed = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(sealed[: len(sealed) // 3])  # what a power cut can leave of an unsynced file

    reopened = Archive.open(archive.settings)
    assert reopened.ingestor.recover() == [name]
    assert path.read_bytes() == sealed
    got = reopened.repository.load_dataset(name)
    assert got and pydicom.dcmread(ct_small).SOPInstanceUID.encode() in got
    assert reopened.catalog.statistics()["counts"]["versions"] == 1
    assert live_records(reopened.site.root / "journal") == []


def test_an_object_file_missing_after_the_crash_is_written_from_the_journal(crashed) -> None:
    archive, name = crashed
    path = archive.site.path_of(name)
    sealed = path.read_bytes()
    path.unlink()
    reopened = Archive.open(archive.settings)
    assert reopened.ingestor.recover() == [name]
    assert path.read_bytes() == sealed
    assert reopened.catalog.statistics()["counts"]["versions"] == 1


def test_a_torn_record_is_discarded_and_never_indexed(crashed) -> None:
    archive, name = crashed
    journal_dir = archive.site.root / "journal"
    segment = next(p for p in sorted(journal_dir.glob("seg-*")))
    with open(segment, "r+b") as f:  # the crash came before the flush: the record's tail is zeros
        f.seek(HEADER_SIZE + 2000)
        f.write(bytes(1000))
    archive.site.path_of(name).unlink()
    reopened = Archive.open(archive.settings)
    assert reopened.ingestor.recover() == []
    assert reopened.catalog.statistics()["counts"]["versions"] == 0
    assert not reopened.site.path_of(name).exists(), "a torn, never acknowledged object must not be kept"
    assert live_records(journal_dir) == []


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "intent-files"])
def test_versions_acknowledged_before_a_crash_are_numbered_in_the_order_they_came(
        archive: Archive, ct_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: bool) -> None:
    """Six versions of one instance, durable and none indexed: recovery numbers them as they
    were received, not in the (random) order of their object names (intent files)."""
    monkeypatch.setattr(archive.ingestor.committer, "submit", lambda row: row.future)
    if not journal:
        archive.site.close_journal()  # objects take the intent-file path
    names_in_order = []
    for k in range(6):
        variant = pydicom.dcmread(ct_small)
        variant.ImageComments = f"version {k + 1}"
        path = tmp_path / f"v{k}.dcm"
        variant.save_as(path, enforce_file_format=True)
        names_in_order.append(archive.ingestor.ingest(path.read_bytes(), source="test", actor="test",
                                                      wait_for_index=False).object_id)
    archive.site.close_journal()

    reopened = Archive.open(archive.settings)
    assert sorted(reopened.ingestor.recover()) == sorted(names_in_order)
    versions = reopened.catalog.versions_for_uid(pydicom.dcmread(ct_small).SOPInstanceUID, all_versions=True)
    assert [v.object_id for v in sorted(versions, key=lambda v: v.version)] == names_in_order
