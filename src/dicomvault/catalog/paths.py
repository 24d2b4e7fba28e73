"""Lookups by a DICOMweb path (``/studies/S/series/R/instances/I``), which names the whole
hierarchy: a series that exists but belongs to another study does not match, unlike
``Catalog.versions_for_uid`` which takes any one UID. Read-only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from . import rejections
from . import schema as t

_later = t.versions.alias("later")


def _latest_query(study: str, series: str | None, instance: str | None):  # noqa: ANN202
    query = (
        select(
            t.instances.c.sop_instance_uid, t.instances.c.sop_class_uid, t.versions.c.version,
            t.versions.c.object_id, t.versions.c.sha256, t.versions.c.dataset_sha256,
            t.versions.c.size_original, t.versions.c.size_stored, t.versions.c.transfer_syntax_uid,
            t.versions.c.codec, t.versions.c.key_id, t.versions.c.received_at, t.versions.c.source,
            t.studies.c.study_uid, t.series.c.series_uid,
        )
        .select_from(
            t.versions.join(t.instances, t.versions.c.instance_pk == t.instances.c.id)
            .join(t.series, t.instances.c.series_pk == t.series.c.id)
            .join(t.studies, t.series.c.study_pk == t.studies.c.id)
        )
        .where(t.studies.c.study_uid == study)
        .where(
            t.versions.c.version
            == select(func.max(_later.c.version)).where(_later.c.instance_pk == t.versions.c.instance_pk).scalar_subquery()
        )
        .where(rejections.visible())  # IOCM: a rejected instance is never sent
        .order_by(t.series.c.series_uid, t.instances.c.sop_instance_uid)
    )
    if series is not None:
        query = query.where(t.series.c.series_uid == series)
    if instance is not None:
        query = query.where(t.instances.c.sop_instance_uid == instance)
    return query


def latest_versions_under(conn: Connection, study: str, series: str | None = None,
                          instance: str | None = None) -> list[Any]:
    """The latest version of every instance under the path (with its SOP Class, study and
    series UIDs), in series then instance UID order."""
    return conn.execute(_latest_query(study, series, instance)).all()


def study_pk(conn: Connection, study: str) -> int | None:
    return conn.execute(select(t.studies.c.id).where(t.studies.c.study_uid == study)).scalar()


def series_row(conn: Connection, series: str) -> Any:
    """(id, study_pk) of a series, or None: which study it belongs to."""
    return conn.execute(select(t.series.c.id, t.series.c.study_pk).where(t.series.c.series_uid == series)).first()


def holds_only_rejected(conn: Connection, study: str, series: str | None = None) -> bool:
    """The study (or its series) holds instances and every one was rejected (IOCM)."""
    query = (select(func.count()).select_from(
        t.instances.join(t.series, t.instances.c.series_pk == t.series.c.id)
        .join(t.studies, t.series.c.study_pk == t.studies.c.id))
        .where(t.studies.c.study_uid == study))
    if series is not None:
        query = query.where(t.series.c.series_uid == series)
    total = conn.execute(query).scalar_one()
    return bool(total) and conn.execute(query.where(rejections.visible())).scalar_one() == 0
