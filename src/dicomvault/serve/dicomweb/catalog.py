"""Catalog lookups for WADO-RS: the latest version of every instance under a DICOMweb path,
and why a path matched nothing. The queries are ``catalog/paths.py``.
"""

from __future__ import annotations

from dicomvault.catalog import Catalog, VersionRecord
from dicomvault.catalog import paths, rejections


def latest_versions(catalog: Catalog, study: str, series: str | None = None,
                    instance: str | None = None) -> list[tuple[VersionRecord, str]]:
    """(latest version, SOP Class UID) of every instance under the path, in UID order."""
    with catalog.read() as conn:
        rows = paths.latest_versions_under(conn, study, series, instance)
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
    """Why a path matched nothing, naming the first level that is unknown, or that what it
    names was rejected (IOCM; the reason starts with "rejected")."""
    with catalog.read() as conn:
        if instance is not None:
            found = rejections.rejected_among(conn, [instance]).get(instance)
            if found is not None and found.kind == "note":
                return f"rejected: instance {instance} is a rejection note ({found.meaning}), kept as evidence only"
            if found is not None:
                return (f"rejected: instance {instance} was rejected ({found.meaning or found.code}) by "
                        f"rejection note {found.kos_uid}")
        study_pk = paths.study_pk(conn, study)
        if study_pk is None:
            return f"study {study} is not in this archive"
        if series is None:
            return f"study {study} has no stored instances" + _all_rejected(conn, study)
        series_row = paths.series_row(conn, series)
        if series_row is None or series_row.study_pk != study_pk:
            return f"series {series} is not in study {study}"
        if instance is None:
            return f"series {series} has no stored instances" + _all_rejected(conn, study, series)
        return f"instance {instance} is not in series {series} of study {study}"


def _all_rejected(conn: object, study: str, series: str | None = None) -> str:
    """ " (every instance was rejected)" when the path holds instances, every one rejected (IOCM)."""
    return " (every instance was rejected)" if paths.holds_only_rejected(conn, study, series) else ""
