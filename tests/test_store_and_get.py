"""C-STORE in, `get` out: the dataset bytes that crossed the wire come back unchanged."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pydicom
import pytest

from conftest import Vault, dcmtk


def dataset_bytes(path: Path) -> bytes:
    from dicomvault.dicom import parse_part10

    data = path.read_bytes()
    return data[parse_part10(data).dataset_offset :]


def storescu(vault: Vault, *files: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), "-aec", vault.ae_title, *extra, "127.0.0.1", str(vault.dicom_port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def ct_clean(ct_small: Path, tmp_path: Path) -> Path:
    """CT_small without the trailing padding item storescu drops, so the wire bytes equal the file's."""
    ds = pydicom.dcmread(ct_small)
    del ds[0xFFFCFFFC]
    path = tmp_path / "ct_clean.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_store_then_get_returns_identical_dataset(running_vault: Vault, ct_clean: Path, tmp_path: Path) -> None:
    ct_small = ct_clean
    sent = storescu(running_vault, ct_small)
    assert sent.returncode == 0, sent.stderr
    running_vault.wait_settled()
    uid = pydicom.dcmread(ct_small).SOPInstanceUID
    running_vault.cli("get", uid, "--out", str(tmp_path / "out"))
    (got,) = list((tmp_path / "out").rglob("*.dcm"))
    assert dataset_bytes(got) == dataset_bytes(ct_small)
    got_ds = pydicom.dcmread(got)
    assert got_ds.file_meta.TransferSyntaxUID == pydicom.dcmread(ct_small).file_meta.TransferSyntaxUID


def test_same_instance_twice_is_stored_once(running_vault: Vault, ct_small: Path) -> None:
    for _ in range(2):
        assert storescu(running_vault, ct_small).returncode == 0
    running_vault.wait_settled()
    status = running_vault.status()
    assert status["counts"]["instances"] == 1
    assert status["counts"]["versions"] == 1
    assert status["audit"]["chain_ok"] is True


def test_changed_bytes_become_a_new_version_and_both_are_kept(running_vault: Vault, ct_clean: Path, tmp_path: Path) -> None:
    ct_small = ct_clean
    ds = pydicom.dcmread(ct_small)
    ds.StudyDescription = "corrected description"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    assert storescu(running_vault, ct_small).returncode == 0
    assert storescu(running_vault, changed).returncode == 0
    running_vault.wait_settled()
    out = tmp_path / "all"
    running_vault.cli("get", ds.SOPInstanceUID, "--out", str(out), "--all-versions")
    files = sorted(out.rglob("*.dcm"))
    assert [f.name.rsplit(".", 2)[-2] for f in files] == ["v1", "v2"]
    assert {hashlib.sha256(dataset_bytes(f)).hexdigest() for f in files} == {
        hashlib.sha256(dataset_bytes(ct_small)).hexdigest(),
        hashlib.sha256(dataset_bytes(changed)).hexdigest(),
    }
    latest = tmp_path / "latest"
    running_vault.cli("get", ds.SOPInstanceUID, "--out", str(latest))
    (only,) = list(latest.rglob("*.dcm"))
    assert pydicom.dcmread(only).StudyDescription == "corrected description"


def test_four_parallel_associations_all_stored(running_vault: Vault, ct_clean: Path, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    study = generate_uid()
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        series = generate_uid()
        for i in range(25):
            ds = pydicom.dcmread(ct_clean)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        folders.append(folder)
    procs = [
        subprocess.Popen(
            [dcmtk("storescu"), "-aet", f"SENDER{n}", "-aec", running_vault.ae_title, "+sd",
             "127.0.0.1", str(running_vault.dicom_port), str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for n, folder in enumerate(folders)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    running_vault.wait_settled()
    status = running_vault.status()
    assert status["counts"]["instances"] == 100 and status["counts"]["series"] == 4
    assert status["audit"]["chain_ok"] is True
    running_vault.cli("get", study, "--out", str(tmp_path / "out"))
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 100
