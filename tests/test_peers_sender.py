"""The one C-STORE sender and its status rule (peers/sender.py, peers/status.py) against a
real DICOM receiver: a pynetdicom SCP on loopback that answers each instance with the
status the test chose, and what the sender, a restore, a C-MOVE and the dicom:// target
make of each class (stored, stored with a warning, failed, no Status at all).
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Vault, free_port, make_vault
from dicomvault.dicom import split_part10
from dicomvault.peers.sender import StoreSender
from dicomvault.peers.status import FAILED, STORED, STORED_WITH_WARNING, outcome

CT = "1.2.840.10008.5.1.4.1.1.2"
NO_STATUS = -1  # the receiver leaves the Status element out of its C-STORE-RSP

# (status the receiver answers, Error Comment it adds, the outcome the sender must report)
CASES = [
    (0x0000, "", STORED),
    (0xB000, "coerced PatientName", STORED_WITH_WARNING),
    (0xB007, "", STORED_WITH_WARNING),
    (0x0001, "", STORED_WITH_WARNING),
    (0xA700, "disk full", FAILED),
    (0xA900, "", FAILED),
    (0xC000, "", FAILED),
    (0x0122, "", FAILED),
    (NO_STATUS, "", FAILED),
]


@dataclass
class StatusPacs:
    """A pynetdicom Storage SCP answering ``answers[SOP Instance UID]`` (default success)."""

    ae_title: str
    port: int
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def store_handler(scp: StatusPacs) -> Callable[[Any], Dataset]:
    """A pynetdicom EVT_C_STORE handler that records each instance in ``scp.received`` and
    answers ``scp.answers[uid]`` (the ``pacs`` fixture strips Status for NO_STATUS)."""

    def on_store(event: Any) -> Dataset:
        uid = str(event.request.AffectedSOPInstanceUID)
        with scp.lock:
            scp.received.append(uid)
        status, comment = scp.answers.get(uid, (0x0000, ""))
        answer = Dataset()
        answer.Status = 0x0000 if status == NO_STATUS else status
        if comment:
            answer.ErrorComment = comment
        return answer

    return on_store


@pytest.fixture
def pacs(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusPacs]:
    from pynetdicom import AE, evt
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_primitives import C_STORE

    scp = StatusPacs("STATUSPACS", free_port())
    on_store = store_handler(scp)

    send_msg = DIMSEServiceProvider.send_msg

    def strip_status(self: DIMSEServiceProvider, primitive: object, context_id: int) -> None:
        """Only this process's SCP uses pynetdicom's DIMSE layer: the sender under test does not."""
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None \
                and scp.answers.get(str(primitive.AffectedSOPInstanceUID), (0, ""))[0] == NO_STATUS:
            primitive.Status = None  # pynetdicom then omits the element from the command set
        send_msg(self, primitive, context_id)  # type: ignore[arg-type]

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", strip_status)
    ae = AE(ae_title=scp.ae_title)
    ae.add_supported_context(CT, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield scp
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def template() -> pydicom.Dataset:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]
    return ds


def write_instances(template: pydicom.Dataset, folder: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` CT instances of one study as Part-10 files; (SOP Instance UID, data set bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    made = []
    for n in range(count):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.PatientID, ds.InstanceNumber = "PEERS", n + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{n:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        made.append((str(ds.SOPInstanceUID), data[split_part10(data)[0]:]))
    return made


def assign(pacs: StatusPacs, uids: list[str]) -> dict[str, tuple[int, str, object]]:
    """Give each case of CASES to one instance; uid -> (status, comment, expected kind)."""
    assert len(uids) == len(CASES)
    chosen = {uid: case for uid, case in zip(uids, CASES)}
    pacs.answers.update({uid: (status, comment) for uid, (status, comment, _kind) in chosen.items()})
    return chosen


# --- the rule itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (0x0000, STORED), (0x0001, STORED_WITH_WARNING), (0x0107, STORED_WITH_WARNING), (0x0116, STORED_WITH_WARNING),
    (0xB000, STORED_WITH_WARNING), (0xB006, STORED_WITH_WARNING), (0xB007, STORED_WITH_WARNING),
    (0xBFFF, STORED_WITH_WARNING), (0xA700, FAILED), (0xA7FF, FAILED), (0xA900, FAILED), (0xC000, FAILED),
    (0xCFFF, FAILED), (0x0122, FAILED), (0x0124, FAILED), (0x0211, FAILED), (0x0212, FAILED),
    (0xFF00, FAILED), (0xFE00, FAILED), (0x1234, FAILED), (None, FAILED),
])
def test_every_status_class_maps_to_one_outcome(status: int | None, kind: object) -> None:
    result = outcome(status, "")
    assert result.kind is kind
    assert result.stored is (kind is not FAILED)
    if status is None:
        assert "protocol error" in (result.detail() or "")


def test_details_carry_the_code_and_the_receivers_comment() -> None:
    assert outcome(0x0000).detail() is None
    assert outcome(0xB000, "coerced").detail() == "stored with warning 0xB000: coerced"
    assert outcome(0xB007).detail() == "stored with warning 0xB007: data set does not match SOP class"
    assert outcome(0xA700).detail() == "refused: out of resources"
    assert outcome(0xA700, "disk full").describe() == "status 0xA700: disk full"


# --- the sender against a real receiver ---------------------------------------------------


def test_the_sender_reports_each_class_of_status_from_a_real_receiver(
        pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) -> None:
    made = write_instances(template, tmp_path / "files", len(CASES))
    chosen = assign(pacs, [uid for uid, _ in made])
    sender = StoreSender("127.0.0.1", pacs.port, pacs.ae_title, "DVTEST", timeout=10)
    try:
        sender.open([(CT, ExplicitVRLittleEndian)])
        results = {uid: sender.send(CT, uid, ExplicitVRLittleEndian, data).outcome for uid, data in made}
    finally:
        sender.close()
    assert pacs.received == [uid for uid, _ in made], "one C-STORE per instance, on one association, no retry"
    for uid, (status, comment, kind) in chosen.items():
        result = results[uid]
        assert result.kind is kind, (hex(status), result)
        assert result.status == (None if status == NO_STATUS else status)
        assert result.comment == comment or status == NO_STATUS
    missing = results[next(uid for uid, case in chosen.items() if case[0] == NO_STATUS)]
    assert "protocol error" in missing.describe()


# --- restore records what the rule says ---------------------------------------------------


def test_restore_records_warnings_as_sent_and_failures_with_their_status(
        pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) -> None:
    import json

    made = write_instances(template, tmp_path / "files", len(CASES))
    chosen = assign(pacs, [uid for uid, _ in made])
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    vault.add_peer("pacs", pacs.ae_title, pacs.port)

    proc = vault.cli("restore", "--to", "pacs", "--json", "--associations", "1", check=False)
    report = json.loads(proc.stdout)

    failed = [uid for uid, (_s, _c, kind) in chosen.items() if kind is FAILED]
    assert proc.returncode == 2, proc.stderr  # finished, with refusals
    assert (report["sent"], report["failed"], report["pending"]) == (len(CASES) - len(failed), len(failed), 0)
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        rows = {r[0]: r[1:] for r in db.execute("SELECT sop_instance_uid, state, status, detail FROM restore_items")}
    for uid, (status, comment, kind) in chosen.items():
        state, recorded, detail = rows[uid]
        if kind is STORED:
            assert (state, recorded, detail) == ("sent", 0, None)
        elif kind is STORED_WITH_WARNING:
            assert state == "sent" and recorded == status, rows[uid]
            assert detail.startswith(f"stored with warning 0x{status:04X}") and comment in detail, detail
        elif status == NO_STATUS:
            assert (state, recorded) == ("failed", None) and "protocol error" in detail, rows[uid]
        else:
            assert state == "failed" and recorded == status, rows[uid]
            assert detail == (comment or outcome(status).detail()), rows[uid]
    by_uid = {f["sop_instance_uid"]: f for f in report["failures"]}
    assert set(by_uid) == set(failed)
    assert by_uid[next(u for u, c in chosen.items() if c[0] == 0xA700)]["status"] == "0xA700"


# --- the dicom:// target -------------------------------------------------------------------


def test_the_dicom_target_delivers_through_the_sha256_gate_and_refuses_on_failure(
        pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) -> None:
    from dicomvault.archive.core import Archive
    from dicomvault.archive.repository import IntegrityError
    from dicomvault.catalog.retrieval import retrieval_items
    from dicomvault.config import load_settings
    from dicomvault.peers.target import PacsTarget, TargetError

    made = write_instances(template, tmp_path / "files", 4)
    (ok, _), (warned, _), (refused, _), (silent, _) = made
    pacs.answers.update({warned: (0xB000, "coerced"), refused: (0xA700, "disk full"), silent: (NO_STATUS, "")})
    vault = make_vault(tmp_path / "vault")
    vault.cli("import", str(tmp_path / "files"))
    archive = Archive.open(load_settings(vault.config))
    try:
        objects = {i.sop_instance_uid: i.object_id
                   for i in retrieval_items(archive.catalog, "IMAGE", [uid for uid, _ in made])}
        target = PacsTarget.from_url(f"dicom://{pacs.ae_title}@127.0.0.1:{pacs.port}", {"calling_ae": "DVTEST"},
                                     archive.repository)
        try:
            sealed = {uid: archive.repository.sealed(objects[uid]) for uid, _ in made}
            assert target.deliver(objects[ok], sealed[ok]) is True
            assert target.deliver(objects[warned], sealed[warned]) is True  # a warning is stored
            with pytest.raises(TargetError, match="status 0xA700: disk full"):
                target.deliver(objects[refused], sealed[refused])
            with pytest.raises(TargetError, match="protocol error"):
                target.deliver(objects[silent], sealed[silent])
            tampered = bytearray(sealed[ok])
            tampered[-1] ^= 1
            with pytest.raises(IntegrityError):
                target.deliver(objects[ok], bytes(tampered))
        finally:
            target.close()
    finally:
        archive.close()
    assert pacs.received == [ok, warned, refused, silent], "a tampered object must never reach the PACS"


# --- C-MOVE and C-GET sub-operations count warnings apart ----------------------------------


def study_with_every_case(pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) \
        -> tuple[dict[str, tuple[int, str, object]], str]:
    """One instance per CASES entry, written to ``tmp_path/files``; (chosen cases, Study UID)."""
    made = write_instances(template, tmp_path / "files", len(CASES))
    chosen = assign(pacs, [uid for uid, _ in made])
    study = str(pydicom.dcmread(tmp_path / "files" / "00.dcm", stop_before_pixels=True).StudyInstanceUID)
    return chosen, study


def assert_counted_apart(final: Dataset, chosen: dict[str, tuple[int, str, object]]) -> None:
    """PS3.4 C.4.2: stored-with-warning sub-operations are Warning, not Completed, and any
    warning or failure makes the final status 0xB000."""
    kinds = [kind for _s, _c, kind in chosen.values()]
    assert final.Status == 0xB000, final
    assert (final.NumberOfCompletedSuboperations, final.NumberOfWarningSuboperations,
            final.NumberOfFailedSuboperations) == (kinds.count(STORED), kinds.count(STORED_WITH_WARNING),
                                                   kinds.count(FAILED)), final


def study_query(study: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    return query


def test_a_move_counts_warnings_apart_and_answers_b000(
        pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    chosen, study = study_with_every_case(pacs, template, tmp_path)
    vault = make_vault(tmp_path / "vault")
    vault.add_peer("pacs", pacs.ae_title, pacs.port)
    vault.add_peer("mover", "MOVESCU", 104, permissions=["move"])
    vault.start()
    try:
        vault.cli("import", str(tmp_path / "files"))
        scu = AE(ae_title="MOVESCU")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title)
        assert assoc.is_established
        try:
            responses = list(assoc.send_c_move(study_query(study), pacs.ae_title,
                                               StudyRootQueryRetrieveInformationModelMove))
        finally:
            assoc.release()
    finally:
        vault.stop()
    assert_counted_apart(responses[-1][0], chosen)
    assert sorted(pacs.received) == sorted(chosen), "every instance offered once"


def test_a_get_counts_warnings_apart_and_answers_b000(
        pacs: StatusPacs, template: pydicom.Dataset, tmp_path: Path) -> None:
    """C-GET sub-operations travel back on the requester's own association, and its C-STORE
    responses are judged by the same rule: warnings counted apart, no Status a failure."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

    chosen, study = study_with_every_case(pacs, template, tmp_path)
    vault = make_vault(tmp_path / "vault")
    vault.add_peer("getter", "GETSCU", 104, permissions=["get"])
    vault.start()
    try:
        vault.cli("import", str(tmp_path / "files"))
        scu = AE(ae_title="GETSCU")  # the requester is the receiver: same answers as the PACS
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        scu.add_requested_context(CT, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", vault.dicom_port, ae_title=vault.ae_title,
                              ext_neg=[build_role(CT, scp_role=True)],
                              evt_handlers=[(evt.EVT_C_STORE, store_handler(pacs))])
        assert assoc.is_established
        try:
            responses = list(assoc.send_c_get(study_query(study), StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
    finally:
        vault.stop()
    assert_counted_apart(responses[-1][0], chosen)
    assert sorted(pacs.received) == sorted(chosen), "every instance offered once"
