"""Capacity figures from the catalog: the daily rollup (``capacity_daily``) and the few
questions capacity planning and the RTO estimate ask (jobs/capacity.py decides what they mean).

The rollups hold the versions indexed, the instances they began and their bytes: per UTC day
of receipt and modality (the series' Modality when the version was indexed;
``capacity_daily``) and per study (``capacity_studies``, for what retention will expire).
``Catalog.add_version`` tallies them and applies the tally once per write transaction
(``Tally``, ``apply``), ``forget_versions`` takes out what the deletion engine removes, in its
transaction, and ``rebuild_rollup`` recomputes them from the versions (migration 0017, a
snapshot loaded by rebuild-index). Reading them costs a row per day or per expiring study.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, distinct, func, insert, not_, select, update

from . import schema as t
from .chunks import in_chunks
from .holds import held_clause

DAY = 86400
_d, _st = t.capacity_daily, t.capacity_studies


def _bump(table: Any, key: tuple[str, ...]) -> Any:
    return (update(table).where(*(table.c[k] == bindparam(f"key_{k}") for k in key))
            .values(instances=table.c.instances + bindparam("n"), versions=table.c.versions + bindparam("k"),
                    bytes_original=table.c.bytes_original + bindparam("o"),
                    bytes_stored=table.c.bytes_stored + bindparam("s")))


_BUMP = {"day": _bump(_d, ("day", "modality")), "study": _bump(_st, ("study_uid",))}
_KEYS = {"day": ("day", "modality"), "study": ("study_uid",)}
_TABLES = {"day": _d, "study": _st}


def day_of(received_at: float) -> int:
    """The UTC day number (days since 1970-01-01) of a receipt time."""
    return int(received_at // DAY)


class Tally:
    """What one write transaction adds to (or takes from) the rollups, applied once at its end:
    a group commit of 200 instances of one study costs two UPDATEs, not 400."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, tuple[Any, ...]], list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.sums)

    def add(self, received_at: float, modality: str, study_uid: str, new_instance: bool, size_original: int,
            size_stored: int, sign: int = 1) -> None:
        for key in (("day", (day_of(received_at), (modality or "")[:16])), ("study", (study_uid,))):
            entry = self.sums.setdefault(key, [0, 0, 0, 0])
            entry[0] += sign * (1 if new_instance else 0)
            entry[1] += sign
            entry[2] += sign * int(size_original)
            entry[3] += sign * int(size_stored)


def apply(conn: Connection, tally: Tally) -> None:
    """Add a transaction's tally to the rollup rows (writers are serialised by Catalog.write:
    an UPDATE that finds no row is followed by the INSERT without a race)."""
    for (kind, key), (n, k, o, s) in tally.sums.items():
        names = _KEYS[kind]
        params = {**{f"key_{name}": value for name, value in zip(names, key)}, "n": n, "k": k, "o": o, "s": s}
        if not conn.execute(_BUMP[kind], params).rowcount:
            conn.execute(insert(_TABLES[kind]), {**dict(zip(names, key)), "instances": n, "versions": k,
                                                 "bytes_original": o, "bytes_stored": s})
    tally.sums.clear()


def _tally(conn: Connection, where: Any, sign: int = 1) -> Tally:
    """The tally of the versions ``where`` selects, as ingest counted them."""
    v, i, se, st = t.versions, t.instances, t.series, t.studies
    tally = Tally()
    for row in conn.execute(select(v.c.received_at, v.c.version, v.c.size_original, v.c.size_stored, se.c.modality,
                                   st.c.study_uid)
                            .select_from(v.join(i, i.c.id == v.c.instance_pk).join(se, se.c.id == i.c.series_pk)
                                         .join(st, st.c.id == se.c.study_pk)).where(where)):
        tally.add(row.received_at, row.modality, row.study_uid, row.version == 1, row.size_original, row.size_stored,
                  sign)
    return tally


def forget_versions(conn: Connection, version_pks: Sequence[int]) -> None:
    """Take these versions out of the rollups before the deletion removes them (same transaction)."""
    for chunk in in_chunks(list(version_pks)):
        apply(conn, _tally(conn, t.versions.c.id.in_(chunk), sign=-1))
    conn.execute(delete(_st).where(_st.c.versions <= 0))
    conn.execute(delete(_d).where(_d.c.versions <= 0))


def rebuild_rollup(conn: Connection) -> None:
    """Recompute the rollups from every version (after a snapshot replaced the tables)."""
    conn.execute(delete(_d))
    conn.execute(delete(_st))
    apply(conn, _tally(conn, t.versions.c.id.is_not(None)))


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
    before ``before`` ("YYYY-MM-DD"), by day (bytes from the per-study rollup)."""
    r, s = t.study_retention, t.studies
    return [(str(row[0]), int(row[1] or 0)) for row in conn.execute(
        select(r.c.keep_until, func.sum(_st.c.bytes_stored))
        .select_from(r.join(s, s.c.study_uid == r.c.study_uid).join(_st, _st.c.study_uid == r.c.study_uid))
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
