"""A dicom:// site: the archive C-STOREs every object to a real Orthanc (a PACS that must read
the images, so it receives them decrypted), each in its stored transfer syntax, byte-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from conftest import Vault, wait_until
from orthanc import Orthanc, orthanc, orthanc_factory  # noqa: F401 - fixtures
from test_orthanc_forward import dataset_bytes, make_study
from test_replication_file import drained, site_status


def test_every_object_reaches_the_pacs_in_its_stored_syntax(orthanc: Orthanc, vault: Vault, tmp_path: Path) -> None:  # noqa: F811
    # orthanc first: torn down last, after the vault has released its kept-open association
    # (Orthanc waits for open associations at shutdown, 20 s until the fixture kills it).
    study_uid, files = make_study(tmp_path / "study")
    orthanc.add_modality("vault", "DICOMVAULT", "127.0.0.1", vault.dicom_port)
    added = vault.cli("sites", "add", "pacs", f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--onsite")
    assert "DECRYPTED" in added.stdout, "adding a plaintext site must say so"
    vault.start()
    vault.cli("import", str(tmp_path / "study"))
    wait_until(lambda: drained(vault, "pacs", len(files)), timeout=120, what="every object sent to Orthanc")

    status = vault.status()
    assert status["sites"]["pacs"]["sees_plaintext"] is True
    for path in files:
        original = path.read_bytes()
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (found,) = orthanc.lookup(uid)
        stored = orthanc.instance_file(found["ID"])
        assert dataset_bytes(stored) == dataset_bytes(original), f"{path.name}: bytes changed on the way to the PACS"
        syntax = orthanc.instance_metadata(found["ID"], "TransferSyntax")
        assert syntax == str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert json.loads(vault.cli("sites", "status", "--json").stdout)["pacs"]["dead_letters"] == 0
    assert study_uid


def test_a_pacs_that_refuses_us_shows_as_an_error_and_nothing_counts(vault: Vault, orthanc: Orthanc, tmp_path: Path) -> None:  # noqa: F811
    _study, files = make_study(tmp_path / "study")
    # Orthanc does not know our AE title: it rejects the association.
    vault.cli("sites", "add", "pacs", f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--no-test")
    vault.start()
    vault.cli("import", str(tmp_path / "study"))
    wait_until(lambda: site_status(vault)["pacs"]["last_error"] is not None, timeout=60, what="the refusal recorded")
    lag = site_status(vault)["pacs"]
    assert lag["verified_objects"] == 0 and lag["backlog_objects"] == len(files)
    assert "refused the association" in (lag["site_error"] or lag["last_error"] or ""), lag
