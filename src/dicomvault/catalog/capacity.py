"""Capacity figures from the catalog: the daily rollup (``capacity_daily``) and the few
questions capacity planning and the RTO estimate ask (jobs/capacity.py decides what they mean).

The rollup holds, per UTC day of receipt and modality (the series' Modality when the version
was indexed), the versions indexed, the instances they began and their bytes. ``count_version``
keeps it in the ingest transaction (``Catalog.add_version``), ``forget_versions`` in the
deletion's, ``rebuild_rollup`` recomputes it from the versions (migration 0017, a snapshot
loaded by rebuild-index). Reading it costs a few hundred rows whatever the archive's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, distinct, func, insert, not_, select, update

from . import schema as t
from .chunks import in_chunks
from .holds import held_clause

DAY = 86400
_d = t.capacity_daily
_BUMP = (update(_d).where(_d.c.day == bindparam("d"), _d.c.modality == bindparam("m"))
         .values(instances=_d.c.instances + bindparam("n"), versions=_d.c.versions + bindparam("k"),
                 bytes_original=_d.c.bytes_original + bindparam("o"), bytes_stored=_d.c.bytes_stored + bindparam("s")))
_FIRST = insert(_d)


def day_of(received_at: float) -> int:
    """The UTC day number (days since 1970-01-01) of a receipt time."""
    return int(received_at // DAY)


def count_version(conn: Connection, received_at: float, modality: str, new_instance: bool,
                  size_original: int, size_stored: int) -> None:
    """One more version (and instance, when it began one) in its day's row, in the caller's transaction."""
    params = {"d": day_of(received_at), "m": (modality or "")[:16], "n": 1 if new_instance else 0, "k": 1,
              "o": int(size_original), "s": int(size_stored)}
    if not conn.execute(_BUMP, params).rowcount:  # writers are serialised (Catalog.write): no race
        conn.execute(_FIRST, {"day": params["d"], "modality": params["m"], "instances": params["n"], "versions": 1,
                              "bytes_original": params["o"], "bytes_stored": params["s"]})


def _groups(conn: Connection, where: Any) -> list[Any]:
    """(day, modality, instances, versions, original, stored) of the versions ``where`` selects."""
    v, i, se = t.versions, t.instances, t.series
    rows = conn.execute(select(v.c.received_at, v.c.version, v.c.size_original, v.c.size_stored, se.c.modality)
                        .select_from(v.join(i, i.c.id == v.c.instance_pk).join(se, se.c.id == i.c.series_pk))
                        .where(where))
    sums: dict[tuple[int, str], list[int]] = {}
    for row in rows:
        entry = sums.setdefault((day_of(row.received_at), (row.modality or "")[:16]), [0, 0, 0, 0])
        entry[0] += 1 if row.version == 1 else 0
        entry[1] += 1
        entry[2] += int(row.size_original)
        entry[3] += int(row.size_stored)
    return [(day, modality, *values) for (day, modality), values in sums.items()]


def forget_versions(conn: Connection, version_pks: Sequence[int]) -> None:
    """Take these versions out of the rollup before the deletion removes them (same transaction)."""
    for chunk in in_chunks(list(version_pks)):
        for day, modality, instances, versions, original, stored in _groups(conn, t.versions.c.id.in_(chunk)):
            conn.execute(_BUMP, {"d": day, "m": modality, "n": -instances, "k": -versions, "o": -original,
                                 "s": -stored})


def rebuild_rollup(conn: Connection) -> None:
    """Recompute the rollup from every version (after a snapshot replaced the tables)."""
    conn.execute(delete(_d))
    rows = _groups(conn, t.versions.c.id.is_not(None))
    if rows:
        conn.execute(insert(_d), [{"day": day, "modality": modality, "instances": n, "versions": k,
                                   "bytes_original": o, "bytes_stored": s} for day, modality, n, k, o, s in rows])


# --- reading the rollup ----------------------------------------------------------------------

def by_modality(conn: Connection) -> list[Any]:
    """(modality, instances, versions, bytes_original, bytes_stored) per modality, largest first."""
    return conn.execute(select(_d.c.modality, func.sum(_d.c.instances).label("instances"),
                               func.sum(_d.c.versions).label("versions"),
                               func.sum(_d.c.bytes_original).label("bytes_original"),
                               func.sum(_d.c.bytes_stored).label("bytes_stored"))
                        .group_by(_d.c.modality).order_by(func.sum(_d.c.bytes_stored).desc(), _d.c.modality)).all()


def daily(conn: Connection, first_day: int) -> list[Any]:
    """(day, instances, versions, bytes_original, bytes_stored) of every day from ``first_day`` on
    that has receipts (all modalities together), oldest first."""
    return conn.execute(select(_d.c.day, func.sum(_d.c.instances).label("instances"),
                               func.sum(_d.c.versions).label("versions"),
                               func.sum(_d.c.bytes_original).label("bytes_original"),
                               func.sum(_d.c.bytes_stored).label("bytes_stored"))
                        .where(_d.c.day >= first_day).group_by(_d.c.day).order_by(_d.c.day)).all()


def receipts_since(conn: Connection, since: float) -> list[tuple[float, int]]:
    """(received_at, original bytes) of every version received at or after ``since`` (the
    receipt-time index; for hourly buckets of a recent window)."""
    v = t.versions
    return [(float(r[0]), int(r[1])) for r in conn.execute(
        select(v.c.received_at, v.c.size_original).where(v.c.received_at >= since))]


def arrivals_since(conn: Connection, since: float) -> dict[str, int]:
    """Studies, instances and original bytes received at or after ``since``."""
    v, i, se = t.versions, t.instances, t.series
    row = conn.execute(select(func.count(distinct(se.c.study_pk)), func.count(distinct(v.c.instance_pk)),
                              func.coalesce(func.sum(v.c.size_original), 0))
                       .select_from(v.join(i, i.c.id == v.c.instance_pk).join(se, se.c.id == i.c.series_pk))
                       .where(v.c.received_at >= since)).one()
    return {"studies": int(row[0]), "instances": int(row[1]), "bytes": int(row[2])}


# --- sites, retention, measured rates ----------------------------------------------------------

def site_shortfall(conn: Connection, site: str) -> tuple[bool, int]:
    """(does ``site`` have any copy row, bytes of its copies not verified: owed or dead). A site's
    verified bytes are every version's stored bytes minus these, read through the outbox index
    (the backlog is small) instead of summing a million verified rows."""
    c = t.copies
    known = conn.execute(select(c.c.id).where(c.c.site == site).limit(1)).first() is not None
    short = conn.execute(select(func.coalesce(func.sum(c.c.size), 0))
                         .where(c.c.site == site, c.c.state.in_(("owed", "dead")))).scalar()
    return known, int(short or 0)


def expiring(conn: Connection, before: str) -> list[tuple[str, int]]:
    """(keep-until day, stored bytes) of the studies no hold covers whose keep-until day is
    before ``before`` ("YYYY-MM-DD"), by day."""
    r, s, se, i, v = t.study_retention, t.studies, t.series, t.instances, t.versions
    return [(str(row[0]), int(row[1] or 0)) for row in conn.execute(
        select(r.c.keep_until, func.sum(v.c.size_stored))
        .select_from(r.join(s, s.c.study_uid == r.c.study_uid).join(se, se.c.study_pk == s.c.id)
                     .join(i, i.c.series_pk == se.c.id).join(v, v.c.instance_pk == i.c.id))
        .where(r.c.keep_until.is_not(None), r.c.keep_until < before, not_(held_clause(s.c.study_uid, s.c.patient_pk)))
        .group_by(r.c.keep_until))]


def rule_mix_since(conn: Connection, since: float) -> dict[str, int]:
    """Retention rule -> how many studies that arrived at or after ``since`` it decided."""
    r, s = t.study_retention, t.studies
    return {str(row[0]): int(row[1]) for row in conn.execute(
        select(r.c.rule, func.count()).select_from(s.join(r, r.c.study_uid == s.c.study_uid))
        .where(s.c.created_at >= since).group_by(r.c.rule))}


def restore_rates(conn: Connection, limit: int) -> list[Any]:
    """The newest ``limit`` restore/export jobs that spent time sending: (id, kind, peer,
    finished_at, seconds_sending, bytes sent, instances sent)."""
    j, it = t.restore_jobs, t.restore_items
    jobs = conn.execute(select(j.c.id, j.c.kind, j.c.peer, j.c.finished_at, j.c.heartbeat_at, j.c.seconds_sending)
                        .where(j.c.seconds_sending > 0).order_by(j.c.id.desc()).limit(limit)).all()
    result = []
    for job in jobs:
        sent = conn.execute(select(func.count(), func.coalesce(func.sum(it.c.size), 0))
                            .where(it.c.job_id == job.id, it.c.state == "sent")).one()
        result.append((job.id, job.kind, job.peer, job.finished_at or job.heartbeat_at, float(job.seconds_sending),
                       int(sent[1]), int(sent[0])))
    return result


def drill_rates(conn: Connection, limit: int) -> list[Any]:
    """The newest ``limit`` finished drills that restored something: (id, site, target,
    finished_at, seconds, bytes, instances)."""
    d = t.drill_runs
    return conn.execute(select(d.c.id, d.c.site, d.c.target, d.c.finished_at, d.c.seconds, d.c.bytes, d.c.instances)
                        .where(d.c.seconds > 0, d.c.bytes > 0, d.c.finished_at.is_not(None))
                        .order_by(d.c.id.desc()).limit(limit)).all()
