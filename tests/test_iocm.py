"""IHE IOCM rejection notes (ingest/iocm.py) against a real `dicomvault serve`.

A Key Object Selection made with highdicom and titled "Rejected for Quality Reasons" is sent
by DCMTK storescu: from callers without the `reject` permission it is refused (0124H) and
changes nothing; from the PACS (a peer with `reject`) it is archived and the instances it
references vanish from C-FIND (DCMTK findscu), QIDO, C-GET, WADO (410), export and restore,
also one that arrives only after its rejection. A key-image note with another title is just
stored. The module's fixture plays the whole story once; each test checks one part of it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from conftest import findscu as run_findscu, Vault, audit_rows, dcmtk, free_port, make_vault, wait_until

KOS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage


@dataclass
class World:
    vault: Vault
    base: str  # DICOMweb root
    study1: str
    study2: str
    series_b: str
    files: dict[str, Path]  # a1 a2 a3 (CT, series A), b1 (MR, series B), c1 (study 2), late (series A)
    uids: dict[str, str]
    kos: Path
    kos_uid: str
    refused: dict[str, str] = field(default_factory=dict)  # caller -> storescu log
    before: dict[str, str] = field(default_factory=dict)  # study 1's row before any note
    accepted: str = ""
    late: str = ""
    storescp_dir: Path | None = None
    storescp_port: int = 0


def _instance(template: pydicom.Dataset, dest: Path, study: str, series: str, number: int, modality: str,
              patient: str) -> pydicom.Dataset:
    ds = copy.deepcopy(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber, ds.SeriesNumber, ds.Modality = number, 2 if modality == "MR" else 1, modality
    ds.PatientID, ds.PatientName, ds.StudyDate = patient, f"{patient}^IOCM", "20250102"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return ds


def key_object(evidence: list[pydicom.Dataset], title, dest: Path) -> str:  # noqa: ANN001 - a pydicom Code
    """A KOS titled ``title`` referencing ``evidence``, saved to ``dest``; its SOP Instance UID."""
    document = KeyObjectSelectionDocument(
        evidence=evidence, content=KeyObjectSelection(document_title=title, referenced_objects=evidence),
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="dicomvault tests")
    document.save_as(dest, enforce_file_format=True)
    return str(document.SOPInstanceUID)


def store(vault: Vault, calling: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-d", "-aet", calling, "-aec", vault.ae_title, "127.0.0.1",
                           str(vault.dicom_port), *map(str, files)], capture_output=True, text=True, timeout=60)


def findscu(vault: Vault, out: Path, level: str, **keys: str) -> list[pydicom.Dataset]:
    """DCMTK findscu as VIEWER (Study Root); the identifiers it received."""
    keys_ = [f"QueryRetrieveLevel={level}"] + [f"{k}={v}" if v else k for k, v in keys.items()]
    return run_findscu(vault, out, "S", *keys_, calling="VIEWER")[0]


def study_row(vault: Vault, out: Path, study: str) -> dict[str, str]:
    rows = findscu(vault, out, "STUDY", StudyInstanceUID=study, ModalitiesInStudy="",
                   NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries="")
    if not rows:
        return {}
    modalities = rows[0].get("ModalitiesInStudy", "")
    return {"modalities": "\\".join(modalities) if isinstance(modalities, (list, pydicom.multival.MultiValue))
            else str(modalities), "instances": str(rows[0].NumberOfStudyRelatedInstances),
                                "series": str(rows[0].NumberOfStudyRelatedSeries)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("iocm")
    vault = make_vault(root / "vault")
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("dicomweb", "anonymous_roles", '["read"]')
    vault.set_config("iocm", "delete_after", '"30d"')
    vault.add_peer("pacs", "PACS", free_port(), permissions=["store", "reject"])
    vault.add_peer("viewer", "VIEWER", free_port(), permissions=["store", "find", "get"])
    target_port = free_port()
    vault.add_peer("target", "TARGET", target_port)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del template[0xFFFCFFFC]
    study1, study2, series_a, series_b = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    src = root / "files"
    made = {name: _instance(template, src / f"{name}.dcm", study, series, n, modality, patient)
            for name, study, series, n, modality, patient in (
                ("a1", study1, series_a, 1, "CT", "IOCM1"), ("a2", study1, series_a, 2, "CT", "IOCM1"),
                ("a3", study1, series_a, 3, "CT", "IOCM1"), ("b1", study1, series_b, 1, "MR", "IOCM1"),
                ("late", study1, series_a, 4, "CT", "IOCM1"), ("c1", study2, generate_uid(), 1, "CT", "IOCM2"))}
    files = {name: src / f"{name}.dcm" for name in made}
    # One note per study (IOCM): in study 1 it rejects a2, all of series B and "late", which is
    # not here yet; in study 2 its only instance.
    kos, kos2 = root / "reject.dcm", root / "reject-study2.dcm"
    kos_uid = key_object([made["a2"], made["b1"], made["late"]], codes.DCM.RejectedForQualityReasons, kos)
    key_object([made["c1"]], codes.DCM.RejectedForQualityReasons, kos2)
    world = World(vault, f"http://127.0.0.1:{vault.http_port}/dicomweb", study1, study2, series_b, files,
                  {name: str(ds.SOPInstanceUID) for name, ds in made.items()}, kos, kos_uid,
                  storescp_dir=root / "pacs", storescp_port=target_port)
    vault.start()
    sent = store(vault, "MODALITY", *(files[n] for n in ("a1", "a2", "a3", "b1", "c1")))
    assert sent.returncode == 0, sent.stderr
    vault.wait_settled()
    world.before = study_row(vault, root / "find-before", study1)
    versions = vault.status()["counts"]["versions"]
    for caller in ("MODALITY", "VIEWER"):  # anonymous, and a peer without "reject"
        run = store(vault, caller, kos)
        world.refused[caller] = run.stdout + run.stderr
    world.refused["after"] = json.dumps(study_row(vault, root / "find-refused", study1))
    world.refused["versions"] = json.dumps([versions, vault.status()["counts"]["versions"]])
    run = store(vault, "PACS", kos, kos2)
    world.accepted = run.stdout + run.stderr
    assert run.returncode == 0, world.accepted
    run = store(vault, "MODALITY", files["late"])  # arrives after its rejection
    world.late = run.stdout + run.stderr
    vault.wait_settled()
    yield world
    vault.stop()


def test_a_rejection_note_without_the_right_is_refused_and_changes_nothing(world: World) -> None:
    for caller in ("MODALITY", "VIEWER"):
        log = world.refused[caller]
        assert "0x0124" in log and "reject refused" in log, log[-1500:]
    assert world.before == {"modalities": "CT\\MR", "instances": "4", "series": "2"}, world.before
    assert json.loads(world.refused["after"]) == world.before, "a refused note must change nothing"
    assert [subject for _actor, subject, _ in world.vault.refusals()].count("reject") == 2
    before, after = json.loads(world.refused["versions"])
    assert before == after == 5, "the refused note is not stored"


def test_rejected_instances_vanish_from_c_find(world: World, tmp_path: Path) -> None:
    assert "0x0000" in world.accepted or "Success" in world.accepted, world.accepted[-1500:]
    after = study_row(world.vault, tmp_path / "study", world.study1)
    # a2 and series B are gone; the note itself is kept as evidence but not shown.
    assert after == {"modalities": "CT", "instances": "2", "series": "1"}, after
    assert study_row(world.vault, tmp_path / "gone", world.study2) == {}, "a wholly rejected study disappears"
    images = findscu(world.vault, tmp_path / "images", "IMAGE", StudyInstanceUID=world.study1, SOPInstanceUID="")
    assert sorted(str(ds.SOPInstanceUID) for ds in images) == sorted([world.uids["a1"], world.uids["a3"]])
    # `dicomvault find` answers as C-FIND does
    (study,) = json.loads(world.vault.cli("find", "--json", "--study-uid", world.study1).stdout)
    assert study["instances"] == 2 and study["modalities"] == ["CT"], study
    assert json.loads(world.vault.cli("find", "--json", "--study-uid", world.study2).stdout) == []


def test_rejected_instances_vanish_from_qido_and_wado_says_gone(world: World) -> None:
    instances = requests.get(f"{world.base}/studies/{world.study1}/instances", timeout=30)
    assert instances.status_code == 200
    found = sorted(i["00080018"]["Value"][0] for i in instances.json())
    assert found == sorted([world.uids["a1"], world.uids["a3"]])
    assert requests.get(f"{world.base}/studies", params={"StudyInstanceUID": world.study2}, timeout=30).json() == []
    for name in ("a2", "late"):
        gone = requests.get(f"{world.base}/studies/{world.study1}/series/"
                            f"{pydicom.dcmread(world.files[name]).SeriesInstanceUID}/instances/{world.uids[name]}",
                            timeout=30)
        assert gone.status_code == 410 and "rejected" in gone.text, (gone.status_code, gone.text)
    whole = requests.get(f"{world.base}/studies/{world.study2}", timeout=30)
    assert whole.status_code == 410 and "every instance was rejected" in whole.text, whole.text
    assert requests.get(f"{world.base}/studies/{world.study1}/series/{world.series_b}",
                        timeout=30).status_code == 410


def test_c_get_sends_only_what_is_not_rejected(world: World, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    run = subprocess.run([dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", world.vault.ae_title, "-od", str(out),
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={world.study1}",
                          "127.0.0.1", str(world.vault.dicom_port)], capture_output=True, text=True, timeout=60)
    got = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir())
    assert got == sorted([world.uids["a1"], world.uids["a3"]]), run.stdout + run.stderr
    out2 = tmp_path / "got2"
    out2.mkdir()
    subprocess.run([dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", world.vault.ae_title, "-od", str(out2),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={world.study2}",
                    "127.0.0.1", str(world.vault.dicom_port)], capture_output=True, text=True, timeout=60)
    assert list(out2.iterdir()) == [], "a rejected study is not sent"


def test_an_instance_arriving_after_its_rejection_is_stored_but_hidden(world: World) -> None:
    assert "0x0000" in world.late or "Success" in world.late, world.late[-1500:]
    status = world.vault.status()["rejections"]
    # a2, b1, c1 and late rejected; all four now in the archive (late arrived after); two notes
    assert status == {"rejected": 4, "stored": 4, "due": 0, "notes": 2, "delete_after": "30d"}, status
    text = world.vault.cli("status", check=False).stdout
    assert "rejected (IOCM): 4 instance(s), 4 of them stored, 0 due for deletion" in text, text


def test_the_rejection_is_audited_and_due_after_the_delay(world: World) -> None:
    from dicomvault.catalog import rejections
    from dicomvault.catalog.db import Catalog

    events = [(subject, outcome, detail) for subject, outcome, detail in audit_rows(world.vault, "reject")]
    assert len(events) == 2 and events[0][0] == world.kos_uid and events[0][1] == "success", events
    detail = events[0][2]
    assert detail["referenced"] == 3 and detail["newly_rejected"] == 3 and detail["in_archive"] == 2, detail
    assert "113001" in detail["title"]
    catalog = Catalog(f"sqlite:///{world.vault.root / 'catalog.sqlite3'}")
    try:
        with catalog.read() as conn:
            assert rejections.rejected_due(conn, time.time()) == []
            due = rejections.rejected_due(conn, time.time() + 30 * 86400 + 60)
    finally:
        catalog.close()
    expected = {world.uids[n] for n in ("a2", "b1", "c1", "late")}
    assert {r.sop_instance_uid for r in due} == expected, "the note itself is evidence, never due"
    assert {r.code for r in due} == {"113001"} and world.kos_uid in {r.kos_uid for r in due}
    assert all(r.actor == "dicom:PACS" for r in due)


def test_export_and_restore_skip_rejected_instances(world: World, tmp_path: Path) -> None:
    proc = world.vault.cli("export", "--to", str(tmp_path / "out"), "--study", world.study1, "--json", check=False)
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["instances"] == 2, proc.stdout + proc.stderr
    skipped = {s["sop_instance_uid"]: s["reason"] for s in report["skipped"]}
    assert skipped == {world.uids["a2"]: "rejected", world.uids["b1"]: "rejected", world.uids["late"]: "rejected",
                       world.kos_uid: "rejection note"}, skipped
    nothing = world.vault.cli("export", "--to", str(tmp_path / "none"), "--study", world.study2, "--json", check=False)
    assert nothing.returncode != 0 and "2 instance(s) skipped as rejected" in nothing.stdout + nothing.stderr

    received = world.storescp_dir
    received.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "TARGET", "-od", str(received), str(world.storescp_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "TARGET", "127.0.0.1", str(world.storescp_port)],
                                          capture_output=True).returncode == 0, timeout=10, what="storescp up")
        proc = world.vault.cli("restore", "--to", "target", "--study", world.study1, "--json", check=False)
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["sent"] == 2, proc.stdout + proc.stderr
    assert {s["sop_instance_uid"] for s in report["skipped"]} == set(skipped)
    got = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in received.iterdir())
    assert got == sorted([world.uids["a1"], world.uids["a3"]])


def test_a_key_object_with_another_title_is_just_stored(world: World, tmp_path: Path) -> None:
    evidence = pydicom.dcmread(world.files["a1"])
    note = tmp_path / "key-images.dcm"
    uid = key_object([evidence], codes.DCM.OfInterest, note)
    run = store(world.vault, "MODALITY", note)  # anonymous: storing needs no "reject"
    assert run.returncode == 0 and "0x0124" not in run.stdout + run.stderr, run.stdout + run.stderr
    world.vault.wait_settled()
    series = pydicom.dcmread(note).SeriesInstanceUID
    shown = requests.get(f"{world.base}/studies/{world.study1}/series/{series}/instances", timeout=30)
    assert shown.status_code == 200 and [i["00080018"]["Value"][0] for i in shown.json()] == [uid]
    still = requests.get(f"{world.base}/studies/{world.study1}/instances", timeout=30).json()
    assert world.uids["a1"] in [i["00080018"]["Value"][0] for i in still]


def test_an_unreadable_rejection_note_is_refused(world: World, tmp_path: Path) -> None:
    ds = pydicom.dcmread(world.kos)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.CurrentRequestedProcedureEvidenceSequence
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    run = store(world.vault, "PACS", bad)
    log = run.stdout + run.stderr
    assert "0xc000" in log.lower() and "references no instance" in log, log[-1500:]
    assert world.vault.status()["rejections"]["notes"] == 2, "nothing recorded"


def test_delete_after_must_be_a_duration(tmp_path: Path) -> None:
    from dicomvault.config import ConfigError, load_settings

    vault = make_vault(tmp_path / "v")
    assert load_settings(vault.config).iocm.delete_after_seconds == 30 * 86400
    vault.set_config("iocm", "delete_after", '"soon"')
    with pytest.raises(ConfigError, match=r"\[iocm\] delete_after"):
        load_settings(vault.config)


def test_a_rejection_note_by_another_door_is_refused(world: World, tmp_path: Path) -> None:
    """STOW-RS and `import` have no `reject` right: a rejection note there is refused, so every
    note in the archive is one that was applied."""
    ds = pydicom.dcmread(world.kos)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other = tmp_path / "again.dcm"
    ds.save_as(other, enforce_file_format=True)
    proc = world.vault.cli("import", str(other), check=False)
    assert proc.returncode != 0 and "rejection note (IOCM) refused" in proc.stdout + proc.stderr, proc.stdout
    boundary = "iocm-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + other.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    answer = requests.post(f"{world.base}/studies", data=body, timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Authorization": f"Bearer {world.vault.api_token()}"})
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert [f["00081155"]["Value"][0] for f in failed] == [str(ds.SOPInstanceUID)], answer.text
    assert world.vault.status()["rejections"]["notes"] == 2


def test_reconcile_compares_without_the_rejected(world: World) -> None:
    """Reconcile reads the vault through the same query engine: the PACS lacking what was
    rejected is expected, so the vault's counts leave the rejected out."""
    from dicomvault.catalog.db import Catalog
    from dicomvault.jobs.reconcile.compare import vault_studies

    catalog = Catalog(f"sqlite:///{world.vault.root / 'catalog.sqlite3'}")
    try:
        found = vault_studies(catalog, StudyInstanceUID=f"{world.study1}\\{world.study2}")
    finally:
        catalog.close()
    assert list(found) == [world.study1], "a wholly rejected study is not expected at the PACS"
    shown = requests.get(f"{world.base}/studies/{world.study1}/instances", timeout=30).json()
    assert found[world.study1].instances == len(shown) < 5, (found, shown)  # 4 stored + the hidden note


