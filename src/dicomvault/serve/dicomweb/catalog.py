"""Catalog lookups for WADO-RS: the latest version of every instance under a DICOMweb path.

A WADO-RS path names the whole hierarchy (``/studies/S/series/R/instances/I``), so a series
that exists but belongs to another study is "not found" here, unlike ``versions_for_uid``
which takes any one UID. Plain SQLAlchemy Core on the catalog schema, read-only.
"""

from __future__ import annotations

from sqlalchemy import func, select

from dicomvault.catalog import Catalog, VersionRecord
from dicomvault.catalog import schema as t

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
        .order_by(t.series.c.series_uid, t.instances.c.sop_instance_uid)
    )
    if series is not None:
        query = query.where(t.series.c.series_uid == series)
    if instance is not None:
        query = query.where(t.instances.c.sop_instance_uid == instance)
    return query


def latest_versions(catalog: Catalog, study: str, series: str | None = None,
                    instance: str | None = None) -> list[tuple[VersionRecord, str]]:
    """(latest version, SOP Class UID) of every instance under the path, in UID order."""
    with catalog.read() as conn:
        rows = conn.execute(_latest_query(study, series, instance)).all()
    return [
        (VersionRecord(
            sop_instance_uid=row.sop_instance_uid, version=row.version, object_id=row.object_id, sha256=row.sha256,
            dataset_sha256=row.dataset_sha256, size_original=row.size_original, size_stored=row.size_stored,
            transfer_syntax_uid=row.transfer_syntax_uid, codec=row.codec, key_id=row.key_id,
            received_at=row.received_at, source=row.source, study_uid=row.study_uid, series_uid=row.series_uid,
        ), row.sop_class_uid)
        for row in rows
    ]


def missing_reason(catalog: Catalog, study: str, series: str | None = None, instance: str | None = None) -> str:
    """Why a path matched nothing, naming the first level that is unknown."""
    with catalog.read() as conn:
        study_pk = conn.execute(select(t.studies.c.id).where(t.studies.c.study_uid == study)).scalar()
        if study_pk is None:
            return f"study {study} is not in this archive"
        if series is None:
            return f"study {study} has no stored instances"
        series_row = conn.execute(
            select(t.series.c.id, t.series.c.study_pk).where(t.series.c.series_uid == series)
        ).first()
        if series_row is None or series_row.study_pk != study_pk:
            return f"series {series} is not in study {study}"
        if instance is None:
            return f"series {series} has no stored instances"
        return f"instance {instance} is not in series {series} of study {study}"
