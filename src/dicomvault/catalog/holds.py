"""Legal holds' SQL: the ``legal_holds`` rows and the one question every deletion path must
ask, ``deletable(conn, study_uid)``.

A hold covers one study (scope "study") or every study of a Patient ID (scope "patient", any
issuer, including studies that arrive later). Functions take the caller's connection so a
hold and its audit row commit together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, or_, select, update

from . import schema as t

_h = t.legal_holds
SCOPES = ("study", "patient")


def add_hold(conn: Connection, *, scope: str, target: str, reason: str, actor: str, now: float) -> int:
    """A new hold in force; returns its id."""
    if scope not in SCOPES:
        raise ValueError(f"a hold's scope is one of {', '.join(SCOPES)}, got {scope!r}")
    key = conn.execute(insert(_h).values(scope=scope, target=target, reason=reason, actor=actor,
                                         created_at=now)).inserted_primary_key
    assert key is not None
    return int(key[0])


def get_hold(conn: Connection, hold_id: int) -> Any:
    return conn.execute(select(_h).where(_h.c.id == hold_id)).first()


def release_hold(conn: Connection, hold_id: int, *, actor: str, reason: str, now: float) -> bool:
    """Release a hold in force; False when there is none with that id in force."""
    return bool(conn.execute(update(_h).where(_h.c.id == hold_id, _h.c.released_at.is_(None)).values(
        released_at=now, released_by=actor, release_reason=reason)).rowcount)


def list_holds(conn: Connection, active_only: bool = False) -> list[Any]:
    query = select(_h).order_by(_h.c.id)
    if active_only:
        query = query.where(_h.c.released_at.is_(None))
    return conn.execute(query).all()


def count_active(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(_h).where(_h.c.released_at.is_(None))).scalar() or 0)


def study_exists(conn: Connection, study_uid: str) -> bool:
    return conn.execute(select(t.studies.c.id).where(t.studies.c.study_uid == study_uid)).first() is not None


def patient_study_count(conn: Connection, patient_id: str) -> int:
    """How many studies the catalog holds for this Patient ID (any issuer)."""
    return int(conn.execute(select(func.count()).select_from(
        t.studies.join(t.patients, t.studies.c.patient_pk == t.patients.c.id)).where(
        t.patients.c.patient_id == patient_id)).scalar() or 0)


def held_clause(study_uid_column: Any, patient_pk_column: Any) -> Any:
    """SQL true when a hold in force covers the study in these columns (for other queries)."""
    by_study = select(_h.c.id).where(_h.c.released_at.is_(None), _h.c.scope == "study",
                                     _h.c.target == study_uid_column)
    held_patient = t.patients.alias("held_patient")  # an alias: the outer query may join patients too
    by_patient = (select(_h.c.id).select_from(_h.join(held_patient, held_patient.c.patient_id == _h.c.target))
                  .where(_h.c.released_at.is_(None), _h.c.scope == "patient", held_patient.c.id == patient_pk_column))
    return or_(exists(by_study), exists(by_patient))


def holds_on_study(conn: Connection, study_uid: str) -> list[Any]:
    """Holds in force that cover this study (on it, or on its patient), oldest first."""
    patient = (select(t.patients.c.patient_id)
               .select_from(t.studies.join(t.patients, t.studies.c.patient_pk == t.patients.c.id))
               .where(t.studies.c.study_uid == study_uid).scalar_subquery())
    return conn.execute(select(_h).where(_h.c.released_at.is_(None), or_(
        and_(_h.c.scope == "study", _h.c.target == study_uid),
        and_(_h.c.scope == "patient", _h.c.target == patient))).order_by(_h.c.id)).all()


def deletable(conn: Connection, study_uid: str) -> tuple[bool, str]:
    """May any deletion path (retention, rejection, a `delete` request) delete this study?
    (False, why) when a hold in force covers it, naming the hold and its reason, or when the
    catalog has no such study; (True, "not held") otherwise. The retention path must also
    check that the study is due (``retention.due_for_deletion``)."""
    if not study_exists(conn, study_uid):
        return False, f"no study {study_uid} in the catalog"
    holds = holds_on_study(conn, study_uid)
    if holds:
        return False, "; ".join(f"held by legal hold {h.id} ({h.scope} {h.target}): {h.reason}" for h in holds)
    return True, "not held"
