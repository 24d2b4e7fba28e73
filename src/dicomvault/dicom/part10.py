"""Part-10 framing and header-only attribute extraction.

The archive never re-encodes what it is given: it only needs to know where the dataset
starts, which transfer syntax it is in, and a handful of header attributes. Pixel data is
never parsed on ingest.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from dicomvault.catalog.records import InstanceAttributes

IMPLEMENTATION_VERSION_NAME = "DICOMVAULT_01"
IMPLEMENTATION_CLASS_UID = PYDICOM_IMPLEMENTATION_UID
_LIMITS = {"patient_name": 324, "referring_physician": 324, "study_description": 256, "series_description": 256}


class DicomFormatError(Exception):
    """The bytes are not a DICOM instance we can archive; the message says why."""


@dataclass(frozen=True)
class ParsedInstance:
    attributes: InstanceAttributes
    dataset_offset: int  # where the dataset starts inside the Part-10 bytes


def _meta_end(data: bytes) -> int:
    """Offset just past the File Meta group, walking the explicit-VR-LE elements ourselves.

    Walking the elements (instead of trusting (0002,0000) group length) copes with files
    whose group length is wrong, which real-world senders produce.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        offset = 132
    elif data[:4] == b"DICM":
        offset = 4
    else:
        return 0
    while offset + 8 <= len(data):
        group, _elem = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            if offset + 12 > len(data):
                raise DicomFormatError("file meta information is truncated")
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8 + length
    if offset > len(data):
        raise DicomFormatError("file meta information is truncated")
    return offset


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a garbled optional attribute must not block archiving
        return ""
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().replace("\x00", "")[:limit]


def _uid(ds: Dataset, keyword: str, tag: str, required: bool = True) -> str:
    value = _text(ds, keyword)
    if required and not value:
        raise DicomFormatError(f"the dataset has no {keyword} {tag}; it cannot be archived")
    if value and (len(value) > 64 or not all(c.isdigit() or c == "." for c in value)):
        raise DicomFormatError(f"{keyword} {tag} {value[:70]!r} is not a valid DICOM UID")
    return value


def parse_part10(data: bytes, transfer_syntax: str | None = None) -> ParsedInstance:
    """Read header attributes from Part-10 bytes (or a bare dataset) without touching pixels."""
    if len(data) < 8:
        raise DicomFormatError(f"only {len(data)} bytes: not a DICOM file")
    offset = _meta_end(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=offset == 0, defer_size=4096)
        ds.get("SOPInstanceUID")  # forces parsing up to the UIDs, surfacing truncation early
    except (InvalidDicomError, EOFError, ValueError, struct.error, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise DicomFormatError(f"not a readable DICOM file: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage
        raise DicomFormatError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
    if offset == 0 and not _text(ds, "SOPClassUID") and not _text(ds, "SOPInstanceUID"):
        raise DicomFormatError(
            "not a DICOM file: no Part-10 'DICM' header and no SOP Class/Instance UID in what follows"
        )
    meta = getattr(ds, "file_meta", None)
    ts = transfer_syntax or (str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    if not ts:
        ts = ImplicitVRLittleEndian if offset == 0 else ""
    if not ts:
        raise DicomFormatError("the file meta has no Transfer Syntax UID (0002,0010)")
    sop_class = _uid(ds, "SOPClassUID", "(0008,0016)", required=False)
    if not sop_class and meta is not None:
        sop_class = str(meta.get("MediaStorageSOPClassUID", "")).strip()
    if not sop_class:
        raise DicomFormatError("the dataset has no SOPClassUID (0008,0016); it cannot be archived")
    attributes = InstanceAttributes(
        sop_instance_uid=_uid(ds, "SOPInstanceUID", "(0008,0018)"),
        sop_class_uid=sop_class,
        study_uid=_uid(ds, "StudyInstanceUID", "(0020,000D)"),
        series_uid=_uid(ds, "SeriesInstanceUID", "(0020,000E)"),
        transfer_syntax_uid=ts,
        **{
            field: _text(ds, keyword, _LIMITS.get(field, 64))
            for field, keyword in (
                ("patient_id", "PatientID"), ("issuer", "IssuerOfPatientID"), ("patient_name", "PatientName"),
                ("birth_date", "PatientBirthDate"), ("sex", "PatientSex"), ("study_date", "StudyDate"),
                ("study_time", "StudyTime"), ("accession_number", "AccessionNumber"), ("study_id", "StudyID"),
                ("study_description", "StudyDescription"), ("referring_physician", "ReferringPhysicianName"),
                ("modality", "Modality"), ("series_number", "SeriesNumber"),
                ("series_description", "SeriesDescription"), ("body_part", "BodyPartExamined"),
                ("instance_number", "InstanceNumber"),
            )
        },
    )
    return ParsedInstance(attributes, offset)


def build_part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset: bytes) -> bytes:
    """Wrap dataset bytes received over the network in a deterministic Part-10 header.

    Deterministic (no timestamps, no sender AE) so the same instance sent twice produces the
    same bytes; who sent it is recorded in the catalog instead. The dataset is untouched.
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(buffer), meta, enforce_standard=True)
    return buffer.getvalue() + dataset
