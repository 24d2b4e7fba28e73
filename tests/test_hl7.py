"""HL7 v2 ADT patient updates and merges (issue 19 §2), tried with real parts: a running
`dicomvault serve` with `[hl7] port`, studies sent with DCMTK storescu, ADT messages sent by
python-hl7's `mllp_send` (a separate process speaking MLLP), answers read with DCMTK findscu,
QIDO-RS and `find`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import hl7
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import Vault, audit_rows, dcmtk, free_port, make_vault, wait_until
from test_corrections import _template, findscu, qido, storescu, write_instance
from test_dimse_tls import pki  # noqa: F401 - fixture
from pgserver import PostgresServer, postgres_server  # noqa: F401 - fixture
from test_catalog_postgres import use_catalog
from orthanc import orthanc_factory  # noqa: F401 - fixture

RULES = """
[[retention.rules]]
name = "minors"
age_below = 18
keep = "10y"
keep_after_age = { age = 18, plus = "7y" }
"""
STUDY_DATE = "20240410"  # write_instance's


def adt(event: str, control_id: str, pid: str, mrg: str = "", facility: str = "HOSP", app: str = "ADT1") -> str:
    """One ADT message (segments end in CR, as MLLP carries them)."""
    kind = {"A40": "ADT^A40^ADT_A39", "A47": "ADT^A47^ADT_A30"}.get(event, f"ADT^{event}^ADT_A01")
    segments = [f"MSH|^~\\&|{app}|{facility}|DICOMVAULT|DV|20240501120000||{kind}|{control_id}|P|2.5",
                "EVN|" + event + "|20240501120000", "PID|1||" + pid]
    if mrg:
        segments.append("MRG|" + mrg)
    return "\r".join(segments)


def mllp_send(port: int, tmp: Path, *messages: str, raw: bytes = b"") -> list[dict[str, str]]:
    """Send with python-hl7's mllp_send (one connection, one message after the other) and return
    each ACK's MSA-1 (code), MSA-2 (control id) and MSA-3 (text)."""
    path = tmp / f"msgs-{generate_uid()}.hl7"
    path.write_bytes(raw or b"".join(b"\x0b" + m.encode() + b"\x1c\r" for m in messages))
    run = subprocess.run(["mllp_send", "-p", str(port), "-f", str(path), "127.0.0.1"],
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    acks = []
    for block in re.findall(rb"\x0b(.*?)\x1c", run.stdout, re.S):
        ack = hl7.parse(block.decode())
        acks.append({"code": str(ack.extract_field("MSA", 1, 1)), "control_id": str(ack.extract_field("MSA", 1, 2)),
                     "text": ack.unescape(str(ack.extract_field("MSA", 1, 3)))})
    return acks


def ids_found(vault: Vault, tmp: Path, patient_id: str) -> list[tuple[str, str]]:
    """(StudyInstanceUID, PatientName) of a DCMTK study-root C-FIND by PatientID."""
    rows = findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", f"PatientID={patient_id}", "StudyInstanceUID",
                   "PatientName")
    return sorted((r.StudyInstanceUID, str(r.PatientName)) for r in rows)


def patient_row(vault: Vault, patient_id: str) -> tuple | None:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT patient_name, birth_date, sex, merged_into FROM patients WHERE patient_id = ?",
                          (patient_id,)).fetchone()


def keep_until(vault: Vault, study_uid: str) -> tuple[str, str]:
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT keep_until, rule FROM study_retention WHERE study_uid = ?", (study_uid,)).fetchone()


