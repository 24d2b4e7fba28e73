"""DIMSE query/retrieve from the archive with real peers: DCMTK findscu, movescu, getscu and
storescp, and Orthanc pulling from its backup. Every retrieved file is compared byte for
byte with the file that was archived.

One archive (module scope) holds a small hospital: 6 patients, 2 studies each, a CT and an
MR series per study, 3 instances per series (72 instances), imported from Part-10 files.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import findscu as run_findscu, Vault, dcmtk, free_port, make_vault, wait_until
from orthanc import Orthanc, orthanc_factory  # noqa: F401 - fixtures
from test_orthanc_forward import dataset_bytes

PATIENTS = [  # (name, id, birth date, sex)
    ("DOE^JOHN", "QR-PID-001", "19600101", "M"),
    ("DOE^JANE", "QR-PID-002", "19650202", "F"),
    ("SMITH^ANNA", "QR-PID-003", "19700303", "F"),
    ("SMYTHE^BOB", "QR-PID-004", "19750404", "M"),
    ("MÜLLER^JÜRGEN", "QR-PID-005", "19800505", "M"),
    ("doe^lowercase", "QR-PID-006", "19850606", "O"),
]
STUDY_DATES = ["20240105", "20240220"]
SERIES_MODALITIES = ["CT", "MR"]
PER_SERIES = 3


@dataclass
class Instance:
    path: Path
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    accession: str
    modality: str


@dataclass
class Hospital:
    vault: Vault
    instances: list[Instance]
    scp_port: int
    scp_dir: Path
    tmp: Path
    scp: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def studies(self, **match: str) -> set[str]:
        return {i.study_uid for i in self.instances if all(getattr(i, k) == v for k, v in match.items())}

    def original(self, sop_uid: str) -> bytes:
        return next(i.path for i in self.instances if i.sop_uid == sop_uid).read_bytes()


def make_hospital_files(ct_small: Path, dest: Path) -> list[Instance]:
    dest.mkdir(parents=True)
    template = pydicom.dcmread(ct_small)
    del template[0xFFFCFFFC]  # trailing padding DCMTK would drop when writing: keep files comparable
    out: list[Instance] = []
    for p, (name, pid, birth, sex) in enumerate(PATIENTS):
        for s, date in enumerate(STUDY_DATES):
            study_uid, accession = generate_uid(), f"ACC{p}{s}"
            for modality in SERIES_MODALITIES:
                series_uid = generate_uid()
                for n in range(PER_SERIES):
                    ds = template.copy()
                    ds.SpecificCharacterSet = "ISO_IR 192"
                    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, birth, sex
                    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                    ds.SOPInstanceUID = generate_uid()
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    ds.StudyDate, ds.AccessionNumber, ds.Modality = date, accession, modality
                    ds.InstanceNumber = n + 1
                    path = dest / f"{pid}_{s}_{modality}_{n}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    out.append(Instance(path, pid, name, study_uid, series_uid, ds.SOPInstanceUID, date, accession,
                                        modality))
    return out


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    from pydicom.data import get_testdata_file

    tmp = tmp_path_factory.mktemp("qr")
    instances = make_hospital_files(Path(get_testdata_file("CT_small.dcm")), tmp / "files")
    vault = make_vault(tmp / "vault")
    scp_port = free_port()
    vault.add_peer("viewer", "STORESCP", scp_port)
    # DCMTK's tools call as FINDSCU, MOVESCU and GETSCU: each may do its one thing (access.py).
    for tool in ("find", "move", "get"):
        vault.add_peer(f"{tool}scu", f"{tool.upper()}SCU", free_port(), permissions=[tool])
    vault.start()
    vault.cli("import", str(tmp / "files"))
    scp_dir = tmp / "storescp"
    scp_dir.mkdir()
    # +B: storescp writes the data set exactly as received, so files compare byte for byte.
    scp = subprocess.Popen([dcmtk("storescp"), "+B", "-aet", "STORESCP", "-od", str(scp_dir), str(scp_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: subprocess.run([dcmtk("echoscu"), "-aec", "STORESCP", "127.0.0.1", str(scp_port)],
                                      capture_output=True).returncode == 0, what="storescp C-ECHO")
    h = Hospital(vault, instances, scp_port, scp_dir, tmp, scp)
    try:
        yield h
    finally:
        scp.terminate()
        scp.wait(timeout=10)
        vault.stop()


# --- findscu ----------------------------------------------------------------------------


def final_status(log: str) -> str:
    """The last DIMSE status a DCMTK tool printed with -d, e.g. "0x0000"."""
    statuses = re.findall(r"DIMSE Status\s*:\s*(0x[0-9a-fA-F]{4})", log)
    assert statuses, f"no DIMSE status in the log:\n{log[-3000:]}"
    return statuses[-1].lower()


def final_counts(log: str) -> dict[str, int]:
    """The sub-operation counts of the last C-MOVE/C-GET response (DCMTK -d output)."""
    counts = {}
    for name in ("Remaining", "Completed", "Failed", "Warning"):
        found = re.findall(rf"{name} Suboperations\s*:\s*(\S+)", log)
        counts[name.lower()] = int(found[-1]) if found and found[-1].isdigit() else 0
    return counts


def findscu(h: Hospital, model: str, *keys: str, expect_ok: bool = True) -> tuple[list[pydicom.Dataset], str]:
    """Run DCMTK findscu (-P patient root / -S study root); return the responses and its log."""
    return run_findscu(h.vault, h.tmp, model, *keys, debug=True, expect_ok=expect_ok)


def values(responses: list[pydicom.Dataset], keyword: str) -> set[str]:
    return {str(r.get(keyword, "")) for r in responses}


def test_study_level_wildcard_date_range_and_uid_list(hospital: Hospital) -> None:
    h = hospital
    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "PatientName=DOE*", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(patient_name="DOE^JOHN") | h.studies(patient_name="DOE^JANE")

    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "PatientName=SM?TH*", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(patient_name="SMITH^ANNA") | h.studies(
        patient_name="SMYTHE^BOB")
    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "PatientName=SM?TH^*", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(patient_name="SMITH^ANNA")

    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "StudyDate=20240201-20240229", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(study_date="20240220")
    assert values(found, "StudyDate") == {"20240220"}

    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "StudyDate=-20240110", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(study_date="20240105")

    wanted = sorted(h.studies(patient_id="QR-PID-003"))
    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={wanted[0]}\\{wanted[1]}",
                       "PatientID")
    assert values(found, "StudyInstanceUID") == set(wanted)
    assert values(found, "PatientID") == {"QR-PID-003"}


def test_return_keys_are_filled(hospital: Hospital) -> None:
    h = hospital
    study = next(i for i in h.instances if i.patient_id == "QR-PID-002")
    (answer,), _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_uid}", "PatientName",
                           "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
                           "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle")
    assert str(answer.PatientName) == "DOE^JANE" and answer.PatientID == "QR-PID-002"
    assert answer.PatientBirthDate == "19650202" and answer.StudyDate == study.study_date
    assert answer.AccessionNumber == study.accession
    assert set(answer.ModalitiesInStudy) == {"CT", "MR"}
    assert int(answer.NumberOfStudyRelatedSeries) == 2
    assert int(answer.NumberOfStudyRelatedInstances) == 2 * PER_SERIES
    assert answer.RetrieveAETitle == h.vault.ae_title
    assert answer.QueryRetrieveLevel == "STUDY"


def test_every_level_of_both_models(hospital: Hospital) -> None:
    h = hospital
    found, _ = findscu(h, "P", "QueryRetrieveLevel=PATIENT", "PatientID=QR-PID-00*", "PatientName",
                       "NumberOfPatientRelatedStudies")
    assert values(found, "PatientID") == {pid for _n, pid, _b, _s in PATIENTS}
    assert {int(r.NumberOfPatientRelatedStudies) for r in found} == {len(STUDY_DATES)}

    one = next(i for i in h.instances if i.patient_id == "QR-PID-004")
    found, _ = findscu(h, "P", "QueryRetrieveLevel=STUDY", "PatientID=QR-PID-004", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(patient_id="QR-PID-004")

    found, _ = findscu(h, "S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={one.study_uid}", "Modality=MR",
                       "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")
    assert values(found, "SeriesInstanceUID") == {i.series_uid for i in h.instances
                                                  if i.study_uid == one.study_uid and i.modality == "MR"}
    assert {int(r.NumberOfSeriesRelatedInstances) for r in found} == {PER_SERIES}

    found, _ = findscu(h, "S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={one.study_uid}",
                       f"SeriesInstanceUID={one.series_uid}", "SOPInstanceUID", "InstanceNumber")
    assert values(found, "SOPInstanceUID") == {i.sop_uid for i in h.instances if i.series_uid == one.series_uid}
    assert values(found, "InstanceNumber") == {str(n + 1) for n in range(PER_SERIES)}


def test_non_ascii_names_come_back_in_utf8(hospital: Hospital) -> None:
    found, _ = findscu(hospital, "S", "QueryRetrieveLevel=STUDY", "PatientID=QR-PID-005", "PatientName")
    assert {str(r.PatientName) for r in found} == {"MÜLLER^JÜRGEN"}
    assert {r.SpecificCharacterSet for r in found} == {"ISO_IR 192"}


def test_invalid_level_and_patient_level_in_study_root_are_refused(hospital: Hospital) -> None:
    h = hospital
    found, log = findscu(h, "S", "QueryRetrieveLevel=BOGUS", "PatientID", expect_ok=False)
    assert not found and final_status(log) == "0xa900", log
    found, log = findscu(h, "S", "QueryRetrieveLevel=PATIENT", "PatientID", expect_ok=False)
    assert not found and final_status(log) == "0xa900", log
    found, log = findscu(h, "S", "QueryRetrieveLevel=STUDY", "StudyDate=2024-01-01", expect_ok=False)
    assert not found and final_status(log) == "0xc000", log
    assert "date" in log.lower(), "the Error Comment should say what is wrong"
    # ...and the server goes on serving.
    assert h.vault.echo()
    found, _ = findscu(h, "S", "QueryRetrieveLevel=STUDY", "PatientID=QR-PID-001", "StudyInstanceUID")
    assert values(found, "StudyInstanceUID") == h.studies(patient_id="QR-PID-001")


# --- C-MOVE and C-GET -------------------------------------------------------------------


def movescu(h: Hospital, destination: str, *keys: str, extra: tuple[str, ...] = ()) -> str:
    args = [dcmtk("movescu"), "-d", "-S", "-aec", h.vault.ae_title, "-aem", destination, *extra]
    for key in keys:
        args += ["-k", key]
    run = subprocess.run([*args, "127.0.0.1", str(h.vault.dicom_port)], capture_output=True, text=True, timeout=120)
    return run.stdout + run.stderr


def assert_byte_identical(h: Hospital, received: list[Path], expected_uids: set[str]) -> None:
    got = {}
    for path in received:
        data = path.read_bytes()
        got[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data
    assert set(got) == expected_uids
    for uid, data in got.items():
        assert dataset_bytes(data) == dataset_bytes(h.original(uid)), f"{uid} changed on the way out"


def test_move_a_study_to_storescp_byte_identical(hospital: Hospital) -> None:
    h = hospital
    study = next(i for i in h.instances if i.patient_id == "QR-PID-001").study_uid
    expected = {i.sop_uid for i in h.instances if i.study_uid == study}
    log = movescu(h, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert final_status(log) == "0x0000", log
    assert final_counts(log) == {"remaining": 0, "completed": len(expected), "failed": 0, "warning": 0}, log
    received = [p for p in h.scp_dir.iterdir() if p.is_file()]
    wanted = [p for p in received if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study]
    assert_byte_identical(h, wanted, expected)
    audit = h.vault.cli("audit", "verify")
    assert audit.returncode == 0


def test_get_a_series_and_an_instance_list_byte_identical(hospital: Hospital) -> None:
    h = hospital
    series = next(i for i in h.instances if i.patient_id == "QR-PID-003" and i.modality == "MR").series_uid
    expected = {i.sop_uid for i in h.instances if i.series_uid == series}
    for level, keys in (("SERIES", [f"SeriesInstanceUID={series}"]),
                        ("IMAGE", [f"SeriesInstanceUID={series}", "SOPInstanceUID=" + "\\".join(sorted(expected))])):
        out = h.tmp / f"get-{level}"
        out.mkdir()
        args = [dcmtk("getscu"), "-d", "-S", "+B", "-aec", h.vault.ae_title, "-od", str(out),
                "-k", f"QueryRetrieveLevel={level}"]
        for key in keys:
            args += ["-k", key]
        run = subprocess.run([*args, "127.0.0.1", str(h.vault.dicom_port)], capture_output=True, text=True,
                             timeout=120)
        log = run.stdout + run.stderr
        assert run.returncode == 0 and final_status(log) == "0x0000", log[-3000:]
        assert final_counts(log)["completed"] == len(expected), log[-3000:]
        assert_byte_identical(h, list(out.iterdir()), expected)


def test_move_to_unknown_destination_and_bad_identifier_get_the_right_status(hospital: Hospital) -> None:
    h = hospital
    study = h.instances[0].study_uid
    log = movescu(h, "NOSUCHNODE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert final_status(log) == "0xa801" and "NOSUCHNODE" in log, log
    log = movescu(h, "STORESCP", "QueryRetrieveLevel=STUDY")  # no StudyInstanceUID to retrieve
    assert final_status(log) == "0xa900", log
    log = movescu(h, "STORESCP", "QueryRetrieveLevel=WRONG", f"StudyInstanceUID={study}")
    assert final_status(log) == "0xa900", log
    assert h.vault.echo(), "the server must go on serving"
    refused = h.vault.cli("audit", "verify")
    assert refused.returncode == 0


def test_cancelled_move_stops_with_cancel_status(hospital: Hospital, tmp_path: Path) -> None:
    """movescu receives the instances itself (+P) and sends C-CANCEL after the first response."""
    h = hospital
    port = free_port()
    h.vault.stop()
    h.vault.add_peer("canceller", "CANCELSCU", port, permissions=["move"])
    h.vault.start()
    patient = "QR-PID-002"
    studies = sorted(h.studies(patient_id=patient))
    total = len([i for i in h.instances if i.patient_id == patient])
    out = tmp_path / "moved"
    out.mkdir()
    log = movescu(h, "CANCELSCU", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(studies),
                  extra=("-aet", "CANCELSCU", "+P", str(port), "-od", str(out), "--cancel", "1"))
    assert final_status(log) == "0xfe00", log[-3000:]
    received = len(list(out.iterdir()))
    assert 1 <= received < total, f"cancel after the first response, yet {received} of {total} arrived"
    assert h.vault.echo()


# --- Orthanc, the hospital's PACS ---------------------------------------------------------


def test_orthanc_pulls_from_its_backup_and_receives_a_move(hospital: Hospital, orthanc_factory) -> None:  # noqa: F811
    """The PACS queries dicomvault (C-FIND) and retrieves (C-MOVE to itself) a patient's studies."""
    h = hospital
    pacs: Orthanc = orthanc_factory(aet="PACS")
    pacs.add_modality("vault", h.vault.ae_title, "127.0.0.1", h.vault.dicom_port)
    h.vault.stop()
    h.vault.add_peer("pacs", "PACS", pacs.dicom_port, permissions=["store", "find", "move"])
    h.vault.start()

    query = pacs.rest("POST", "/modalities/vault/query",
                      {"Level": "Study", "Query": {"PatientID": "QR-PID-006", "StudyInstanceUID": "",
                                                   "ModalitiesInStudy": ""}})
    answers = pacs.rest("GET", f"/queries/{query['ID']}/answers?expand")
    found = {a["0020,000d"]["Value"] for a in answers}
    assert found == h.studies(patient_id="QR-PID-006")
    pacs.rest("POST", f"/queries/{query['ID']}/retrieve", {"TargetAet": "PACS", "Synchronous": True},
              timeout=120)
    expected = [i for i in h.instances if i.patient_id == "QR-PID-006"]
    for instance in expected:
        (resource,) = pacs.lookup(instance.sop_uid)
        stored = pacs.instance_file(resource["ID"])
        assert dataset_bytes(stored) == dataset_bytes(instance.path.read_bytes()), instance.path.name

    # dicomvault pushes to the PACS with movescu as the requester, too.
    study = next(i for i in h.instances if i.patient_id == "QR-PID-005").study_uid
    log = movescu(h, "PACS", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert final_status(log) == "0x0000", log[-3000:]
    for instance in (i for i in h.instances if i.study_uid == study):
        (resource,) = pacs.lookup(instance.sop_uid)
        assert dataset_bytes(pacs.instance_file(resource["ID"])) == dataset_bytes(instance.path.read_bytes())


def test_cancel_stops_a_streaming_find(hospital: Hospital) -> None:
    """C-CANCEL during C-FIND. Over loopback all 72 responses fit in the socket buffers before a
    cancel could arrive, so the network is replaced by a recording operation here; the
    service, the query engine and the catalog are the real ones."""
    import threading

    from pydicom.dataset import Dataset

    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings
    from dicomvault.net import pdu
    from dicomvault.serve.qr.find import QueryRetrieveService, encode_identifier

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SOPInstanceUID = ""
    responses: list[tuple[int, bool]] = []

    class RecordingOperation:
        kind = pdu.C_FIND_RQ
        model = "STUDY"
        transfer_syntax = "1.2.840.10008.1.2"
        cancelled = threading.Event()
        finished = False

        class assoc:  # noqa: N801 - stands in for net.acceptor.Association
            calling_ae, address = "CANCELTEST", "127.0.0.1"

        def __init__(self) -> None:
            self.identifier = encode_identifier(identifier, self.transfer_syntax)

        def respond(self, status: int, identifier: bytes | None = None, **_: object) -> None:
            responses.append((status, identifier is not None))
            if len(responses) == 3:
                self.cancelled.set()  # the C-CANCEL arrives after the third match

    archive = Archive.open(load_settings(hospital.vault.config))
    try:
        QueryRetrieveService(archive)(RecordingOperation())  # type: ignore[arg-type]
    finally:
        archive.close()
    assert responses[:3] == [(0xFF00, True)] * 3
    assert responses[3:] == [(0xFE00, False)], responses


def test_cancelled_get_stops_after_the_current_sub_operation(hospital: Hospital) -> None:
    """A C-GET requestor (pynetdicom) sends C-CANCEL while receiving its first instance: the
    cancel precedes that C-STORE's response on the wire, so exactly one is completed."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    h = hospital
    patient = "QR-PID-003"
    total = len([i for i in h.instances if i.patient_id == patient])
    received: list[str] = []
    holder: dict[str, object] = {}

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            holder["assoc"].send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelGet)  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", h.vault.dicom_port, ae_title=h.vault.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    holder["assoc"] = assoc
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "\\".join(sorted(h.studies(patient_id=patient)))
    try:
        responses = [(status.Status, status.get("NumberOfCompletedSuboperations"),
                      status.get("NumberOfRemainingSuboperations"))
                     for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert responses[-1] == (0xFE00, 1, total - 1), responses
    assert len(received) == 1
    assert h.vault.echo(), "the server must go on serving"


def test_partial_failure_names_the_instances_that_could_not_be_sent(hospital: Hospital, tmp_path: Path) -> None:
    """storescp (default: uncompressed syntaxes only) cannot take a JPEG instance, which the
    archive never decompresses: the move completes the rest and reports that one UID."""
    from pydicom.data import get_testdata_file

    h = hospital
    target = next(i for i in h.instances if i.patient_id == "QR-PID-006")
    jpeg = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    jpeg.PatientID, jpeg.PatientName = target.patient_id, target.patient_name
    jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID = target.study_uid, generate_uid()
    jpeg.SOPInstanceUID = generate_uid()
    jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
    (tmp_path / "jpeg").mkdir()
    jpeg.save_as(tmp_path / "jpeg" / "jpeg.dcm", enforce_file_format=True)
    h.vault.cli("import", str(tmp_path / "jpeg"))

    others = {i.sop_uid for i in h.instances if i.study_uid == target.study_uid}
    log = movescu(h, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={target.study_uid}")
    assert final_status(log) == "0xb000", log[-3000:]
    assert final_counts(log) == {"remaining": 0, "completed": len(others), "failed": 1, "warning": 0}, log[-3000:]
    failed = re.findall(r"\(0008,0058\) UI \[([0-9.]+)\]", log)
    assert failed == [str(jpeg.SOPInstanceUID)], log[-3000:]
    assert h.vault.echo()


def test_a_damaged_stored_copy_fails_only_its_own_sub_operation(hospital: Hospital) -> None:
    """Never send wrong bytes: the altered object fails its SHA-256/AEAD check and is reported
    by UID; the rest of the series goes out byte-identical."""
    from dicomvault.catalog import Catalog
    from dicomvault.config import load_settings
    from dicomvault.sites import open_site

    h = hospital
    chosen = next(i for i in h.instances if i.patient_id == "QR-PID-004" and i.modality == "CT")
    series = chosen.series_uid
    members = sorted(i.sop_uid for i in h.instances if i.series_uid == series)
    settings = load_settings(h.vault.config)
    catalog = Catalog(settings.catalog_url)
    try:
        (record,) = catalog.versions_for_uid(members[0])
    finally:
        catalog.close()
    path = open_site(settings.primary_site_url).path_of(record.object_id)  # type: ignore[attr-defined]
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(damaged))

    log = movescu(h, "STORESCP", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={chosen.study_uid}",
                  f"SeriesInstanceUID={series}")
    assert final_status(log) == "0xb000", log[-3000:]
    assert re.findall(r"\(0008,0058\) UI \[([0-9.]+)\]", log) == [members[0]], log[-3000:]
    assert final_counts(log)["completed"] == len(members) - 1
    assert "ALERT" in h.vault.log() and members[0] in h.vault.log()