def test_rebuild_index_puts_a_later_rejection_back_in_effect(tmp_path: Path) -> None:
    """A note applied after the newest catalog snapshot is re-applied by `rebuild-index` from
    the stored note itself (only applied notes are ever stored)."""
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    kept = _instance(template, tmp_path / "in" / "kept.dcm", study, series, 1, "CT", "IOCMRB")
    bad = _instance(template, tmp_path / "in" / "bad.dcm", study, series, 2, "CT", "IOCMRB")
    note = tmp_path / "note.dcm"
    key_object([bad], codes.DCM.RejectedForPatientSafetyReasons, note)
    vault = make_vault(tmp_path / "vault")
    vault.set_config("snapshots", "enabled", "false")
    vault.add_peer("pacs", "PACS", free_port(), permissions=["store", "reject"])
    vault.cli("import", str(tmp_path / "in"))
    vault.cli("snapshot")
    vault.start()
    try:
        assert store(vault, "PACS", note).returncode == 0
        vault.wait_settled()
    finally:
        vault.stop()
    (vault.root / "catalog.sqlite3").rename(tmp_path / "old-catalog.sqlite3")
    for stale in vault.root.glob("catalog.sqlite3-*"):
        stale.unlink()
    rebuilt = json.loads(vault.cli("rebuild-index", "--from", "primary", "--recovery-key",
                                   str(vault.root / "recovery-key.pem"), "--json").stdout)
    assert rebuilt["rejection_notes_reapplied"] == 1 and rebuilt["objects_after_snapshot"] == 1, rebuilt
    status = vault.status()["rejections"]
    assert (status["rejected"], status["stored"], status["notes"]) == (1, 1, 1), status
    reapplied = [d for _s, _o, d in audit_rows(vault, "reject") if d.get("reapplied")]
    assert len(reapplied) == 1 and reapplied[0]["newly_rejected"] == 1, reapplied
    assert vault.cli("audit", "verify").returncode == 0
    found = json.loads(vault.cli("export", "--to", str(tmp_path / "out"), "--study", study, "--json").stdout)
    assert found["instances"] == 1 and str(kept.SOPInstanceUID) not in {s["sop_instance_uid"] for s in found["skipped"]}
    assert str(bad.SOPInstanceUID) in {s["sop_instance_uid"] for s in found["skipped"]}