class Patients:
    """Studies of four patients, stored with storescu: one to update, two to merge, one to renumber."""

    def __init__(self, tmp: Path) -> None:
        template = _template()
        self.files: dict[str, Path] = {}
        self.studies: dict[str, str] = {}
        for pid, name, birth in (("UPD-1", "DOE^JANE", "19700101"), ("PRIOR-1", "SMITH^JOHN", "19600101"),
                                 ("SURV-1", "SMITH^JOHN^Q", "19600101"), ("OLDID-1", "ROE^RICHARD", "19500101")):
            uid = self.studies[pid] = generate_uid()
            self.files[pid] = write_instance(template, tmp / "in" / f"{pid}.dcm", uid, generate_uid(),
                                             generate_uid(), 1, PatientID=pid, PatientName=name,
                                             PatientBirthDate=birth, PatientSex="F")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vault, Patients, Path]]:
    tmp = tmp_path_factory.mktemp("hl7")
    vault = make_vault(tmp / "vault")
    vault.hl7_port = free_port()  # type: ignore[attr-defined]
    vault.set_config("dicomweb", "enabled", "true")
    vault.set_config("retention", "default", '"10y"')
    with vault.config.open("a") as config:
        config.write(RULES)
    vault.set_config("hl7", "port", str(vault.hl7_port))  # type: ignore[attr-defined]
    vault.set_config("hl7", "bind", '"127.0.0.1"')
    vault.set_config("hl7", "allowed_facilities", '["ADT1@HOSP", "LAB"]')
    vault.add_peer("findscu", "FINDSCU", 104, permissions=["find"])
    vault.add_peer("movescu", "MOVESCU", 104, permissions=["move"])
    vault.add_peer("getscu", "GETSCU", 104, permissions=["get"], coerce_demographics=True)
    scps = {name: (free_port(), tmp / name) for name in ("PLAINSCP", "COERCESCP")}
    vault.add_peer("plain", "PLAINSCP", scps["PLAINSCP"][0])
    vault.add_peer("coercing", "COERCESCP", scps["COERCESCP"][0], coerce_demographics=True)
    vault.start()
    patients = Patients(tmp)
    storescu(vault, *patients.files.values())
    receivers = []
    for ae, (port, folder) in scps.items():
        folder.mkdir()
        receivers.append(subprocess.Popen([dcmtk("storescp"), "-aet", ae, "-od", str(folder), str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: subprocess.run([dcmtk("echoscu"), "-aec", ae, "127.0.0.1", str(port)],
                                          capture_output=True).returncode == 0, what=f"{ae} C-ECHO")
    try:
        yield vault, patients, tmp
    finally:
        for receiver in receivers:
            receiver.terminate()
            receiver.wait(timeout=10)
        vault.stop()


def test_a08_updates_what_cfind_qido_and_find_answer_with_history(hospital: tuple[Vault, Patients, Path]) -> None:
    vault, patients, tmp = hospital
    uid = patients.studies["UPD-1"]
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "DOE^JANE")]
    before = keep_until(vault, uid)
    assert before == ("2034-04-10", "default")  # an adult: 10 years from the study date
    (ack,) = mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-A08-1", "UPD-1^^^HOSP||DOE-SMITH^JANE^M^^DR|"
                                                                   "|20150301|F"))
    assert ack["code"] == "AA" and ack["control_id"] == "MSG-A08-1", ack
    # C-FIND (DCMTK), QIDO-RS and `find` answer the new name; the old one finds nothing
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "DOE-SMITH^JANE^M^DR")]
    assert findscu(vault, tmp, "S", "QueryRetrieveLevel=STUDY", "PatientName=DOE^JANE", "StudyInstanceUID") == []
    patient_level = findscu(vault, tmp, "P", "QueryRetrieveLevel=PATIENT", "PatientID=UPD-1", "PatientName",
                            "PatientBirthDate")
    assert [(str(r.PatientName), r.PatientBirthDate) for r in patient_level] == [("DOE-SMITH^JANE^M^DR", "20150301")]
    (row,) = qido(vault, "studies", PatientID="UPD-1", includefield="PatientBirthDate")
    assert row["00100010"]["Value"][0]["Alphabetic"] == "DOE-SMITH^JANE^M^DR"
    found = json.loads(vault.cli("find", "--patient-id", "UPD-1", "--json").stdout)
    assert [(f["patient_name"], f["birth_date"]) for f in found] == [("DOE-SMITH^JANE^M^DR", "20150301")]
    # a child after all: retention follows the birth date in the same transaction
    assert keep_until(vault, uid) == ("2040-03-01", "minors")  # 18th birthday 2033-03-01 + 7 years
    history = json.loads(vault.cli("patient", "history", "UPD-1", "--json").stdout)
    assert [(h["event"], h["control_id"], h["sender"], h["address"]) for h in history] == [
        ("A08", "MSG-A08-1", "ADT1@HOSP", "127.0.0.1")]
    assert history[0]["old"] == {"patient_name": "DOE^JANE", "birth_date": "19700101"}
    assert history[0]["new"] == {"patient_name": "DOE-SMITH^JANE^M^DR", "birth_date": "20150301"}
    assert [(s, o, d["control_id"]) for s, o, d in audit_rows(vault, "patient-update")] == [
        ("UPD-1", "success", "MSG-A08-1")]
    # and as a DICOM audit message (ATNA): Patient Record, action Update, the sender and its address
    import xml.etree.ElementTree as ET
    from types import SimpleNamespace

    from dicomvault.audit import atna

    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        row = db.execute("SELECT id, ts, actor, action, subject, outcome, detail FROM audit_log"
                         " WHERE action = 'patient-update'").fetchone()
    message = ET.fromstring(atna.build(SimpleNamespace(**dict(zip(
        ("id", "ts", "actor", "action", "subject", "outcome", "detail"), row))), atna.Source("s", "dv", "AE", "h")))
    event = message.find("EventIdentification")
    assert (event.get("EventActionCode"), event.find("EventID").get("csd-code")) == ("U", "110110")
    requestor = next(p for p in message.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("hl7:ADT1@HOSP", "127.0.0.1")
    assert [o.get("ParticipantObjectID") for o in message.findall("ParticipantObjectIdentification")] == ["UPD-1"]


def test_a40_moves_the_studies_and_the_prior_id_finds_nothing(hospital: tuple[Vault, Patients, Path]) -> None:
    vault, patients, tmp = hospital
    prior, survivor = patients.studies["PRIOR-1"], patients.studies["SURV-1"]
    (ack,) = mllp_send(vault.hl7_port, tmp, adt("A40", "MSG-A40-1", "SURV-1^^^HOSP||SMITH^JOHN^Q", mrg="PRIOR-1^^^HOSP"))
    assert ack["code"] == "AA" and "1 study" in ack["text"], ack
    assert ids_found(vault, tmp, "SURV-1") == sorted([(prior, "SMITH^JOHN^Q"), (survivor, "SMITH^JOHN^Q")])
    assert ids_found(vault, tmp, "PRIOR-1") == []
    assert findscu(vault, tmp, "P", "QueryRetrieveLevel=PATIENT", "PatientID=PRIOR-1", "PatientName") == []
    assert qido(vault, "studies", PatientID="PRIOR-1") == []
    assert {r["0020000D"]["Value"][0] for r in qido(vault, "studies", PatientID="SURV-1")} == {prior, survivor}
    (entry,) = json.loads(vault.cli("patient", "history", "PRIOR-1", "--json").stdout)
    assert (entry["event"], entry["patient_id"], entry["prior_patient_id"], entry["new"]["studies_moved"]) == \
        ("A40", "SURV-1", "PRIOR-1", [prior])
    # the modality sends one more image under the prior ID: it is filed under the survivor
    later = write_instance(_template(), tmp / "late" / "prior.dcm", prior, generate_uid(), generate_uid(), 2,
                           PatientID="PRIOR-1", PatientName="SMITH^JOHN", PatientBirthDate="19600101")
    storescu(vault, later)
    assert ids_found(vault, tmp, "PRIOR-1") == []
    assert [uid for uid, _ in ids_found(vault, tmp, "SURV-1")] == sorted([prior, survivor])


def test_a47_changes_the_identifier(hospital: tuple[Vault, Patients, Path]) -> None:
    vault, patients, tmp = hospital
    uid = patients.studies["OLDID-1"]
    (ack,) = mllp_send(vault.hl7_port, tmp, adt("A47", "MSG-A47-1", "NEWID-1^^^HOSP", mrg="OLDID-1^^^HOSP"))
    assert ack["code"] == "AA", ack
    assert ids_found(vault, tmp, "NEWID-1") == [(uid, "ROE^RICHARD")]
    assert ids_found(vault, tmp, "OLDID-1") == []
    # changing to an identifier another patient has is refused: that is a merge (A40)
    (ack,) = mllp_send(vault.hl7_port, tmp, adt("A47", "MSG-A47-2", "SURV-1^^^HOSP", mrg="NEWID-1^^^HOSP"))
    assert ack["code"] == "AE" and "A40" in ack["text"], ack
    assert ids_found(vault, tmp, "NEWID-1") == [(uid, "ROE^RICHARD")]
    assert [(s, d["prior"]) for s, _, d in audit_rows(vault, "patient-id-change")] == [("NEWID-1", "OLDID-1")]


def stored_sha256(vault: Vault, study_uid: str) -> tuple[str, str]:
    """(SOP Instance UID, SHA-256 of the stored file) of the study's one instance."""
    with sqlite3.connect(vault.root / "catalog.sqlite3") as db:
        return db.execute("SELECT i.sop_instance_uid, v.sha256 FROM versions v JOIN instances i ON i.id = v.instance_pk"
                          " JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
                          " WHERE st.study_uid = ?", (study_uid,)).fetchone()


def received(folder: Path) -> list[pydicom.Dataset]:
    """What storescp wrote into ``folder`` since the last call."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".seen")]
    for path in files:
        path.rename(path.with_name(path.name + ".seen"))
    return [pydicom.dcmread(p.with_name(p.name + ".seen")) for p in files]


def test_coerce_demographics_on_export_restore_and_move(hospital: tuple[Vault, Patients, Path]) -> None:
    """After the A47 above the catalog says NEWID-1 (issuer HOSP); the stored file says OLDID-1."""
    vault, patients, tmp = hospital
    uid = patients.studies["OLDID-1"]
    sop, stored = stored_sha256(vault, uid)
    # export to a folder: byte-exact by default, the current demographics on request
    vault.cli("export", "--to", str(tmp / "exact"), "--study", uid)
    (exact,) = (tmp / "exact" / "DICOM").rglob("I*")
    assert hashlib.sha256(exact.read_bytes()).hexdigest() == stored
    report = json.loads(vault.cli("export", "--to", str(tmp / "coerced"), "--study", uid, "--coerce-demographics",
                                  "--json").stdout)
    (written,) = (tmp / "coerced" / "DICOM").rglob("I*")
    ds = pydicom.dcmread(written)
    assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == ("NEWID-1", "HOSP", "ROE^RICHARD")
    assert report["coerced"] == [{"sop_instance_uid": sop, "stored_sha256": stored,
                                  "sent_sha256": hashlib.sha256(written.read_bytes()).hexdigest()}]
    assert pydicom.dcmread(tmp / "coerced" / "DICOMDIR").DirectoryRecordSequence[0].PatientID == "NEWID-1"
    # restore to a PACS (DCMTK storescp): stored values unless asked
    vault.cli("restore", "--to", "plain", "--study", uid)
    assert [r.PatientID for r in received(tmp / "PLAINSCP")] == ["OLDID-1"]
    job = json.loads(vault.cli("restore", "--to", "plain", "--study", uid, "--fresh", "--coerce-demographics",
                               "--json").stdout)
    (got,) = received(tmp / "PLAINSCP")
    assert (got.PatientID, got.IssuerOfPatientID) == ("NEWID-1", "HOSP")
    assert [(c["sop_instance_uid"], c["stored_sha256"]) for c in job["coerced"]] == [(sop, stored)]
    assert job["coerced"][0]["sent_sha256"] != stored
    # C-MOVE to a peer with coerce_demographics = true, and to one without
    for destination, expected in (("COERCESCP", "NEWID-1"), ("PLAINSCP", "OLDID-1")):
        moved = subprocess.run([dcmtk("movescu"), "-S", "-aec", vault.ae_title, "-aem", destination,
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                                "127.0.0.1", str(vault.dicom_port)], capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stderr
        assert [r.PatientID for r in received(tmp / destination)] == [expected]
    # C-GET by a peer with coerce_demographics = true
    (tmp / "got").mkdir()
    got = subprocess.run([dcmtk("getscu"), "-S", "-aec", vault.ae_title, "-od", str(tmp / "got"),
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                          "127.0.0.1", str(vault.dicom_port)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert [r.PatientID for r in received(tmp / "got")] == ["NEWID-1"]
    (get_row,) = [d for _, _, d in audit_rows(vault, "get")]
    assert [(c["sop_instance_uid"], c["stored_sha256"]) for c in get_row["coerced"]] == [(sop, stored)]
    moves = [d for _, _, d in audit_rows(vault, "move")]
    assert [c["sop_instance_uid"] for c in moves[-2]["coerced"]] == [sop] and "coerced" not in moves[-1]
    # nothing stored changed
    assert stored_sha256(vault, uid) == (sop, stored)


def test_refusals_and_what_is_only_acknowledged_change_nothing(hospital: tuple[Vault, Patients, Path]) -> None:
    vault, patients, tmp = hospital
    uid = patients.studies["UPD-1"]
    mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-BASE", "UPD-1^^^HOSP||BASE^NAME"))
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "BASE^NAME")]
    acks = mllp_send(
        vault.hl7_port, tmp,
        adt("A08", "MSG-X1", "UPD-1^^^HOSP||EVIL^NAME", facility="ELSEWHERE"),  # facility not allowed
        adt("A08", "MSG-X2", "UPD-1^^^HOSP||EVIL^NAME", app="OTHERAPP"),  # HOSP only from ADT1
        adt("A08", "MSG-X3", "UPD-1^^^HOSP||NEW^NAME||19991340"),  # not a calendar date
        adt("A08", "MSG-X4", "UPD-1^^^HOSP||NEW^NAME||19990101|Q"),  # not a sex
        adt("A01", "MSG-X5", "UPD-1^^^HOSP||NEW^NAME"),  # an admission: not handled
        adt("A08", "MSG-X6", "NOBODY^^^HOSP||NEW^NAME"),  # not held here
        adt("A08", "MSG-X7", "||NEW^NAME", facility="LAB"),  # no PID-3
    )
    assert [a["code"] for a in acks] == ["AR", "AR", "AE", "AE", "AA", "AA", "AE"], acks
    assert "ELSEWHERE" in acks[0]["text"] and "allowed" in acks[0]["text"]
    assert "calendar" in acks[2]["text"] and "PID-8" in acks[3]["text"]
    assert acks[4]["text"] == "ignored: event ADT^A01 not handled"
    assert "not held" in acks[5]["text"] and "PID-3" in acks[6]["text"]
    (garbage,) = mllp_send(vault.hl7_port, tmp, raw=b"\x0bTHIS IS NOT HL7\x1c\r")
    assert garbage["code"] == "AE" and "malformed" in garbage["text"], garbage
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "BASE^NAME")]
    assert patient_row(vault, "UPD-1")[1] == "20150301"
    refused = [(a, s, json.loads(d)) for a, s, d in vault.refusals() if s == "hl7"]
    assert [(a, d["control_id"]) for a, _, d in refused] == [("hl7:ADT1@ELSEWHERE", "MSG-X1"),
                                                             ("hl7:OTHERAPP@HOSP", "MSG-X2")]
    # the same sender again within a minute: refused and logged, audited once (throttled)
    (again,) = mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-X8", "UPD-1^^^HOSP||EVIL^NAME", facility="ELSEWHERE"))
    assert again["code"] == "AR"
    assert len([r for r in vault.refusals() if r[1] == "hl7"]) == 2


def test_a_duplicate_control_id_is_applied_once(hospital: tuple[Vault, Patients, Path]) -> None:
    vault, patients, tmp = hospital
    first, second = mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-DUP", "UPD-1^^^HOSP||ONCE^ONLY"),
                              adt("A08", "MSG-DUP", "UPD-1^^^HOSP||TWICE^NOT"))
    assert (first["code"], second["code"]) == ("AA", "AA") and "duplicate" in second["text"], (first, second)
    assert ids_found(vault, tmp, "UPD-1") == [(patients.studies["UPD-1"], "ONCE^ONLY")]
    history = json.loads(vault.cli("patient", "history", "UPD-1", "--json").stdout)
    assert [h["control_id"] for h in history].count("MSG-DUP") == 1



def test_dicom_arriving_after_an_update_follows_the_last_word_rule(hospital: tuple[Vault, Patients, Path]) -> None:
    """The PACS re-sending its old copy changes nothing (known content); an image with other
    bytes received after the update is newer, and its demographics win, as any correction's."""
    vault, patients, tmp = hospital
    uid = patients.studies["UPD-1"]
    mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-LAST-1", "UPD-1^^^HOSP||FROM^ADT"))
    storescu(vault, patients.files["UPD-1"])  # the bytes first stored, with DOE^JANE
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "FROM^ADT")]
    stale = write_instance(_template(), tmp / "late" / "stale.dcm", uid, generate_uid(), generate_uid(), 2,
                           PatientID="UPD-1", PatientName="FROM^MODALITY")
    storescu(vault, stale)
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "FROM^MODALITY")]
    mllp_send(vault.hl7_port, tmp, adt("A08", "MSG-LAST-2", "UPD-1^^^HOSP||FROM^ADT"))
    assert ids_found(vault, tmp, "UPD-1") == [(uid, "FROM^ADT")]


