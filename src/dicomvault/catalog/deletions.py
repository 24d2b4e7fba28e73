"""Deletion's SQL: what a deletion takes (``plan_study``, ``plan_instances``), removing those
rows in the caller's transaction (``remove``), the deletion record (``deletions``) and each
site's outcome (``deletion_sites``, also the task list of sites still to be done).

Deletion records are never deleted: nothing here removes a ``deletions`` or
``deletion_sites`` row. ``mark`` (the newest record's id) lets every process notice a deletion
made by another one and forget the primary keys and study keys it cached.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, exists, func, insert, select, text, update

from . import capacity
from . import schema as t
from .chunks import in_chunks

_d, _s = t.deletions, t.deletion_sites
FINAL_STATES = ("deleted", "locked", "error", "not ours")


@dataclass
class Plan:
    """What one deletion takes, all under one study."""

    study_uid: str
    study_pk: int | None
    patient_pk: int | None
    patient_id: str
    instances: list[tuple[int, str, int]] = field(default_factory=list)  # (pk, SOP Instance UID, series pk)
    versions: list[tuple[int, str, int]] = field(default_factory=list)  # (pk, object id, stored bytes)
    whole_study: bool = True  # False: some instances of the study stay

    @property
    def sop_uids(self) -> list[str]:
        return [uid for _pk, uid, _series in self.instances]

    @property
    def objects(self) -> list[tuple[str, int]]:
        return [(object_id, size) for _pk, object_id, size in self.versions]

    @property
    def bytes(self) -> int:
        return sum(size for _pk, _object, size in self.versions)


def _study_head(conn: Connection, study_uid: str) -> Any:
    st, p = t.studies, t.patients
    return conn.execute(select(st.c.id, st.c.patient_pk, p.c.patient_id)
                        .select_from(st.join(p, st.c.patient_pk == p.c.id))
                        .where(st.c.study_uid == study_uid)).first()


def _fill_versions(conn: Connection, plan: Plan) -> Plan:
    v = t.versions
    pks = [pk for pk, _uid, _series in plan.instances]
    for chunk in in_chunks(pks):
        plan.versions += [(int(r.id), r.object_id, int(r.size_stored)) for r in conn.execute(
            select(v.c.id, v.c.object_id, v.c.size_stored).where(v.c.instance_pk.in_(chunk)).order_by(v.c.id))]
    return plan


def plan_study(conn: Connection, study_uid: str) -> Plan | None:
    """Every instance and version of the study; None when the catalog has no such study."""
    head = _study_head(conn, study_uid)
    if head is None:
        return None
    i, se = t.instances, t.series
    rows = conn.execute(select(i.c.id, i.c.sop_instance_uid, i.c.series_pk)
                        .select_from(i.join(se, i.c.series_pk == se.c.id))
                        .where(se.c.study_pk == head.id).order_by(i.c.id)).all()
    plan = Plan(study_uid, int(head.id), int(head.patient_pk), head.patient_id,
                [(int(r.id), r.sop_instance_uid, int(r.series_pk)) for r in rows])
    return _fill_versions(conn, plan)


def plan_instances(conn: Connection, sop_uids: Sequence[str]) -> list[Plan]:
    """The stored instances among ``sop_uids``, one plan per study (instances not stored are left out)."""
    i, se, st, p = t.instances, t.series, t.studies, t.patients
    by_study: dict[str, Plan] = {}
    for chunk in in_chunks(list(dict.fromkeys(sop_uids))):
        for r in conn.execute(select(i.c.id, i.c.sop_instance_uid, i.c.series_pk, st.c.id.label("study_pk"),
                                     st.c.study_uid, st.c.patient_pk, p.c.patient_id)
                              .select_from(i.join(se, i.c.series_pk == se.c.id).join(st, se.c.study_pk == st.c.id)
                                           .join(p, st.c.patient_pk == p.c.id))
                              .where(i.c.sop_instance_uid.in_(chunk))):
            plan = by_study.setdefault(r.study_uid, Plan(r.study_uid, int(r.study_pk), int(r.patient_pk),
                                                         r.patient_id, whole_study=False))
            plan.instances.append((int(r.id), r.sop_instance_uid, int(r.series_pk)))
    for plan in by_study.values():
        _fill_versions(conn, plan)
        left = conn.execute(select(func.count()).select_from(i.join(se, i.c.series_pk == se.c.id))
                            .where(se.c.study_pk == plan.study_pk)).scalar_one()
        plan.whole_study = int(left) == len(plan.instances)
    return list(by_study.values())


def copies_by_site(conn: Connection, object_ids: Sequence[str]) -> dict[str, int]:
    """How many of these objects each site has a copy row for (any state)."""
    found: dict[str, int] = defaultdict(int)
    for chunk in in_chunks(list(object_ids)):
        for row in conn.execute(select(t.copies.c.site, func.count()).where(t.copies.c.object_id.in_(chunk))
                                .group_by(t.copies.c.site)):
            found[row[0]] += int(row[1])
    return dict(found)


def remove(conn: Connection, plan: Plan, *, deletion_id: int, now: float) -> dict[str, int]:
    """Remove the plan's rows (in the caller's transaction): copies and owed copies (the
    outbox), versions, instances, their rejections, series, study, keep-until and patient
    rows left empty; restore items still to send become failed. Counts of what went."""
    i, se, st, p, v = t.instances, t.series, t.studies, t.patients, t.versions
    object_ids = [object_id for _pk, object_id, _size in plan.versions]
    for chunk in in_chunks(object_ids):
        conn.execute(delete(t.copies).where(t.copies.c.object_id.in_(chunk)))
    capacity.forget_versions(conn, [pk for pk, _object, _size in plan.versions])  # the capacity rollup
    for chunk in in_chunks([pk for pk, _object, _size in plan.versions]):
        conn.execute(delete(v).where(v.c.id.in_(chunk)))
    for chunk in in_chunks([pk for pk, _uid, _series in plan.instances]):
        conn.execute(delete(i).where(i.c.id.in_(chunk)))
    for chunk in in_chunks(plan.sop_uids):
        conn.execute(delete(t.rejections).where(t.rejections.c.sop_instance_uid.in_(chunk)))
        conn.execute(update(t.restore_items).where(t.restore_items.c.sop_instance_uid.in_(chunk),
                                                   t.restore_items.c.state == "pending")
                     .values(state="failed", detail=f"deleted (deletion {deletion_id})", finished_at=now))
    gone = {"series": 0, "studies": 0, "patients": 0}
    if plan.study_pk is None:
        return gone
    occupied = exists(select(i.c.id).where(i.c.series_pk == se.c.id))
    candidates = (se.c.study_pk == plan.study_pk) if plan.whole_study else se.c.id.in_(
        list({series for _pk, _uid, series in plan.instances}))
    gone["series"] = conn.execute(delete(se).where(candidates, ~occupied)).rowcount or 0
    if conn.execute(select(se.c.id).where(se.c.study_pk == plan.study_pk).limit(1)).first() is None:
        gone["studies"] = conn.execute(delete(st).where(st.c.id == plan.study_pk)).rowcount or 0
        conn.execute(delete(t.study_retention).where(t.study_retention.c.study_uid == plan.study_uid))
        if conn.execute(select(st.c.id).where(st.c.patient_pk == plan.patient_pk).limit(1)).first() is None and \
                conn.execute(select(t.patient_history.c.id).where(t.patient_history.c.patient_pk == plan.patient_pk)
                             .limit(1)).first() is None and \
                conn.execute(select(p.c.id).where(p.c.merged_into == plan.patient_pk).limit(1)).first() is None:
            # a patient with ADT history (or merged into it) stays: that history is evidence too
            gone["patients"] = conn.execute(delete(p).where(p.c.id == plan.patient_pk)).rowcount or 0
    return gone


def delete_study_key(conn: Connection, study_uid: str, deletion_id: int) -> tuple[str, bool] | None:
    """Remove the study's ``study_keys`` row unless a version still uses it (an instance a
    correction moved to another study keeps its key), and name it in the deletion record:
    (key id, embedded) when removed, else None."""
    row = conn.execute(select(t.study_keys.c.key_id, t.study_keys.c.embedded)
                       .where(t.study_keys.c.study_uid == study_uid)).first()
    if row is None:
        return None
    if conn.execute(select(t.versions.c.id).where(t.versions.c.key_id == row.key_id).limit(1)).first() is not None:
        return None
    conn.execute(delete(t.study_keys).where(t.study_keys.c.key_id == row.key_id))
    conn.execute(update(_d).where(_d.c.id == deletion_id).values(key_id=row.key_id, key_embedded=bool(row.embedded)))
    return row.key_id, bool(row.embedded)


# --- the record -----------------------------------------------------------------------------

def add_record(conn: Connection, plan: Plan, *, why: str, rule: str, reason: str, actor: str, now: float,
               sites: Iterable[tuple[str, str]]) -> int:
    """The deletion record, with one outcome row per site: (name, "pending" | "not ours")."""
    key = conn.execute(insert(_d).values(
        created_at=now, actor=actor[:256], why=why, rule=rule[:64], reason=reason, study_uid=plan.study_uid,
        patient_id=plan.patient_id, instances=len(plan.instances), versions=len(plan.versions), bytes=plan.bytes,
        sop_uids=json.dumps(plan.sop_uids), objects=json.dumps(plan.objects))).inserted_primary_key
    assert key is not None
    deletion_id = int(key[0])
    for name, state in sites:
        conn.execute(insert(_s).values(deletion_id=deletion_id, site=name, state=state,
                                       objects=len(plan.versions) if state == "pending" else 0,
                                       created_at=now, updated_at=now))
    if not any(state == "pending" for _name, state in sites):
        conn.execute(update(_d).where(_d.c.id == deletion_id).values(completed_at=now))
    return deletion_id


def get_record(conn: Connection, deletion_id: int) -> Any:
    return conn.execute(select(_d).where(_d.c.id == deletion_id)).first()


def list_records(conn: Connection, since: float | None = None) -> list[Any]:
    query = select(_d).order_by(_d.c.id)
    if since is not None:
        query = query.where(_d.c.created_at >= since)
    return conn.execute(query).all()


def site_rows(conn: Connection, deletion_ids: Sequence[int]) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = defaultdict(list)
    for chunk in in_chunks(list(deletion_ids)):
        for row in conn.execute(select(_s).where(_s.c.deletion_id.in_(chunk)).order_by(_s.c.id)):
            found[int(row.deletion_id)].append(row)
    return found


def pending_tasks(conn: Connection, due_before: float | None = None) -> list[Any]:
    """Site tasks still pending (all, or those due by ``due_before``), oldest first."""
    query = select(_s).where(_s.c.state == "pending").order_by(_s.c.id)
    if due_before is not None:
        query = query.where(_s.c.next_attempt_at <= due_before)
    return conn.execute(query).all()


def record_site(conn: Connection, deletion_id: int, site: str, *, state: str, deleted: int, locked: int,
                missing: int, error: str | None, now: float, next_attempt_at: float = 0.0) -> None:
    """A site's outcome after an attempt; the record is complete once no site is pending."""
    conn.execute(update(_s).where(_s.c.deletion_id == deletion_id, _s.c.site == site).values(
        state=state, deleted=deleted, locked=locked, missing=missing, last_error=error, updated_at=now,
        attempts=_s.c.attempts + 1, next_attempt_at=next_attempt_at))
    still = conn.execute(select(_s.c.id).where(_s.c.deletion_id == deletion_id, _s.c.state == "pending")
                         .limit(1)).first()
    conn.execute(update(_d).where(_d.c.id == deletion_id).values(completed_at=None if still else now))


