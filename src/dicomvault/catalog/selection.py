"""Which stored instances a restore or an export takes: the latest version of every instance
matching the operator's filters (study dates, patients, modalities, studies).

A ``Selection`` has a canonical JSON form, so a restore job can recognise "the same request
again" and resume instead of starting over. Rows come with everything a sender or a writer
needs (SOP class, stored transfer syntax, object id, SHA-256, size) and with the study's
date, time and arrival time, from which ``jobs/restore/job.py`` derives the urgency order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, or_, select

from . import rejections
from . import schema as t
from .chunks import in_chunks

if TYPE_CHECKING:
    from .db import Catalog

_DATE = re.compile(r"\d{8}")


class SelectionError(ValueError):
    """A filter cannot be understood; the message names it and the expected form."""


@dataclass(frozen=True)
class Selection:
    """Filters, all optional and combined with AND; values within one filter are ORed.

    ``since``/``until`` bound the Study Date (YYYYMMDD, inclusive). ``patients`` are Patient
    IDs, ``studies`` Study Instance UIDs, ``modalities`` series modalities (a CT filter takes
    the CT series of a study, not its SR or its PR).
    """

    since: str = ""
    until: str = ""
    patients: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()

    @classmethod
    def build(cls, since: str | None = None, until: str | None = None, patients: Iterable[str] = (),
              modalities: Iterable[str] = (), studies: Iterable[str] = ()) -> "Selection":
        """Normalised (sorted, de-duplicated, stripped) and validated."""
        def clean(values: Iterable[str], upper: bool = False) -> tuple[str, ...]:
            items = {v.strip().upper() if upper else v.strip() for v in values if v and v.strip()}
            return tuple(sorted(items))

        selection = cls((since or "").strip(), (until or "").strip(), clean(patients), clean(modalities, True),
                        clean(studies))
        for label, value in (("--since", selection.since), ("--until", selection.until)):
            if value and not _DATE.fullmatch(value):
                raise SelectionError(f"{label} must be a study date as YYYYMMDD, got {value!r}")
        if selection.since and selection.until and selection.since > selection.until:
            raise SelectionError(f"--since {selection.since} is after --until {selection.until}: nothing can match")
        for uid in selection.studies:
            if len(uid) > 64 or not re.fullmatch(r"[0-9.]+", uid):
                raise SelectionError(f"--study {uid!r} is not a DICOM UID (digits and dots, at most 64)")
        return selection

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        raw = json.loads(text)
        return cls(raw.get("since", ""), raw.get("until", ""), tuple(raw.get("patients", ())),
                   tuple(raw.get("modalities", ())), tuple(raw.get("studies", ())))

    def describe(self) -> str:
        """One line for reports and logs."""
        parts = []
        if self.since or self.until:
            parts.append(f"study date {self.since or '…'}-{self.until or '…'}")
        for label, values in (("patient", self.patients), ("modality", self.modalities), ("study", self.studies)):
            if values:
                parts.append(f"{label} {','.join(values)}")
        return "; ".join(parts) or "everything"


@dataclass(frozen=True)
class SelectedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    object_id: str
    sha256: str
    transfer_syntax_uid: str
    size_original: int
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    study_description: str
    modality: str
    series_number: str
    instance_number: str
    received_at: float
    study_pk: int = 0


@dataclass(frozen=True)
class SelectedStudy:
    """One study of a selection, summed over its selected instances: what a planner orders
    before it reads any instance (a vault of millions of instances has only thousands of
    studies, so ordering them costs no memory to speak of)."""

    pk: int
    study_uid: str
    patient_id: str
    study_date: str
    study_time: str
    received_at: float  # the latest arrival among its selected instances
    instances: int
    size_original: int


def latest_versions_select(*columns: object, rejected: bool = False) -> object:
    """SELECT ``columns`` over version ⋈ instance ⋈ series ⋈ study ⋈ patient, latest version
    of each instance only (no newer version of the same instance exists), instances an IOCM
    rejection note rejected left out (``rejected=True``: only those)."""
    newer = t.versions.alias("newer")  # Core alias: importing sqlalchemy.orm costs every command 75 ms
    return (
        select(*columns)
        .select_from(
            t.versions.join(t.instances, t.versions.c.instance_pk == t.instances.c.id)
            .join(t.series, t.instances.c.series_pk == t.series.c.id)
            .join(t.studies, t.series.c.study_pk == t.studies.c.id)
            .join(t.patients, t.studies.c.patient_pk == t.patients.c.id)
            .outerjoin(newer, and_(newer.c.instance_pk == t.versions.c.instance_pk,
                                   newer.c.version > t.versions.c.version))
        )
        .where(newer.c.id.is_(None), ~rejections.visible() if rejected else rejections.visible())
    )


def _in_any(column: object, values: tuple[object, ...]) -> object:
    """``column IN (...)`` split so no statement binds more than a few hundred parameters."""
    return or_(*(column.in_(chunk) for chunk in in_chunks(values)))  # type: ignore[attr-defined]


def _filtered(query: object, selection: "Selection") -> object:
    """``query`` narrowed to the selection's filters (the same for studies and instances)."""
    if selection.since or selection.until:  # a study without a valid date matches no date range
        query = query.where(func.length(t.studies.c.study_date) == 8)  # type: ignore[attr-defined]
    if selection.since:
        query = query.where(t.studies.c.study_date >= selection.since)  # type: ignore[attr-defined]
    if selection.until:
        query = query.where(t.studies.c.study_date <= selection.until)  # type: ignore[attr-defined]
    if selection.patients:
        query = query.where(_in_any(t.patients.c.patient_id, selection.patients))  # type: ignore[attr-defined]
    if selection.modalities:
        query = query.where(_in_any(t.series.c.modality, selection.modalities))  # type: ignore[attr-defined]
    if selection.studies:
        query = query.where(_in_any(t.studies.c.study_uid, selection.studies))  # type: ignore[attr-defined]
    return query