@pytest.mark.parametrize("snippet, message", [
    ("port = 70000\nallowed_facilities = [\"X\"]", "[hl7] port must be 0-65535"),
    ("port = 2575\nallowed_facilities = [\"@X\"]", "allowed_facilities must be a list"),
    ("port = 2575\nallowed_facilities = \"X\"", "allowed_facilities must be a list"),
    ("port = 2575\nallowed_facilities = [\"X\"]\ntls_cert_file = \"a.pem\"", "both tls_cert_file and tls_key_file"),
    ("port = 2575\nallowed_facilities = [\"X\"]\nmax_message_bytes = 10", "max_message_bytes must be"),
    ("port = 2575\nallowed_facilities = [\"X\"]\nidle_timeout = 0", "idle_timeout must be"),
    ("port = 2575\nallowed_facilities = [\"X\"]\nbogus = 1", "unknown key(s) in [hl7]"),
])
def test_bad_hl7_settings_are_refused(tmp_path: Path, snippet: str, message: str) -> None:
    from dicomvault.config import ConfigError, load_settings

    config = tmp_path / "dicomvault.toml"
    config.write_text(f"[hl7]\n{snippet}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert message in str(refused.value)


def test_a_port_without_an_allow_list_refuses_to_serve(vault: Vault) -> None:
    vault.set_config("hl7", "port", str(free_port()))  # init's allowed_facilities = []
    served = vault.cli("serve", check=False, timeout=60)
    assert served.returncode != 0
    assert "allowed_facilities is empty" in served.stderr + served.stdout


# --- the listener's bounds and TLS (in-process listener on a scratch catalog) ------------------

def _exchange(sock, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    sock.sendall(data)
    answer = b""
    while not answer.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _listener(tmp: Path, **settings: object):  # type: ignore[no-untyped-def]
    from dicomvault.catalog import Catalog
    from dicomvault.config import Hl7Settings
    from dicomvault.ingest.hl7 import Hl7Listener

    catalog = Catalog(f"sqlite:///{tmp / 'catalog.sqlite3'}")
    listener = Hl7Listener(Hl7Settings(port=free_port(), bind="127.0.0.1", allowed_facilities=("HOSP",),
                                       **settings), catalog)  # type: ignore[arg-type]
    listener.start()
    return listener, catalog


def test_oversized_and_idle_connections_are_closed(tmp_path: Path) -> None:
    import socket
    import time

    listener, catalog = _listener(tmp_path, max_message_bytes=2048, idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", listener.settings.port), timeout=10) as sock:
            big = adt("A08", "BIG-1", "P1^^^HOSP||" + "X" * 4000)
            answer = _exchange(sock, b"\x0b" + big.encode() + b"\x1c\r")
            assert b"MSA|AR" in answer and b"larger than 2048 bytes" in answer, answer
            assert sock.recv(10) == b""  # then closed: the rest of that block cannot be told from the next
        with socket.create_connection(("127.0.0.1", listener.settings.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""  # nothing sent: closed after idle_timeout
            assert 0.4 < time.monotonic() - started < 5
    finally:
        listener.stop()
        catalog.close()


def test_mllp_over_tls_needs_a_client_certificate_from_the_ca(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    import socket
    import ssl

    listener, catalog = _listener(tmp_path, tls_cert_file=str(pki.vault.cert), tls_key_file=str(pki.vault.key),
                                  tls_ca_file=str(pki.ca.pem))
    message = b"\x0b" + adt("A08", "TLS-1", "P1^^^HOSP||NEW^NAME").encode() + b"\x1c\r"
    try:
        client = ssl.create_default_context(cafile=str(pki.ca.pem))
        client.load_cert_chain(str(pki.modality.cert), str(pki.modality.key))
        with client.wrap_socket(socket.create_connection(("127.0.0.1", listener.settings.port), timeout=10),
                                server_hostname="127.0.0.1") as sock:
            answer = _exchange(sock, message)
        assert b"MSA|AA|TLS-1" in answer and b"not held" in answer, answer
        anonymous = ssl.create_default_context(cafile=str(pki.ca.pem))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with anonymous.wrap_socket(socket.create_connection(("127.0.0.1", listener.settings.port), timeout=10),
                                       server_hostname="127.0.0.1") as sock:
                assert _exchange(sock, message) == b""  # TLS 1.3: the refusal shows at the first read
                raise ConnectionError("closed without an answer")
    finally:
        listener.stop()
        catalog.close()


def test_update_merge_and_change_of_id_on_postgresql(tmp_path: Path, postgres_server: PostgresServer) -> None:  # noqa: F811
    """The same catalog SQL on the scale-out catalog (the processor in-process, no listener)."""
    from dicomvault.archive.core import Archive
    from dicomvault.config import load_settings
    from dicomvault.ingest.adt import AdtProcessor, Envelope, parse
    from test_retention import CT_CLASS, instance

    vault = make_vault(tmp_path / "vault")
    use_catalog(vault, postgres_server.create_database())
    archive = Archive.open(load_settings(vault.config))
    try:
        studies = {pid: generate_uid() for pid in ("PG-A", "PG-B", "PG-C")}
        for pid, uid in studies.items():
            archive.ingestor.ingest(instance((pid, "PG^NAME"), "19700101", uid, "20200310", "MR", CT_CLASS),
                                    source="import:/tmp/pg.dcm", actor="test")
        processor = AdtProcessor(archive.catalog, ("HOSP",))

        def send(event: str, control_id: str, pid: str, mrg: str = "") -> str:
            message = parse(adt(event, control_id, pid, mrg).encode())
            return processor.apply(message, Envelope.of(message, "10.0.0.7")).code

        assert send("A08", "PG1", "PG-A^^^HOSP||PG^RENAMED||20100101") == "AA"
        assert send("A40", "PG2", "PG-A^^^HOSP", mrg="PG-B^^^HOSP") == "AA"
        assert send("A47", "PG3", "PG-D^^^HOSP", mrg="PG-C^^^HOSP") == "AA"
        assert send("A08", "PG1", "PG-A^^^HOSP||PG^AGAIN") == "AA"  # duplicate control id: not applied
        found = {s["study_uid"]: (s["patient_id"], s["patient_name"]) for s in archive.catalog.find_studies()}
        assert found == {studies["PG-A"]: ("PG-A", "PG^RENAMED"), studies["PG-B"]: ("PG-A", "PG^RENAMED"),
                         studies["PG-C"]: ("PG-D", "PG^NAME")}
        with archive.catalog.read() as conn:
            from dicomvault.catalog import patients

            assert [h["event"] for h in patients.history(conn, "PG-A")] == ["A08", "A40"]
            assert patients.history(conn, "PG-B")[0]["prior_patient_id"] == "PG-B"
    finally:
        archive.close()


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                    "1.2.840.10008.1.2.1.99"])
def test_coercion_keeps_the_transfer_syntax_and_changes_only_the_patient_module(syntax: str) -> None:
    """dicom/coerce.py on data sets as DIMSE sends them, in each uncompressed syntax and deflated."""
    import io
    import zlib

    from pydicom.filereader import read_dataset

    from dicomvault.dicom.coerce import coerce_dataset

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = _template()
    implicit, little = syntax == "1.2.840.10008.1.2", syntax != "1.2.840.10008.1.2.2"
    encoded = DicomBytesIO()
    encoded.is_implicit_VR, encoded.is_little_endian = implicit, little
    write_dataset(encoded, ds)
    data = encoded.getvalue()
    if syntax.endswith(".99"):
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    current = {"patient_id": str(ds.PatientID), "issuer": "", "patient_name": str(ds.PatientName),
               "birth_date": str(ds.PatientBirthDate), "sex": str(ds.PatientSex)}
    assert coerce_dataset(data, syntax, current) is None  # nothing differs: the stored bytes go out
    coerced = coerce_dataset(data, syntax, {**current, "patient_id": "NEW-7", "issuer": "HOSP"})
    assert coerced is not None
    raw = zlib.decompress(coerced, -zlib.MAX_WBITS) if syntax.endswith(".99") else coerced
    back = read_dataset(io.BytesIO(raw), implicit, little)
    assert (back.PatientID, back.IssuerOfPatientID) == ("NEW-7", "HOSP")
    assert back.PixelData == ds.PixelData and back.StudyInstanceUID == ds.StudyInstanceUID


def test_the_hospital_pacs_pulls_the_current_demographics_when_its_peer_coerces(
        tmp_path: Path, orthanc_factory) -> None:  # noqa: F811
    """Orthanc as the hospital's PACS: after an A08, it pulls (C-MOVE to itself) a study the
    vault stored under the old name, and gets the current demographics; the vault keeps the
    bytes it received."""
    vault = make_vault(tmp_path / "vault")
    port = free_port()
    vault.set_config("hl7", "port", str(port))
    vault.set_config("hl7", "bind", '"127.0.0.1"')
    vault.set_config("hl7", "allowed_facilities", '["ADT1@HOSP"]')
    pacs = orthanc_factory(aet="PACS")
    pacs.add_modality("vault", vault.ae_title, "127.0.0.1", vault.dicom_port)
    vault.add_peer("pacs", "PACS", pacs.dicom_port, permissions=["store", "find", "move"], coerce_demographics=True)
    study = generate_uid()
    sent = write_instance(_template(), tmp_path / "in" / "orth.dcm", study, generate_uid(), generate_uid(), 1,
                          PatientID="ORTH-1", PatientName="DOE^JOHN", PatientBirthDate="19800101", PatientSex="M")
    vault.start()
    try:
        storescu(vault, sent)
        vault.wait_settled()
        before = stored_sha256(vault, study)
        (ack,) = mllp_send(port, tmp_path, adt("A08", "MSG-ORTH-1", "ORTH-1^^^HOSP||DOE^JONATHAN||19800102|M"))
        assert ack["code"] == "AA", ack
        pacs.rest("POST", "/modalities/vault/move", {"Level": "Study", "Resources": [{"StudyInstanceUID": study}],
                                                     "TargetAet": "PACS"})
        (found,) = [r for r in pacs.lookup(study) if r["Type"] == "Study"]
        tags = pacs.rest("GET", f"/studies/{found['ID']}")["PatientMainDicomTags"]
        assert (tags["PatientName"], tags["PatientBirthDate"]) == ("DOE^JONATHAN", "19800102")
        assert stored_sha256(vault, study) == before, "the archive keeps what it received"
        vault.cli("get", study, "--out", str(tmp_path / "kept"))
        (kept,) = (tmp_path / "kept").rglob("*.dcm")
        assert str(pydicom.dcmread(kept).PatientName) == "DOE^JOHN"
    finally:
        vault.stop()