def deleted_objects(conn: Connection) -> dict[str, float]:
    """Object id -> when its (latest) deletion was recorded, over every deletion record: what
    `rebuild-index` must not adopt again from a site that kept a copy. Object names include
    the study key id, and a study received again after its deletion gets a new key, so a
    name in a record is never one of the new copies."""
    found: dict[str, float] = {}
    for row in conn.execute(select(_d.c.objects, _d.c.created_at).order_by(_d.c.id)):
        for object_id, _size in json.loads(row.objects):
            found[str(object_id)] = float(row.created_at)
    return found


_MARK = text("SELECT max(id) FROM deletions")  # built once: asked per ingest and per write transaction


def mark(conn: Connection) -> int:
    """The newest deletion record's id (0: none): changes whenever any process deletes."""
    return int(conn.execute(_MARK).scalar() or 0)


def counts(conn: Connection, since: float, stale_before: float) -> dict[str, int]:
    """For ``status``: deletions since ``since``, their instances and bytes; site tasks pending,
    and of them those pending since before ``stale_before``."""
    row = conn.execute(select(func.count(), func.coalesce(func.sum(_d.c.instances), 0),
                              func.coalesce(func.sum(_d.c.bytes), 0)).where(_d.c.created_at >= since)).one()
    pending = conn.execute(select(func.count()).select_from(_s).where(_s.c.state == "pending")).scalar_one()
    stale = conn.execute(select(func.count()).select_from(_s).where(
        _s.c.state == "pending", _s.c.created_at < stale_before)).scalar_one()
    locked = conn.execute(select(func.count()).select_from(_s).join(_d, _d.c.id == _s.c.deletion_id).where(
        _s.c.state == "locked", _d.c.created_at >= since)).scalar_one()
    return {"deletions": int(row[0]), "instances": int(row[1]), "bytes": int(row[2]), "pending_sites": int(pending),
            "pending_over_24h": int(stale), "locked_sites": int(locked)}
