"""HL7 v2 ADT patient updates and merges (issue 19 §2), tried with real parts: a running
`dicomvault serve` with `[hl7] port`, studies sent with DCMTK storescu, ADT messages sent by
python-hl7's `mllp_send` (a separate process speaking MLLP), answers read with DCMTK findscu,
QIDO-RS and `find`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import Vault, audit_rows, dcmtk, free_port, make_vault, wait_until
from test_corrections import _template, findscu, qido, storescu, write_instance

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
        msa = next(s for s in block.decode().split("\r") if s.startswith("MSA"))
        fields = msa.split("|") + ["", "", ""]
        acks.append({"code": fields[1], "control_id": fields[2], "text": fields[3]})
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
        config.write(RULES + f'\n[hl7]\nport = {vault.hl7_port}\nbind = "127.0.0.1"\n'  # type: ignore[attr-defined]
                     'allowed_facilities = ["ADT1@HOSP", "LAB"]\n')
    vault.add_peer("findscu", "FINDSCU", 104, permissions=["find"])
    vault.start()
    patients = Patients(tmp)
    storescu(vault, *patients.files.values())
    try:
        yield vault, patients, tmp
    finally:
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
