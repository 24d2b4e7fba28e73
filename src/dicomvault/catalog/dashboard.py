"""The dashboard's SQL (serve/dashboard/): one study's page, and the simple ingest and storage
figures the first screen shows until the capacity helpers' queries replace them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from . import schema as t


def study_summary(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    """The study's attributes, patient and its series and instance counts; None: not in the catalog."""
    row = conn.execute(
        select(t.studies.c.id, t.studies.c.study_date, t.studies.c.study_description, t.studies.c.accession_number,
               t.studies.c.created_at, t.patients.c.patient_id, t.patients.c.patient_name)
        .join(t.patients, t.patients.c.id == t.studies.c.patient_pk)
        .where(t.studies.c.study_uid == study_uid)).first()
    if row is None:
        return None
    counts = conn.execute(
        select(func.count(func.distinct(t.series.c.id)), func.count(t.instances.c.id))
        .select_from(t.series.outerjoin(t.instances, t.instances.c.series_pk == t.series.c.id))
        .where(t.series.c.study_pk == row.id)).one()
    modalities = conn.execute(select(t.series.c.modality).where(t.series.c.study_pk == row.id).distinct()).scalars()
    return {"study_uid": study_uid, "study_date": row.study_date, "description": row.study_description,
            "accession_number": row.accession_number, "received_at": row.created_at,
            "patient_id": row.patient_id, "patient_name": row.patient_name,
            "series": int(counts[0]), "instances": int(counts[1]), "modalities": ", ".join(sorted(m for m in modalities if m))}


def study_copies(conn: Connection, study_uid: str) -> list[dict[str, Any]]:
    """Per site and copy state: how many copies of the study's versions, their bytes, and the
    oldest and newest proof (``verified_at``: written, then re-read by the scrub)."""
    rows = conn.execute(
        select(t.copies.c.site, t.copies.c.state, func.count(), func.coalesce(func.sum(t.copies.c.size), 0),
               func.min(t.copies.c.verified_at), func.max(t.copies.c.verified_at), func.min(t.copies.c.owed_since))
        .select_from(t.studies.join(t.series, t.series.c.study_pk == t.studies.c.id)
                     .join(t.instances, t.instances.c.series_pk == t.series.c.id)
                     .join(t.versions, t.versions.c.instance_pk == t.instances.c.id)
                     .join(t.copies, t.copies.c.object_id == t.versions.c.object_id))
        .where(t.studies.c.study_uid == study_uid)
        .group_by(t.copies.c.site, t.copies.c.state).order_by(t.copies.c.site, t.copies.c.state)).all()
    return [{"site": r[0], "state": r[1], "copies": int(r[2]), "bytes": int(r[3]), "oldest_proof": r[4],
             "newest_proof": r[5], "owed_since": r[6]} for r in rows]


def study_holds(conn: Connection, study_uid: str, patient_id: str) -> list[Any]:
    """Legal holds in force on the study, by its UID or its patient's ID: (scope, reason, actor, created_at)."""
    h = t.legal_holds
    return conn.execute(select(h.c.scope, h.c.reason, h.c.actor, h.c.created_at).where(
        h.c.released_at.is_(None),
        or_(and_(h.c.scope == "study", h.c.target == study_uid),
            and_(h.c.scope == "patient", h.c.target == patient_id)))).all()


def study_keep_until(conn: Connection, study_uid: str) -> Any:
    """(keep_until, rule) of the study's retention row, or None when none was computed."""
    r = t.study_retention
    return conn.execute(select(r.c.keep_until, r.c.rule).where(r.c.study_uid == study_uid)).first()


def study_audit(conn: Connection, study_uid: str, limit: int = 200) -> list[Any]:
    """The newest audit rows whose subject or detail names the study (a scan of the log's text)."""
    a = t.audit_log
    pattern = f"%{study_uid}%"
    return conn.execute(select(a.c.id, a.c.ts, a.c.actor, a.c.action, a.c.subject, a.c.outcome, a.c.detail)
                        .where(or_(a.c.subject == study_uid, a.c.subject.like(pattern), a.c.detail.like(pattern)))
                        .order_by(a.c.id.desc()).limit(limit)).all()


