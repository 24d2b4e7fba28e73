"""A real Orthanc, acting as the hospital's PACS, forwards a study to dicomvault.

This is the deployment the README describes: the PACS's archive/forward destination is
dicomvault. Orthanc receives a small mixed study over REST (uncompressed CT plus JPEG 2000 and
JPEG-LS MR instances), then pushes it with ``POST /modalities/{id}/store`` (C-STORE SCU), exactly
what an auto-forward rule does. What comes back from ``dicomvault get`` must be the dataset
Orthanc holds, byte for byte, in the transfer syntax Orthanc holds it in (nothing transcoded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import Vault
from orthanc import Orthanc, OrthancError, orthanc, orthanc_factory  # noqa: F401

PATIENT_ID = "DV-FWD-0001"
CT_COUNT = 3
# Compressed instances Orthanc must forward natively (dicomvault accepts any transfer syntax).
COMPRESSED = {
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
}


def dataset_bytes(data: bytes) -> bytes:
    from dicomvault.dicom import parse_part10

    return data[parse_part10(data).dataset_offset :]


def conformant(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Fix what a DICOM sender's toolkit rewrites on the wire, so Orthanc's stored file is what it sends.

    pydicom's MR_small_jp2k/jpeg_ls files carry trailing dataset padding (FFFC,FFFC) and encapsulated
    Pixel Data with VR OW; Orthanc's C-STORE SCU (DCMTK) drops the padding and sends OB, as the
    standard requires, so its wire bytes would differ from its own stored file.
    """
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds["PixelData"].VR = "OB"
    return ds


def make_study(dest: Path) -> tuple[str, list[Path]]:
    """One study, one patient: CT_COUNT CT instances in one series + one series per compressed file."""
    dest.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    files: list[Path] = []

    ct_series = generate_uid()
    for i in range(CT_COUNT):
        ds = conformant(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ct_series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = PATIENT_ID
        ds.InstanceNumber = i + 1
        path = dest / f"ct_{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)

    for name, syntax in COMPRESSED.items():
        ds = conformant(pydicom.dcmread(get_testdata_file(name)))
        assert ds.file_meta.TransferSyntaxUID == syntax, f"{name} is no longer {syntax}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = PATIENT_ID
        path = dest / name
        ds.save_as(path, enforce_file_format=True)  # encapsulated pixel data is written as read
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        files.append(path)
    return study_uid, files


def test_orthanc_forwards_study_to_dicomvault(running_vault: Vault, orthanc: Orthanc, tmp_path: Path) -> None:
    study_uid, files = make_study(tmp_path / "study")

    # The PACS receives the study.
    uploaded = [orthanc.upload(f) for f in files]
    assert {u["Status"] for u in uploaded} == {"Success"}, uploaded
    study_ids = {u["ParentStudy"] for u in uploaded}
    assert len(study_ids) == 1, f"Orthanc split the study: {uploaded}"
    (orthanc_study,) = study_ids
    orthanc_instances = orthanc.rest("GET", f"/studies/{orthanc_study}/instances")
    assert len(orthanc_instances) == len(files)

    # What Orthanc holds, per SOP Instance UID: its stored Part-10 file and transfer syntax.
    held: dict[str, tuple[bytes, str]] = {}
    for inst in orthanc_instances:
        sop_uid = inst["MainDicomTags"]["SOPInstanceUID"]
        held[sop_uid] = (orthanc.instance_file(inst["ID"]), orthanc.instance_metadata(inst["ID"], "TransferSyntax"))
    assert sorted(ts for _, ts in held.values()) == sorted(
        ["1.2.840.10008.1.2.1"] * CT_COUNT + list(COMPRESSED.values())
    ), "Orthanc transcoded on ingest; the test would not show native forwarding"

    # Point the PACS's forward destination at dicomvault; C-ECHO first, as an admin would.
    orthanc.add_modality("dicomvault", running_vault.ae_title, "127.0.0.1", running_vault.dicom_port)
    try:
        orthanc.echo("dicomvault")
    except OrthancError as exc:
        raise AssertionError(f"{exc}\n--- dicomvault log ---\n{running_vault.log()}") from None

    try:
        result = orthanc.store_to_modality("dicomvault", [orthanc_study])
    except OrthancError as exc:
        raise AssertionError(f"{exc}\n--- dicomvault log ---\n{running_vault.log()}") from None
    assert result.get("FailedInstancesCount") == 0, f"{result}\n--- dicomvault log ---\n{running_vault.log()}"
    assert result.get("InstancesCount") == len(files), result
    assert result.get("RemoteAet") == running_vault.ae_title, result

    # The catalog lists the study (once the group committer has indexed what was acknowledged).
    running_vault.wait_settled()
    found = json.loads(running_vault.cli("find", "--study-uid", study_uid, "--json").stdout)
    assert len(found) == 1, found
    (row,) = found
    assert row["study_uid"] == study_uid
    assert row["patient_id"] == PATIENT_ID
    assert row["instances"] == len(files), row
    assert sorted(row["modalities"]) == ["CT", "MR"], row
    by_filter = json.loads(running_vault.cli("find", "--patient-id", "DV-FWD-*", "--modality", "CT", "--json").stdout)
    assert [r["study_uid"] for r in by_filter] == [study_uid], by_filter

    # get returns, per instance, exactly the dataset Orthanc holds, in the same transfer syntax.
    out = tmp_path / "out"
    running_vault.cli("get", study_uid, "--out", str(out))
    got = sorted(out.rglob("*.dcm"))
    assert len(got) == len(files), [str(p) for p in got]
    seen: set[str] = set()
    for path in got:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sop_uid = ds.SOPInstanceUID
        assert sop_uid in held, f"{path.name}: unexpected SOP Instance UID {sop_uid}"
        assert sop_uid not in seen, f"{sop_uid} returned twice"
        seen.add(sop_uid)
        orthanc_file, orthanc_ts = held[sop_uid]
        assert ds.file_meta.TransferSyntaxUID == orthanc_ts, f"{path.name}: transcoded to {ds.file_meta.TransferSyntaxUID}"
        assert ds.file_meta.MediaStorageSOPInstanceUID == sop_uid
        mine, theirs = dataset_bytes(data), dataset_bytes(orthanc_file)
        assert mine == theirs, (
            f"{path.name} ({orthanc_ts}): dataset differs from Orthanc's "
            f"({len(mine)} vs {len(theirs)} bytes, first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))})"
        )
    assert seen == set(held)

    # Every acknowledgement, query and retrieval is in an intact audit chain.
    status = running_vault.status()
    assert status["counts"]["instances"] == len(files), status["counts"]
    assert status["counts"]["studies"] == 1, status["counts"]
    assert status["audit"]["chain_ok"] is True, status["audit"]