def select_studies(catalog: "Catalog", selection: Selection) -> list[SelectedStudy]:
    """Every study with at least one matching instance (latest versions), with its counts,
    in patient, study date, study order."""
    query = _filtered(latest_versions_select(
        t.studies.c.id, t.studies.c.study_uid, t.patients.c.patient_id, t.studies.c.study_date, t.studies.c.study_time,
        func.max(t.versions.c.received_at).label("received_at"), func.count().label("instances"),
        func.sum(t.versions.c.size_original).label("size_original"),
    ), selection).group_by(  # type: ignore[attr-defined]
        t.studies.c.id, t.studies.c.study_uid, t.patients.c.patient_id, t.studies.c.study_date, t.studies.c.study_time)
    with catalog.read() as conn:
        studies = [SelectedStudy(int(r.id), r.study_uid, r.patient_id or "", r.study_date or "", r.study_time or "",
                                 float(r.received_at), int(r.instances), int(r.size_original or 0))
                   for r in conn.execute(query)]  # type: ignore[arg-type]
    return sorted(studies, key=lambda s: (s.patient_id, s.study_date, s.study_uid))


def select_instances(catalog: "Catalog", selection: Selection,
                     study_pks: Iterable[int] | None = None) -> list[SelectedInstance]:
    """Every matching instance (latest version), in study order: patient, study date, study,
    series number, instance number. ``study_pks`` narrows it to those studies (a planner
    reads a large selection a batch of studies at a time)."""
    query = _filtered(latest_versions_select(
        t.instances.c.sop_instance_uid, t.instances.c.sop_class_uid, t.studies.c.study_uid, t.series.c.series_uid,
        t.versions.c.object_id, t.versions.c.sha256, t.versions.c.transfer_syntax_uid, t.versions.c.size_original,
        t.patients.c.patient_id, t.patients.c.patient_name, t.studies.c.study_date, t.studies.c.study_time,
        t.studies.c.study_description, t.series.c.modality, t.series.c.series_number,
        t.instances.c.instance_number, t.versions.c.received_at, t.studies.c.id.label("study_pk"),
    ), selection)
    if study_pks is not None:
        query = query.where(_in_any(t.studies.c.id, tuple(study_pks)))  # type: ignore[attr-defined]
    with catalog.read() as conn:
        rows = [SelectedInstance(
            r.sop_instance_uid, r.sop_class_uid, r.study_uid, r.series_uid, r.object_id, r.sha256,
            r.transfer_syntax_uid, int(r.size_original), r.patient_id or "", r.patient_name or "",
            r.study_date or "", r.study_time or "", r.study_description or "", r.modality or "",
            r.series_number or "", r.instance_number or "", float(r.received_at), int(r.study_pk),
        ) for r in conn.execute(query)]  # type: ignore[arg-type]
    return sorted(rows, key=lambda r: (r.patient_id, r.study_date, r.study_uid, number_key(r.series_number),
                                       r.series_uid, number_key(r.instance_number), r.sop_instance_uid))


def rejected_in(catalog: "Catalog", selection: Selection) -> list[tuple[str, str, str]]:
    """(study UID, SOP Instance UID, why) of each instance the selection matches that a restore
    or export skips, for its report: "rejected", or "rejection note" (hidden evidence)."""
    kind = select(t.rejections.c.kind).where(
        t.rejections.c.sop_instance_uid == t.instances.c.sop_instance_uid).scalar_subquery().label("kind")
    query = _filtered(latest_versions_select(
        t.studies.c.study_uid, t.instances.c.sop_instance_uid, kind, rejected=True), selection)
    with catalog.read() as conn:
        return sorted((r.study_uid, r.sop_instance_uid, "rejection note" if r.kind == "note" else "rejected")
                      for r in conn.execute(query))  # type: ignore[arg-type]


def number_key(text: str) -> tuple[int, float]:
    """Sort IS values numerically, missing or malformed ones last."""
    try:
        return 0, float(text)
    except ValueError:
        return 1, 0.0
