"""Patient records changed by HL7 ADT (ingest/adt.py): updates, merges, changes of identifier,
and their history (migration 0013). Every function runs in the caller's write transaction.

The rule shared with DICOM corrections (catalog/db.py ``_FOLLOW``): the last word received
wins. An applied ADT change stamps the patient row (and its studies' copy of PatientName) with
its receipt time in ``attributes_at``, so a DICOM version received *later* with other
demographics replaces them again, and one received earlier (indexed late by recovery or
rebuild) never does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, insert, or_, select, update

from . import schema as t

_p, _s, _h = t.patients, t.studies, t.patient_history
DEMOGRAPHICS = ("patient_name", "birth_date", "sex")


@dataclass(frozen=True)
class Patient:
    pk: int
    patient_id: str
    issuer: str
    patient_name: str
    birth_date: str
    sex: str
    merged_into: int | None

    def values(self) -> dict[str, str]:
        return {"patient_id": self.patient_id, "issuer": self.issuer, "patient_name": self.patient_name,
                "birth_date": self.birth_date, "sex": self.sex}


def _patient(row: Any) -> Patient:
    return Patient(row.id, row.patient_id, row.issuer, row.patient_name, row.birth_date, row.sex, row.merged_into)


def find(conn: Connection, patient_id: str, issuer: str) -> Patient | None:
    """The patient with this ID and issuer. An HL7 identifier with an assigning authority also
    finds a patient stored without IssuerOfPatientID (most modalities send none), but only when
    no patient has that ID under the same authority."""
    row = conn.execute(select(_p).where(_p.c.patient_id == patient_id, _p.c.issuer == issuer)).first()
    if row is None and issuer:
        row = conn.execute(select(_p).where(_p.c.patient_id == patient_id, _p.c.issuer == "")).first()
    return _patient(row) if row is not None else None


def by_pk(conn: Connection, pk: int) -> Patient:
    return _patient(conn.execute(select(_p).where(_p.c.id == pk)).one())


def already_applied(conn: Connection, sender: str, control_id: str) -> bool:
    """Whether a message with this control id (MSH-10) from this sender was applied before."""
    return conn.execute(select(_h.c.id).where(_h.c.sender == sender, _h.c.control_id == control_id)
                        .limit(1)).first() is not None


def _stamp_studies(conn: Connection, patient_pk: int, name: str, at: float) -> int:
    """The patient's studies carry its name for study-level matching; a change is newer than what
    they hold, so it stamps them too (never back in time)."""
    return int(conn.execute(
        update(_s).where(_s.c.patient_pk == patient_pk)
        .values(patient_name=name, attributes_at=case((_s.c.attributes_at < at, at), else_=_s.c.attributes_at))
    ).rowcount or 0)


def set_demographics(conn: Connection, patient: Patient, values: dict[str, str], at: float) -> None:
    """Name, birth date and sex of ``patient`` become ``values`` (those given)."""
    conn.execute(update(_p).where(_p.c.id == patient.pk).values(**values, attributes_at=at))
    _stamp_studies(conn, patient.pk, values.get("patient_name", patient.patient_name), at)


def change_identifier(conn: Connection, patient: Patient, patient_id: str, issuer: str, at: float) -> None:
    conn.execute(update(_p).where(_p.c.id == patient.pk).values(patient_id=patient_id, issuer=issuer,
                                                                attributes_at=at))


def merge(conn: Connection, prior: Patient, survivor: Patient, at: float) -> list[str]:
    """Move every study of ``prior`` under ``survivor``; ``prior`` (and whatever had been merged
    into it) now stands for the survivor. Returns the moved studies' UIDs."""
    moved = list(conn.execute(select(_s.c.study_uid).where(_s.c.patient_pk == prior.pk)).scalars())
    conn.execute(update(_s).where(_s.c.patient_pk == prior.pk).values(patient_pk=survivor.pk))
    _stamp_studies(conn, survivor.pk, survivor.patient_name, at)
    conn.execute(update(_p).where(or_(_p.c.id == prior.pk, _p.c.merged_into == prior.pk))
                 .values(merged_into=survivor.pk))
    return moved


def record(conn: Connection, patient: Patient, event: str, sender: str, control_id: str, address: str,
           at: float, old: dict[str, Any], new: dict[str, Any], prior: tuple[str, str] = ("", "")) -> None:
    conn.execute(insert(_h).values(
        patient_pk=patient.pk, patient_id=new.get("patient_id", patient.patient_id),
        issuer=new.get("issuer", patient.issuer), prior_patient_id=prior[0], prior_issuer=prior[1],
        event=event, sender=sender, control_id=control_id, address=address, received_at=at,
        old_values=json.dumps(old, sort_keys=True), new_values=json.dumps(new, sort_keys=True)))


def history(conn: Connection, patient_id: str, issuer: str | None = None) -> list[dict[str, Any]]:
    """Every change that named ``patient_id``, as the subject or as the prior ID, oldest first."""
    ours = or_(_h.c.patient_id == patient_id, _h.c.prior_patient_id == patient_id)
    if issuer is not None:
        ours = or_((_h.c.patient_id == patient_id) & (_h.c.issuer == issuer),
                   (_h.c.prior_patient_id == patient_id) & (_h.c.prior_issuer == issuer))
    rows = conn.execute(select(_h).where(ours).order_by(_h.c.received_at, _h.c.id))
    return [{"patient_id": r.patient_id, "issuer": r.issuer, "prior_patient_id": r.prior_patient_id,
             "prior_issuer": r.prior_issuer, "event": r.event, "sender": r.sender, "control_id": r.control_id,
             "address": r.address, "received_at": r.received_at, "old": json.loads(r.old_values),
             "new": json.loads(r.new_values)} for r in rows]


def demographics_for_instance(conn: Connection, sop_instance_uid: str) -> dict[str, str] | None:
    """The current patient module of the study holding this instance (None: not held)."""
    r = conn.execute(
        select(_p.c.patient_id, _p.c.issuer, _p.c.patient_name, _p.c.birth_date, _p.c.sex)
        .select_from(t.instances.join(t.series, t.instances.c.series_pk == t.series.c.id)
                     .join(_s, t.series.c.study_pk == _s.c.id).join(_p, _s.c.patient_pk == _p.c.id))
        .where(t.instances.c.sop_instance_uid == sop_instance_uid)).first()
    return None if r is None else {"patient_id": r.patient_id, "issuer": r.issuer, "patient_name": r.patient_name,
                                   "birth_date": r.birth_date, "sex": r.sex}
