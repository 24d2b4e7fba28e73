"""What a retrieval (C-GET, C-MOVE, WADO-RS) sends: the latest version of every instance under
the requested patients, studies, series or instances, in viewing order.

One query per request, returning everything a sender needs up front (SOP class and stored
transfer syntax too), so a C-MOVE can propose all its presentation contexts on one
association before the first instance goes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import schema as t
from .chunks import in_chunks
from .selection import latest_versions_select, number_key

if TYPE_CHECKING:
    from .db import Catalog

# The attribute that names the unique key of each retrieval level (PS3.4 C.4.2.2.1).
LEVEL_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}


@dataclass(frozen=True)
class RetrievalItem:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    object_id: str
    sha256: str
    transfer_syntax_uid: str
    size_original: int
    version: int
    series_number: str = ""
    instance_number: str = ""


def retrieval_items(catalog: "Catalog", level: str, keys: Sequence[str]) -> list[RetrievalItem]:
    """Latest version of every instance under ``keys`` (UIDs, or Patient IDs at PATIENT level),
    ordered by study, series number, instance number."""
    if level not in LEVEL_KEYS:
        raise ValueError(f"unknown retrieval level {level!r}")
    base = latest_versions_select(
        t.instances.c.sop_instance_uid, t.instances.c.sop_class_uid, t.studies.c.study_uid,
        t.series.c.series_uid, t.versions.c.object_id, t.versions.c.sha256, t.versions.c.transfer_syntax_uid,
        t.versions.c.size_original, t.versions.c.version, t.series.c.series_number, t.instances.c.instance_number,
    )
    column = {"PATIENT": t.patients.c.patient_id, "STUDY": t.studies.c.study_uid,
              "SERIES": t.series.c.series_uid, "IMAGE": t.instances.c.sop_instance_uid}[level]
    unique = list(dict.fromkeys(k for k in keys if k))
    items: dict[str, RetrievalItem] = {}
    with catalog.read() as conn:
        for chunk in in_chunks(unique):
            for row in conn.execute(base.where(column.in_(chunk))):
                items[row.sop_instance_uid] = RetrievalItem(
                    row.sop_instance_uid, row.sop_class_uid, row.study_uid, row.series_uid, row.object_id,
                    row.sha256, row.transfer_syntax_uid, int(row.size_original), int(row.version),
                    row.series_number or "", row.instance_number or "",
                )
    return sorted(items.values(), key=lambda i: (i.study_uid, number_key(i.series_number), i.series_uid,
                                                 number_key(i.instance_number), i.sop_instance_uid))
