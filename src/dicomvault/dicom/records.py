"""Plain records passed between ingest, the catalog and the object metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class InstanceAttributes:
    """The DICOM header attributes the catalog indexes (also sealed into every object)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    body_part: str = ""
    instance_number: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InstanceAttributes":
        names = {f.name for f in fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in names})


@dataclass(frozen=True)
class VersionRecord:
    """One stored version of an instance: which object holds it and how to check it."""

    sop_instance_uid: str
    version: int
    object_id: str
    sha256: str
    dataset_sha256: str
    size_original: int
    size_stored: int
    transfer_syntax_uid: str
    codec: str
    key_id: str
    received_at: float
    source: str
    study_uid: str = ""
    series_uid: str = ""
