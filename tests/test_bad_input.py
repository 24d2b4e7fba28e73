"""Promise 8: bad input gets a clear error, never a crash and never a partial object.

Every case checks three things: the refusal says why (import report reason, DICOM status
with an Error Comment (0000,0902), or a one-line CLI error), the server keeps serving other
associations (C-ECHO and a good C-STORE, also on the same association and concurrently),
and nothing partial is left (catalog counts, object files on the site, no stray temp file or
write intent).

Faults are real: truncated and foreign files, crafted DIMSE requests from a pynetdicom SCU,
an AE title outside the allow-list, a tmpfs really remounted read-only (or filled up) under
the running server, and stored object files altered on disk.
"""

from __future__ import annotations

import errno
import json
import os
import random
import struct
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from conftest import Vault, dcmtk, make_vault, remount, site_staging, wait_until

STATUS_OUT_OF_RESOURCES = 0xA700


# --- helpers ------------------------------------------------------------------------------


def make_ct(ct_small: Path, dest: Path, study_uid: str | None = None) -> Path:
    """CT_small with fresh UIDs and without the trailing padding item (wire bytes == file bytes)."""
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def dataset_of(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@dataclass(frozen=True)
class Snapshot:
    counts: dict[str, int]
    objects: frozenset[str]
    staging: tuple[str, ...]  # files on the site outside objects/ (temp files, write intents)


def snapshot(vault: Vault) -> Snapshot:
    """Catalog counts and the site's files, read directly (works while the site is read-only)."""
    from dicomvault.catalog import Catalog
    from dicomvault.config import load_settings

    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        counts = catalog.statistics()["counts"]
    finally:
        catalog.close()
    root = vault.site_root()
    objects = root / "objects"
    names = frozenset(p.name for p in objects.rglob("*") if p.is_file())
    staging = tuple(site_staging(root))  # temp files, intents, live journal records
    return Snapshot(counts, names, staging)


def settled_snapshot(vault: Vault) -> Snapshot:
    """Snapshot once the server has released the write intents of what it acknowledged."""
    wait_until(lambda: not snapshot(vault).staging, timeout=30, what="no temp file or write intent on the site")
    return snapshot(vault)


def assert_grew_by(before: Snapshot, after: Snapshot, stored: int) -> None:
    """Exactly ``stored`` good instances were added: no refused one left a row or an object."""
    assert after.counts["instances"] == before.counts["instances"] + stored, (before.counts, after.counts)
    assert after.counts["versions"] == before.counts["versions"] + stored, (before.counts, after.counts)
    assert before.objects <= after.objects
    assert len(after.objects) == len(before.objects) + stored, "an object file was left by a refused instance"
    assert after.staging == (), f"stray temp files / intents: {after.staging}"


def storescu(vault: Vault, *files: Path, aet: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), "-v", "-to", "10", "-aec", vault.ae_title, *(["-aet", aet] if aet else []),
         "127.0.0.1", str(vault.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def echoscu(vault: Vault, aet: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-v", "-to", "10", "-aec", vault.ae_title, "-aet", aet, "127.0.0.1", str(vault.dicom_port)],
        capture_output=True, text=True, timeout=60,
    )


def associate(vault: Vault, calling: str = "BADINPUT") -> object:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title)
    assert assoc.is_established, "association to dicomvault refused"
    return assoc


@pytest.fixture
def raw_file_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's dataset bytes exactly as they are on disk (no decode/re-encode),
    taking the Affected SOP Class/Instance UIDs from the file meta: our way to put any bytes on
    the wire inside a well-formed C-STORE."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def assert_good_store_works(vault: Vault, ct_small: Path, dest: Path) -> Path:
    good = make_ct(ct_small, dest)
    sent = storescu(vault, good)
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr
    return good


def http_get(vault: Vault, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{vault.http_port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


# --- a shared running vault for the input cases -------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    vault = make_vault(tmp_path_factory.mktemp("bad-input") / "vault")
    vault.start()
    yield vault
    vault.stop()


@pytest.fixture
def shared(served: Vault) -> Iterator[Vault]:
    assert served.process is not None and served.process.poll() is None, "the server died:\n" + served.log()[-3000:]
    yield served
    assert served.process.poll() is None, "the server died:\n" + served.log()[-3000:]
    assert served.echo(), "the server stopped answering C-ECHO"


# Where to cut CT_small (meta ~336 bytes; UIDs end ~2260; Pixel Data header at ~6290; 39 kB).
TRUNCATIONS = {
    "half-inside-pixel-data": lambda data: len(data) // 2,
    "inside-dataset-header-after-uids": lambda data: data.find(b"\xe0\x7f\x10\x00OW") - 1500,
    "inside-dataset-header-before-study-uid": lambda data: data.find(b"\x20\x00\x0d\x00UI") - 3,
    "inside-pixel-data-last-byte": lambda data: len(data) - 1,
}


def truncated_copy(ct_small: Path, dest_dir: Path, how: str) -> tuple[Path, Path]:
    whole = make_ct(ct_small, dest_dir / f"whole-{how}.dcm")
    data = whole.read_bytes()
    cut = TRUNCATIONS[how](data)
    assert 400 < cut < len(data)
    part = dest_dir / f"truncated-{how}.dcm"
    part.write_bytes(data[:cut])
    return whole, part


# --- truncated files via import -----------------------------------------------------------


@pytest.mark.parametrize("how", [*TRUNCATIONS, "inside-file-meta"])
def test_import_refuses_truncated_file(shared: Vault, ct_small: Path, tmp_path: Path, how: str) -> None:
    if how == "inside-file-meta":
        whole = make_ct(ct_small, tmp_path / "whole.dcm")
        part = tmp_path / "truncated-meta.dcm"
        part.write_bytes(whole.read_bytes()[:200])
    else:
        whole, part = truncated_copy(ct_small, tmp_path, how)
    before = settled_snapshot(shared)

    run = shared.cli("import", "--json", str(part), check=False)
    assert run.returncode != 0, f"import of only a truncated file exited 0: {run.stdout}"
    report = json.loads(run.stdout)
    assert report["stored"] == 0 and report["duplicates"] == 0, report
    (refused,) = report["refused"]
    assert refused["path"] == str(part)
    assert "truncat" in refused["reason"].lower(), f"reason does not say the file is truncated: {refused['reason']!r}"

    after = settled_snapshot(shared)
    assert_grew_by(before, after, 0)
    # The server kept serving meanwhile, and the whole file is still accepted afterwards.
    assert shared.echo()
    sent = storescu(shared, whole)
    assert sent.returncode == 0 and "(Success)" in sent.stderr, sent.stderr
    assert_grew_by(after, settled_snapshot(shared), 1)


def test_import_mixed_folder_stores_good_and_lists_truncated(shared: Vault, ct_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    good = make_ct(ct_small, folder / "a-good.dcm")
    _whole, part = truncated_copy(ct_small, folder, "half-inside-pixel-data")
    (folder / f"whole-half-inside-pixel-data.dcm").unlink()
    before = settled_snapshot(shared)
    run = shared.cli("import", "--json", str(folder), check=False)
    assert run.returncode == 0, f"import with one good file must succeed: {run.stderr}"
    report = json.loads(run.stdout)
    assert report["stored"] == 1, report
    assert [r["path"] for r in report["refused"]] == [str(part)], report
    assert_grew_by(before, settled_snapshot(shared), 1)
    got = tmp_path / "got"
    shared.cli("get", pydicom.dcmread(good).SOPInstanceUID, "--out", str(got))
    (only,) = list(got.rglob("*.dcm"))
    assert only.read_bytes() == good.read_bytes()


# --- truncated datasets over DIMSE --------------------------------------------------------


@pytest.mark.parametrize("how", list(TRUNCATIONS))
def test_c_store_of_truncated_dataset_gets_failure_status(
    shared: Vault, ct_small: Path, tmp_path: Path, how: str, raw_file_sending: None
) -> None:
    whole, part = truncated_copy(ct_small, tmp_path, how)
    assert len(dataset_of(part)) < len(dataset_of(whole))
    before = settled_snapshot(shared)

    assoc = associate(shared)
    other = associate(shared, "CONCURRENT")
    try:
        # A second association stores a good instance while the bad one is on the first.
        good_elsewhere = make_ct(ct_small, tmp_path / "concurrent.dcm")
        result: dict[str, Dataset] = {}
        sender = threading.Thread(target=lambda: result.setdefault("status", other.send_c_store(good_elsewhere)))
        sender.start()
        status = assoc.send_c_store(part)
        sender.join(timeout=60)
        assert "Status" in status, f"no C-STORE response for a truncated dataset ({how}): the server dropped it"
        assert status.Status != 0x0000, f"truncated dataset ({how}) was acknowledged as stored"
        assert status.Status >= 0xA000 or status.Status in (0x0110, 0x0117, 0x0122), hex(status.Status)
        comment = str(status.get("ErrorComment", ""))
        assert comment, "failure status without Error Comment (0000,0902)"
        assert "truncat" in comment.lower(), f"Error Comment does not say the data is truncated: {comment!r}"
        assert result["status"].Status == 0x0000, "the concurrent good C-STORE failed"

        # The same association still works: echo and a good store.
        assert assoc.send_c_echo().Status == 0x0000
        good = make_ct(ct_small, tmp_path / "after.dcm")
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()
        other.release()
    assert shared.echo()
    assert_grew_by(before, settled_snapshot(shared), 2)


# --- foreign files via import -------------------------------------------------------------


def foreign_files(dest: Path) -> dict[str, Path]:
    rng = random.Random(20240508)
    files = {
        "text": b"Patient list, do not archive\nDoe^Jane,1970\n" * 40,
        "random": rng.randbytes(8192),
        "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x02\x00\x00\x00" + rng.randbytes(2000),
        "empty": b"",
        "dicm-then-garbage": b"\x00" * 128 + b"DICM" + rng.randbytes(3000),
        "zip": b"PK\x03\x04" + rng.randbytes(1500),
    }
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in files.items():
        paths[name] = dest / f"{name}.bin"
        paths[name].write_bytes(data)
    return paths


def test_import_refuses_non_dicom_files(shared: Vault, tmp_path: Path, ct_small: Path) -> None:
    paths = foreign_files(tmp_path / "junk")
    before = settled_snapshot(shared)
    run = shared.cli("import", "--json", *map(str, paths.values()), check=False)
    assert run.returncode != 0, "import of only non-DICOM files exited 0"
    report = json.loads(run.stdout)
    assert report["stored"] == 0 and report["duplicates"] == 0, report
    reasons = {r["path"]: r["reason"] for r in report["refused"]}
    assert set(reasons) == {str(p) for p in paths.values()}, report
    for name, path in paths.items():
        reason = reasons[str(path)]
        said = ("dicom", "meta", "bytes", "truncat")
        assert any(word in reason.lower() for word in said), f"{name}: unclear reason {reason!r}"
        assert "\n" not in reason and len(reason) < 300, f"{name}: reason is not one short line: {reason!r}"
    after = settled_snapshot(shared)
    assert_grew_by(before, after, 0)
    assert shared.echo()
    assert_good_store_works(shared, ct_small, tmp_path / "good.dcm")
    assert_grew_by(after, settled_snapshot(shared), 1)


# --- a dataset without SOP Instance UID ---------------------------------------------------


def test_c_store_without_sop_instance_uid_names_the_attribute(
    shared: Vault, ct_small: Path, tmp_path: Path, raw_file_sending: None
) -> None:
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    affected = generate_uid()
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = affected  # becomes the request's Affected SOP Instance UID
    path = tmp_path / "no-sop-instance-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert "SOPInstanceUID" not in pydicom.dcmread(path)

    # pynetdicom refuses, client side, to send such a Dataset object itself:
    assoc = associate(shared)
    try:
        with pytest.raises(AttributeError, match="SOPInstanceUID"):
            assoc.send_c_store(pydicom.dcmread(path))
        before = settled_snapshot(shared)
        # ...so the request is built from the file: Affected SOP Instance UID set, dataset without it.
        status = assoc.send_c_store(path)
        assert "Status" in status, "no C-STORE response"
        assert status.Status != 0x0000, "a dataset without SOP Instance UID was stored"
        comment = str(status.get("ErrorComment", ""))
        assert "SOPInstanceUID" in comment or "0008,0018" in comment, f"Error Comment: {comment!r}"
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(make_ct(ct_small, tmp_path / "good.dcm")).Status == 0x0000
    finally:
        assoc.release()
    assert_grew_by(before, settled_snapshot(shared), 1)
    assert shared.cli("audit", "verify", check=False).returncode == 0


# --- calling AE title allow-list ----------------------------------------------------------


def test_unknown_calling_ae_title_is_rejected_at_association(vault: Vault, ct_small: Path, tmp_path: Path) -> None:
    vault.set_config("dicom", "allowed_calling_aets", '["GOODPACS"]')
    # conftest's readiness probe calls as ECHOSCU, which the allow-list rightly rejects.
    vault.echo = lambda: echoscu(vault, "GOODPACS").returncode == 0  # type: ignore[method-assign]
    vault.start()

    evil_echo = echoscu(vault, "EVIL")
    assert evil_echo.returncode != 0
    assert "Association Rejected" in evil_echo.stderr, evil_echo.stderr
    assert "Calling AE Title Not Recognized" in evil_echo.stderr, evil_echo.stderr

    instance = make_ct(ct_small, tmp_path / "ct.dcm")
    evil_store = storescu(vault, instance, aet="EVIL")
    assert evil_store.returncode != 0, evil_store.stderr
    assert "Association Rejected" in evil_store.stderr and "Calling AE Title Not Recognized" in evil_store.stderr
    assert "Received Store Response" not in evil_store.stderr
    assert snapshot(vault).counts["instances"] == 0

    assert echoscu(vault, "GOODPACS").returncode == 0
    good_store = storescu(vault, instance, aet="GOODPACS")
    assert good_store.returncode == 0 and "Received Store Response (Success)" in good_store.stderr, good_store.stderr
    # The ack comes once the write intent is durable; the catalog row follows by group commit.
    vault.wait_settled()
    assert snapshot(vault).counts["instances"] == 1
    # A pynetdicom caller outside the list is turned away the same way.
    ae = AE(ae_title="EVIL")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title)
    assert assoc.is_rejected
    assert vault.process is not None and vault.process.poll() is None


# --- storage that becomes read-only (or full) while the server runs -----------------------


def assert_refused(refusals: dict[str, Dataset], wanted: int, reason: str) -> None:
    """Every C-STORE got ``wanted`` with an Error Comment containing ``reason``; lists all misses."""
    seen = {
        label: (f"{status.Status:#06x}" if "Status" in status else "no response", str(status.get("ErrorComment", "")))
        for label, status in refusals.items()
    }
    wrong = {label: got for label, got in seen.items() if got[0] != f"{wanted:#06x}" or reason not in got[1]}
    assert not wrong, f"wanted status {wanted:#06x} with an Error Comment saying {reason!r}; got {wrong}"


def store_status(vault: Vault, path: Path) -> Dataset:
    assoc = associate(vault)
    try:
        status = assoc.send_c_store(path)
        echo = assoc.send_c_echo()
        assert getattr(echo, "Status", None) == 0x0000, (
            f"association unusable after the refused store (aborted: {assoc.is_aborted}, store status: "
            f"{getattr(status, 'Status', None)}); server log tail:\n{vault.log()[-3000:]}")
        return status
    finally:
        assoc.release()


def test_object_site_turning_read_only_refuses_with_a_reason_then_recovers(
    vault: Vault, tmpfs: Path, ct_small: Path, tmp_path: Path
) -> None:
    vault.set_config("sites.primary", "url", f'"file://{tmpfs}/site"')
    # The write-ahead journal keeps its segments open for writing, and the kernel refuses a
    # read-only remount (EBUSY) while any file is: this fault is produced on the intent path.
    vault.set_config("storage", "journal", "false")
    try:
        vault.start()
        wait_until(lambda: http_get(vault, "/healthz")[0] == 200, what="/healthz 200")
        first = assert_good_store_works(vault, ct_small, tmp_path / "first.dcm")
        study = pydicom.dcmread(first).StudyInstanceUID
        before = settled_snapshot(vault)

        remount(tmpfs, "ro")
        refusals = {}
        for label, instance in (
            ("known study", make_ct(ct_small, tmp_path / "same-study.dcm", study_uid=study)),
            ("new study", make_ct(ct_small, tmp_path / "new-study.dcm")),
        ):
            refusals[label] = store_status(vault, instance)
        assert_refused(refusals, STATUS_OUT_OF_RESOURCES, "read-only")
        assert vault.echo(), "C-ECHO failed while the site is read-only"
        code, body = http_get(vault, "/healthz")
        assert code == 503 and body.get("status") == "degraded", (code, body)
        assert "read-only" in json.dumps(body), body
        assert_grew_by(before, snapshot(vault), 0)

        remount(tmpfs, "rw")
        wait_until(lambda: http_get(vault, "/healthz")[0] == 200, what="/healthz back to 200")
        again = make_ct(ct_small, tmp_path / "after.dcm", study_uid=study)
        assert store_status(vault, again).Status == 0x0000
        assert store_status(vault, tmp_path / "new-study.dcm").Status == 0x0000
        assert_grew_by(before, settled_snapshot(vault), 2)
        got = tmp_path / "got"
        vault.cli("get", pydicom.dcmread(again).SOPInstanceUID, "--out", str(got))
        (only,) = list(got.rglob("*.dcm"))
        assert dataset_of(only) == dataset_of(again)
        assert vault.cli("audit", "verify", check=False).returncode == 0
    finally:
        vault.stop()  # before the tmpfs fixture unmounts


def fill_up(filler: Path) -> None:
    """Write until the filesystem has not one block left."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_data_dir_filling_up_refuses_with_a_reason_then_recovers(tmpfs: Path, ct_small: Path, tmp_path: Path) -> None:
    """Catalog and objects on one small disk that fills up (a read-only remount is impossible
    while SQLite holds its files open for writing: the kernel answers EBUSY)."""
    vault = make_vault(tmpfs / "vault")
    filler = tmpfs / "filler"
    try:
        vault.start()
        first = assert_good_store_works(vault, ct_small, tmp_path / "first.dcm")
        study = pydicom.dcmread(first).StudyInstanceUID
        before = settled_snapshot(vault)
        fill_up(filler)
        refusals = {}
        for label, instance in (
            ("known study", make_ct(ct_small, tmp_path / "same-study.dcm", study_uid=study)),
            ("new study", make_ct(ct_small, tmp_path / "new-study.dcm")),
        ):
            refusals[label] = store_status(vault, instance)
        assert_refused(refusals, STATUS_OUT_OF_RESOURCES, "full")
        assert vault.echo()
        assert_grew_by(before, snapshot(vault), 0)

        filler.unlink()
        assert store_status(vault, tmp_path / "new-study.dcm").Status == 0x0000
        assert_grew_by(before, settled_snapshot(vault), 1)
        assert vault.cli("audit", "verify", check=False).returncode == 0
    finally:
        vault.stop()
        filler.unlink(missing_ok=True)


# --- stored objects altered on disk -------------------------------------------------------


def tamper_ciphertext(blob: bytes) -> bytes:
    (header_len,) = struct.unpack(">I", blob[8:12])
    body = 12 + header_len
    pos = body + (len(blob) - body) // 2
    return blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :]


def tamper_key_id(blob: bytes) -> bytes:
    """Point the header at another study's key: the header is authenticated with every segment,
    and no catalog row or key record has that id, so it must fail either way."""
    (header_len,) = struct.unpack(">I", blob[8:12])
    header = json.loads(blob[12 : 12 + header_len])
    key_id = header["key_id"]
    altered = key_id[:16] + ("0" if key_id[16] != "0" else "1") + key_id[17:]
    start = blob.index(key_id.encode(), 12)
    return blob[:start] + altered.encode() + blob[start + len(key_id) :]


TAMPERING = {
    "ciphertext-byte-flipped": tamper_ciphertext,
    "header-key-id-altered": tamper_key_id,
    "truncated-to-half": lambda blob: blob[: len(blob) // 2],
    "truncated-inside-header": lambda blob: blob[:20],
    "last-byte-dropped": lambda blob: blob[:-1],
}


@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory, ct_small: Path) -> tuple[Vault, dict[str, Path], Path]:
    """One archive holding an untouched instance and one instance per kind of damage, in one study."""
    root = tmp_path_factory.mktemp("tampered")
    vault = make_vault(root / "vault")
    study = generate_uid()
    files = {name: make_ct(ct_small, root / "in" / f"{name}.dcm", study_uid=study) for name in ["intact", *TAMPERING]}
    report = json.loads(vault.cli("import", "--json", str(root / "in")).stdout)
    assert report["stored"] == len(files), report

    from dicomvault.catalog import Catalog
    from dicomvault.config import load_settings

    catalog = Catalog(load_settings(vault.config).catalog_url)
    try:
        for name, tamper in TAMPERING.items():
            (record,) = catalog.versions_for_uid(pydicom.dcmread(files[name]).SOPInstanceUID)
            oid = record.object_id
            path = vault.site_root() / "objects" / oid[:2] / oid[2:4] / oid
            assert path.is_file(), path
            blob = path.read_bytes()
            os.chmod(path, 0o644)
            path.write_bytes(tamper(blob))
            os.chmod(path, 0o444)
            assert path.read_bytes() != blob
    finally:
        catalog.close()
    return vault, files, root


@pytest.mark.parametrize("damage", list(TAMPERING))
def test_get_of_altered_object_fails_loudly_and_writes_nothing(
    tampered: tuple[Vault, dict[str, Path], Path], damage: str, tmp_path: Path
) -> None:
    vault, files, _root = tampered
    sop = pydicom.dcmread(files[damage]).SOPInstanceUID
    out = tmp_path / "out"
    run = vault.cli("get", sop, "--out", str(out), check=False)
    assert run.returncode != 0, f"get of a {damage} object succeeded"
    error = run.stderr.strip()
    assert error.count("\n") == 0, f"not a one-line error: {error!r}"
    assert sop in error, error
    words = ("authentic", "altered", "truncat", "corrupt", "damaged", "cannot be trusted")
    assert any(w in error.lower() for w in words), f"error does not say the object is damaged: {error!r}"
    if damage == "ciphertext-byte-flipped":
        assert "authentication" in error, error
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], f"get wrote files for a damaged object: {written}"


def test_get_of_study_with_altered_objects_never_writes_a_wrong_file(
    tampered: tuple[Vault, dict[str, Path], Path], tmp_path: Path
) -> None:
    vault, files, _root = tampered
    intact = pydicom.dcmread(files["intact"])
    alone = tmp_path / "intact"
    vault.cli("get", intact.SOPInstanceUID, "--out", str(alone))
    (only,) = list(alone.rglob("*.dcm"))
    assert only.read_bytes() == files["intact"].read_bytes()

    out = tmp_path / "study"
    run = vault.cli("get", intact.StudyInstanceUID, "--out", str(out), check=False)
    assert run.returncode != 0, "get of a study with damaged objects exited 0"
    originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in files.values()}
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert path.suffix == ".dcm", f"leftover partial file {path}"
        assert path.read_bytes() == originals[path.stem], f"{path} differs from what was stored"
    verify = vault.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stderr