def test_the_pynetdicom_engine_applies_and_refuses_the_same(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    target = _instance(template, tmp_path / "target.dcm", generate_uid(), generate_uid(), 1, "CT", "IOCMPN")
    note = tmp_path / "note.dcm"
    key_object([target], codes.DCM.IncorrectModalityWorklistEntry, note)
    vault = make_vault(tmp_path / "vault")
    vault.set_config("dicom", "engine", '"pynetdicom"')
    vault.add_peer("pacs", "PACS", free_port(), permissions=["store", "reject"])
    vault.start()
    try:
        refused = store(vault, "STRANGER", note)
        assert "0x0124" in refused.stdout + refused.stderr and "reject refused" in refused.stdout + refused.stderr
        assert vault.status()["rejections"]["notes"] == 0
        assert store(vault, "PACS", note).returncode == 0
        vault.wait_settled()
        status = vault.status()["rejections"]
        assert (status["rejected"], status["stored"], status["notes"]) == (1, 0, 1), status
    finally:
        vault.stop()


def test_every_query_level_leaves_the_rejected_out(world: World) -> None:
    """The query engine itself (C-FIND, QIDO and reconcile share it): patient, series and
    matching on ModalitiesInStudy."""
    from dicomvault.catalog.db import Catalog
    from dicomvault.catalog.query import Query, run_query

    catalog = Catalog(f"sqlite:///{world.vault.root / 'catalog.sqlite3'}")
    try:
        def rows(level: str, root: str = "STUDY", **filters: str) -> list[dict[str, str]]:
            return list(run_query(catalog, Query(level=level, root=root, filters=filters)))

        assert rows("PATIENT", "PATIENT", PatientID="IOCM2") == [], "nothing left of the patient"
        patient = rows("PATIENT", "PATIENT", PatientID="IOCM1")
        assert len(patient) == 1 and patient[0]["NumberOfPatientRelatedStudies"] == "1"
        series = {r["SeriesInstanceUID"] for r in rows("SERIES", StudyInstanceUID=world.study1)}
        assert world.series_b not in series and pydicom.dcmread(world.files["a1"]).SeriesInstanceUID in series
        assert rows("STUDY", StudyInstanceUID=world.study1, ModalitiesInStudy="MR") == []
        assert len(rows("STUDY", StudyInstanceUID=world.study1, ModalitiesInStudy="CT")) == 1
        assert rows("STUDY", StudyInstanceUID=world.study2, ModalitiesInStudy="KO") == []
        images = rows("IMAGE", StudyInstanceUID=world.study1, SOPClassUID=KOS)
        assert world.kos_uid not in {r["SOPInstanceUID"] for r in images}, "the rejection note is not shown"
    finally:
        catalog.close()
