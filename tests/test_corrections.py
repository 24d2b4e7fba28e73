"""Corrections follow the newest version (issue 19 §1), tried as a PACS administrator would.

A study of two series is sent with DCMTK storescu; one instance is sent again with a corrected
PatientName, StudyDescription and SeriesDescription (same SOP Instance UID, new bytes). Every
answer (DCMTK findscu in both models, QIDO-RS, `find --json`) then gives the new values, a query
for an old value finds nothing, and both versions are still kept. The old bytes arriving again
afterwards (a PACS re-sending its old copy, an import of the old file) change nothing. And
`rebuild-index` reaches the same catalog whatever order the site lists the objects in.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import findscu as run_findscu, Vault, audit_rows, dcmtk, make_vault
from pgserver import PostgresServer, postgres_server  # noqa: F401 - fixture

OLD = {"PatientName": "WRONG^PATIENT", "StudyDescription": "CT HEAD WRONG SIDE", "SeriesDescription": "AX WRONG"}
NEW = {"PatientName": "RIGHT^PATIENT", "StudyDescription": "CT HEAD", "SeriesDescription": "AX 5MM"}


def _template() -> pydicom.Dataset:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # trailing padding storescu would drop
    return ds


def write_instance(template: pydicom.Dataset, path: Path, study: str, series: str, sop: str, number: int,
                   **values: str) -> Path:
    ds = copy.deepcopy(template)
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "CORR-001", study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyDate, ds.AccessionNumber, ds.InstanceNumber, ds.SeriesNumber = "20240410", "CORRACC1", number, 1
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(vault: Vault, *paths: Path) -> None:
    sent = subprocess.run([dcmtk("storescu"), "-aec", vault.ae_title, "127.0.0.1", str(vault.dicom_port),
                           *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    vault.wait_settled()


def findscu(vault: Vault, tmp: Path, model: str, *keys: str) -> list[pydicom.Dataset]:
    return run_findscu(vault, tmp, model, *keys)[0]


def qido(vault: Vault, path: str, **params: str) -> list[dict]:
    answer = requests.get(f"http://127.0.0.1:{vault.http_port}/dicomweb/{path}", params=params, timeout=30,
                          headers={"Authorization": f"Bearer {vault.api_token()}"})
    assert answer.status_code in (200, 204), answer.text
    return answer.json() if answer.status_code == 200 else []


def versions_of(vault: Vault, sop: str) -> list[tuple[int, str]]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT v.version, v.sha256 FROM versions v JOIN instances i ON i.id = v.instance_pk"
                          " WHERE i.sop_instance_uid = ? ORDER BY v.version", (sop,)).fetchall()


class Study:
    def __init__(self, root: Path) -> None:
        self.uid, self.series, self.other_series = generate_uid(), generate_uid(), generate_uid()
        self.sops = [generate_uid() for _ in range(3)]
        template = _template()
        self.old = [write_instance(template, root / "old" / f"{n}.dcm", self.uid,
                                   self.series if n < 2 else self.other_series, sop, n + 1, **OLD)
                    for n, sop in enumerate(self.sops)]
        self.corrected = write_instance(template, root / "new" / "0.dcm", self.uid, self.series, self.sops[0], 1,
                                        **NEW)


@pytest.fixture(scope="module")
def corrected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vault, Study, Path]]:
    """A running vault holding the study as first sent, then with its first instance corrected."""
    tmp = tmp_path_factory.mktemp("corrections")
    vault = make_vault(tmp / "vault")
    vault.set_config("dicomweb", "enabled", "true")
    vault.add_peer("findscu", "FINDSCU", 104, permissions=["find"])  # DCMTK findscu's AE title may query
    vault.start()
    study = Study(tmp)
    storescu(vault, *study.old)
    before = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"StudyDescription={OLD['StudyDescription']}",
                     "StudyInstanceUID")
    assert [r.StudyInstanceUID for r in before] == [study.uid]  # the wrong value is what it answers first
    storescu(vault, study.corrected)
    try:
        yield vault, study, tmp
    finally:
        vault.stop()


def test_cfind_answers_the_corrected_values_at_every_level(corrected: tuple[Vault, Study, Path]) -> None:
    vault, study, tmp = corrected
    assert [v for v, _ in versions_of(vault, study.sops[0])] == [1, 2]  # stored as a new version
    (answer,) = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}",
                        "PatientName", "StudyDescription", "NumberOfStudyRelatedInstances")
    assert (str(answer.PatientName), answer.StudyDescription) == (NEW["PatientName"], NEW["StudyDescription"])
    assert answer.NumberOfStudyRelatedInstances == 3  # a new version is not a new instance
    for keyword in ("StudyDescription", "PatientName"):
        old = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"{keyword}={OLD[keyword]}", "StudyInstanceUID")
        new = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"{keyword}={NEW[keyword]}", "StudyInstanceUID")
        assert (old, [r.StudyInstanceUID for r in new]) == ([], [study.uid]), keyword
    series = findscu(vault, tmp, "S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}",
                     "SeriesInstanceUID", "SeriesDescription")
    # the corrected instance's series follows it; the other series was never corrected
    assert {r.SeriesInstanceUID: r.SeriesDescription for r in series} == {
        study.series: NEW["SeriesDescription"], study.other_series: OLD["SeriesDescription"]}
    assert findscu(vault, tmp, "S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}",
                   f"SeriesDescription={OLD['SeriesDescription']}", "SeriesInstanceUID")[0].SeriesInstanceUID \
        == study.other_series
    (patient,) = findscu(vault, tmp, "P", "QueryRetrieveLevel=PATIENT", "PatientID=CORR-001", "PatientName",
                         "NumberOfPatientRelatedStudies")
    assert (str(patient.PatientName), patient.NumberOfPatientRelatedStudies) == (NEW["PatientName"], 1)
    assert findscu(vault, tmp, "P", "QueryRetrieveLevel=PATIENT", f"PatientName={OLD['PatientName']}",
                   "PatientID") == []


def test_qido_and_find_answer_the_corrected_values(corrected: tuple[Vault, Study, Path]) -> None:
    vault, study, _tmp = corrected
    (row,) = qido(vault, "studies", StudyInstanceUID=study.uid, includefield="StudyDescription")
    assert row["00081030"]["Value"] == [NEW["StudyDescription"]]
    assert row["00100010"]["Value"] == [{"Alphabetic": NEW["PatientName"]}]
    assert qido(vault, "studies", StudyDescription=OLD["StudyDescription"]) == []
    assert [r["0020000D"]["Value"][0] for r in qido(vault, "studies", StudyDescription=NEW["StudyDescription"])] \
        == [study.uid]
    series = qido(vault, f"studies/{study.uid}/series", includefield="SeriesDescription")
    assert {s["0020000E"]["Value"][0]: s["0008103E"]["Value"][0] for s in series} == {
        study.series: NEW["SeriesDescription"], study.other_series: OLD["SeriesDescription"]}

    (found,) = json.loads(vault.cli("find", "--json", "--patient-id", "CORR-001").stdout)  # one study row
    assert (found["study_uid"], found["patient_name"], found["study_description"], found["instances"]) == (
        study.uid, NEW["PatientName"], NEW["StudyDescription"], 3)
    assert json.loads(vault.cli("find", "--json", "--patient-name", "WRONG*").stdout) == []


def test_every_version_is_kept_and_get_returns_the_newest(corrected: tuple[Vault, Study, Path]) -> None:
    vault, study, tmp = corrected
    vault.cli("get", study.sops[0], "--out", str(tmp / "latest"))
    (latest,) = [pydicom.dcmread(p) for p in (tmp / "latest").rglob("*") if p.is_file()]
    assert latest.StudyDescription == NEW["StudyDescription"]
    vault.cli("get", study.sops[0], "--out", str(tmp / "all"), "--all-versions")
    kept = sorted(pydicom.dcmread(p).StudyDescription for p in (tmp / "all").rglob("*") if p.is_file())
    assert kept == sorted([OLD["StudyDescription"], NEW["StudyDescription"]])


def test_the_old_bytes_arriving_again_change_nothing(corrected: tuple[Vault, Study, Path]) -> None:
    """A PACS re-sending its old copy, or the old file imported from a backup disk: the archive
    knows that content as version 1, so it is a duplicate and the newest version still rules."""
    vault, study, tmp = corrected
    storescu(vault, study.old[0])
    vault.cli("import", str(study.old[0]))
    assert [v for v, _ in versions_of(vault, study.sops[0])] == [1, 2]
    duplicates = [r for r in audit_rows(vault, "store") if r[0] == study.sops[0] and r[1] == "duplicate"]
    assert [r[2]["version"] for r in duplicates] == [1, 1]
    (answer,) = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}",
                        "PatientName", "StudyDescription")
    assert (str(answer.PatientName), answer.StudyDescription) == (NEW["PatientName"], NEW["StudyDescription"])
    (found,) = json.loads(vault.cli("find", "--json", "--study-uid", study.uid).stdout)
    assert found["study_description"] == NEW["StudyDescription"]


def _object_id(vault: Vault, path: Path) -> str:
    import hashlib

    from dicomvault.crypto import Keyring

    keyring = Keyring.load(vault.root / "keys" / "site.key", vault.root / "keys" / "recovery.pub")
    return keyring.object_id(hashlib.sha256(path.read_bytes()).digest())


def test_rebuild_index_follows_the_newest_version_whatever_order_the_site_lists(tmp_path: Path) -> None:
    """The site lists objects by name (a keyed hash), not by age: the correction is made so
    that its object sorts before the original's, so a rebuild reading in listing order would
    number it version 1 and show the old values."""
    vault = make_vault(tmp_path / "vault")
    vault.cli("snapshot")  # the (empty) catalog snapshot a rebuild starts from; both versions come after it
    template = _template()
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    old = write_instance(template, tmp_path / "old.dcm", study, series, sop, 1, **OLD)
    vault.cli("import", str(old))
    write_instance(template, tmp_path / "other.dcm", study, series, generate_uid(), 2, **OLD)
    vault.cli("import", str(tmp_path / "other.dcm"))
    for n in range(200):  # a correction whose object name sorts first
        new = write_instance(template, tmp_path / "new.dcm", study, series, sop, 1,
                             **dict(NEW, StudyDescription=f"{NEW['StudyDescription']} {n}"))
        if _object_id(vault, new) < _object_id(vault, old):
            break
    vault.cli("import", str(new))
    description = pydicom.dcmread(new).StudyDescription
    before = json.loads(vault.cli("find", "--json").stdout)
    assert [(r["study_description"], r["patient_name"], r["instances"]) for r in before] == [
        (description, NEW["PatientName"], 2)]
    versions = versions_of(vault, sop)
    for path in vault.root.glob("catalog.sqlite3*"):
        path.unlink()

    report = json.loads(vault.cli("rebuild-index", "--from", "primary", "--recovery-key",
                                  str(vault.root / "recovery-key.pem"), "--json").stdout)

    assert report["objects_after_snapshot"] == 3 and report["unreadable_objects"] == []
    assert versions_of(vault, sop) == versions  # numbered in order of receipt, not of listing
    assert json.loads(vault.cli("find", "--json").stdout) == before
    assert json.loads(vault.cli("find", "--json", "--patient-name", "WRONG*").stdout) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def test_a_version_received_earlier_but_indexed_later_never_overwrites(catalog_url: str) -> None:
    """The catalog rule itself, on both databases: rows take the values of the latest *received*
    version, also within one group-committed transaction and when an earlier one is indexed
    late (crash recovery adopting an object whose row was lost, a rebuild)."""
    from dicomvault.catalog import Catalog, InstanceAttributes, VersionRecord

    catalog = Catalog(catalog_url)
    with catalog.write() as conn:
        catalog.add_study_key(conn, "1.2.3", "k1", b"s", b"r")

    def index(conn: object, sop: str, received_at: float, series: str = "1.2.3.1", **values: str) -> None:
        a = InstanceAttributes(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="1.2.3",
                               series_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1",
                               patient_id="P1", **values)
        record = VersionRecord(sop_instance_uid=sop, version=0, object_id=f"{sop}-{received_at}", sha256="0" * 64,
                               dataset_sha256=f"{received_at}", size_original=1, size_stored=1,
                               transfer_syntax_uid=a.transfer_syntax_uid, codec="raw", key_id="k1",
                               received_at=received_at, source="test")
        catalog.add_version(conn, a, record)

    def shown() -> tuple[str, str, str]:
        (row,) = catalog.find_studies()
        with catalog.read() as conn:
            series = conn.exec_driver_sql("SELECT series_description FROM series WHERE series_uid = '1.2.3.1'").scalar()
        return row["patient_name"], row["study_description"], series

    with catalog.write() as conn:  # one group commit, the later received one indexed first
        index(conn, "1.2.3.1.1", 100.0, patient_name="FIRST", study_description="FIRST", series_description="FIRST")
        index(conn, "1.2.3.1.2", 300.0, patient_name="NEWEST", study_description="NEWEST", series_description="NEWEST")
        index(conn, "1.2.3.1.3", 200.0, patient_name="OLDER", study_description="OLDER", series_description="OLDER")
    assert shown() == ("NEWEST", "NEWEST", "NEWEST")
    with catalog.write() as conn:  # a later transaction, an earlier receipt: ignored
        index(conn, "1.2.3.1.4", 250.0, patient_name="LATE", study_description="LATE", series_description="LATE")
    assert shown() == ("NEWEST", "NEWEST", "NEWEST")
    with catalog.write() as conn:  # received after everything: followed
        index(conn, "1.2.3.1.2", 400.0, patient_name="FIXED", study_description="FIXED", series_description="FIXED")
    assert shown() == ("FIXED", "FIXED", "FIXED")
    with catalog.read() as conn:
        assert conn.exec_driver_sql("SELECT patient_name, attributes_at FROM patients").all() == [("FIXED", 400.0)]
    with catalog.write() as conn:  # a correction that names another series moves the instance there
        index(conn, "1.2.3.1.2", 500.0, series="1.2.3.2", patient_name="FIXED", study_description="FIXED",
              series_description="MOVED")
    with catalog.read() as conn:
        assert conn.exec_driver_sql(
            "SELECT s.series_uid, s.series_description FROM instances i JOIN series s ON s.id = i.series_pk"
            " WHERE i.sop_instance_uid = '1.2.3.1.2'").all() == [("1.2.3.2", "MOVED")]
    assert shown() == ("FIXED", "FIXED", "FIXED")  # the series it left keeps its own values
    assert catalog.versions_for_uid("1.2.3.2")[0].version == 3  # its versions went with it
    catalog.close()


def test_restore_order_and_reconcile_follow_a_corrected_study_date(vault: Vault, tmp_path: Path) -> None:
    """A study first sent with a wrong, old StudyDate is corrected to today: a restore now sends
    it first (last-24-hours tier), and reconcile's view of that day lists it."""
    from datetime import datetime, timedelta

    from dicomvault.archive.core import Archive
    from dicomvault.catalog.selection import Selection
    from dicomvault.config import PeerSettings, load_settings
    from dicomvault.jobs.reconcile.compare import vault_studies
    from dicomvault.jobs.restore import plan as restore_plan

    template, now = _template(), datetime.now()
    made = {}
    for name, moment in (("recent", now - timedelta(days=3)), ("corrected", now - timedelta(days=900))):
        made[name] = (generate_uid(), generate_uid(), generate_uid())
        write_instance(template, tmp_path / "first" / f"{name}.dcm", *made[name], 1,
                       StudyDate=moment.strftime("%Y%m%d"), StudyTime=moment.strftime("%H%M%S"))
    vault.cli("import", str(tmp_path / "first"))
    study, series, sop = made["corrected"]
    today = now.strftime("%Y%m%d")
    write_instance(template, tmp_path / "second" / "corrected.dcm", study, series, sop, 1,
                   StudyDate=today, StudyTime=(now - timedelta(hours=1)).strftime("%H%M%S"))
    vault.cli("import", str(tmp_path / "second"))

    archive = Archive.open(load_settings(vault.config))
    try:
        job = restore_plan.plan_job(archive.catalog, kind="restore", selection=Selection.build(None, None, (), (), ()),
                                    peer=PeerSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
                                    ordering="urgency", options={}, actor="test")
        with archive.catalog.read() as conn:
            order = conn.exec_driver_sql("SELECT study_uid, tier FROM restore_items WHERE job_id = ? ORDER BY position",
                                         (job,)).all()
        assert order == [(study, 0), (made["recent"][0], 1)]
        assert list(vault_studies(archive.catalog, StudyDate=today)) == [study]
    finally:
        archive.close()
