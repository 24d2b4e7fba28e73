"""Part-10 framing and header-only attribute extraction.

The archive never re-encodes what it is given: it only needs to know where the dataset
starts, which transfer syntax it is in, and a handful of header attributes. Pixel data is
never parsed on ingest.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

from typing import TYPE_CHECKING

from dicomvault.dicom.records import InstanceAttributes

from .header import HeaderWalkError, MalformedDataset, walk_header

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom (and numpy behind it) is imported lazily: commands that only read the catalog
# should not pay ~0.6 s for it.

IMPLEMENTATION_VERSION_NAME = "DICOMVAULT_01"
IMPLEMENTATION_CLASS_UID = "2.25.272267037891128744615561584730042023053"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_LIMITS = {"patient_name": 324, "referring_physician": 324, "study_description": 256, "series_description": 256}


class DicomFormatError(Exception):
    """The bytes are not a DICOM instance we can archive; the message says why."""


class DatasetMismatch(DicomFormatError):
    """The data set is not the instance its C-STORE request announced (PS3.4 B.2.3: 0xA900)."""


@dataclass(frozen=True)
class ParsedInstance:
    attributes: InstanceAttributes
    dataset_offset: int  # where the dataset starts inside the Part-10 bytes


_FIELDS = (
    # (record field, keyword, tag)
    ("sop_class_uid", "SOPClassUID", 0x00080016),
    ("sop_instance_uid", "SOPInstanceUID", 0x00080018),
    ("study_date", "StudyDate", 0x00080020),
    ("study_time", "StudyTime", 0x00080030),
    ("accession_number", "AccessionNumber", 0x00080050),
    ("modality", "Modality", 0x00080060),
    ("referring_physician", "ReferringPhysicianName", 0x00080090),
    ("study_description", "StudyDescription", 0x00081030),
    ("series_description", "SeriesDescription", 0x0008103E),
    ("patient_name", "PatientName", 0x00100010),
    ("patient_id", "PatientID", 0x00100020),
    ("issuer", "IssuerOfPatientID", 0x00100021),
    ("birth_date", "PatientBirthDate", 0x00100030),
    ("sex", "PatientSex", 0x00100040),
    ("body_part", "BodyPartExamined", 0x00180015),
    ("study_uid", "StudyInstanceUID", 0x0020000D),
    ("series_uid", "SeriesInstanceUID", 0x0020000E),
    ("study_id", "StudyID", 0x00200010),
    ("series_number", "SeriesNumber", 0x00200011),
    ("instance_number", "InstanceNumber", 0x00200013),
)
_CHARSET_TAG = 0x00080005
_WANTED = {tag for _f, _k, tag in _FIELDS} | {_CHARSET_TAG}
_PERSON_NAMES = {"patient_name", "referring_physician"}
_TEXT_FIELDS = {"study_description", "series_description"} | _PERSON_NAMES | {"patient_id", "issuer", "accession_number", "body_part", "study_id"}
_UID_FIELDS = {"sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"}


def _read_meta(data: bytes) -> tuple[int, str, str]:
    """(offset past the File Meta group, its Transfer Syntax UID, Media Storage SOP Class UID).

    Walking the explicit-VR-LE elements ourselves (instead of trusting (0002,0000) group
    length) copes with files whose group length is wrong, which real-world senders produce.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        offset = 132
    elif data[:4] == b"DICM":
        offset = 4
    else:
        return 0, "", ""
    transfer_syntax = media_class = ""
    while offset + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            if offset + 12 > len(data):
                raise DicomFormatError("truncated: the file meta information is incomplete")
            (length,) = struct.unpack_from("<I", data, offset + 8)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            value_at = offset + 8
        if elem in (0x0002, 0x0010):
            text = data[value_at : value_at + length].decode("ascii", "replace").strip("\x00 ")
            if elem == 0x0010:
                transfer_syntax = text
            else:
                media_class = text
        offset = value_at + length
    if offset > len(data):
        raise DicomFormatError("truncated: the file meta information is incomplete")
    return offset, transfer_syntax, media_class


def split_part10(data: bytes) -> tuple[int, str]:
    """(offset where the data set starts, transfer syntax) of stored Part-10 bytes: what a
    C-GET/C-MOVE sends is ``data[offset:]``, exactly as it was received."""
    offset, transfer_syntax, _media_class = _read_meta(data)
    return offset, transfer_syntax


def _clean(value: str, field: str) -> str:
    if field in _UID_FIELDS:
        # Never cut a UID: two instances would collide under the cut one. Only the one pad
        # byte a UI value may carry (NUL; a space, as many senders write) is dropped here;
        # ``uid_problem`` judges the rest.
        return value[:-1] if value[-1:] in ("\x00", " ") else value
    return value.replace("\x00", "").strip()[: _LIMITS.get(field, 64)]


def _fast_values(data: bytes, offset: int, transfer_syntax: str) -> dict[str, str]:
    raw = walk_header(data, offset, transfer_syntax, _WANTED, to_end=True)
    charset = raw.get(_CHARSET_TAG, b"").decode("ascii", "replace").strip(" \x00")
    plain = charset in ("", "ISO_IR 100", "ISO_IR 6", "ISO_IR 192")
    encodings = [c.strip() for c in charset.split("\\")] if charset else ["ISO_IR 6"]
    values: dict[str, str] = {}
    for field, _keyword, tag in _FIELDS:
        value = raw.get(tag, b"")
        if field in _UID_FIELDS:
            text = value.decode("latin-1")  # byte for byte: a non-ASCII byte stays visible to the check
        elif field in _TEXT_FIELDS and not plain:
            from pydicom.charset import decode_bytes

            text = decode_bytes(value, encodings, {0x5E, 0x3D} if field in _PERSON_NAMES else set())
        elif charset == "ISO_IR 192":
            text = value.decode("utf-8", "replace")
        else:
            text = value.decode("latin-1")
        values[field] = _clean(text, field)
    return values


def _text(ds: "Dataset", keyword: str) -> str:
    from pydicom.multival import MultiValue

    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a garbled optional attribute must not block archiving
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value)


def _pydicom_values(data: bytes, offset: int) -> tuple[dict[str, str], str]:
    """The slow, general path: deflated datasets, files without meta, odd encodings."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=offset == 0, defer_size=4096)
        ds.get("SOPInstanceUID")  # forces parsing up to the UIDs, surfacing truncation early
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds of error on garbage
        raise DicomFormatError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
    values = {field: _clean(_text(ds, keyword), field) for field, keyword, _tag in _FIELDS}
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if offset:
        _check_complete(data, offset, transfer_syntax)
    return values, transfer_syntax


def _check_complete(data: bytes, offset: int, transfer_syntax: str) -> None:
    """Refuse a truncated Part-10 file on the slow path too (pydicom reads them leniently).

    A deflated dataset is inflated and walked. Meta-less legacy files are left to pydicom's
    judgement: without a declared transfer syntax the walk could misread a good file.
    """
    if transfer_syntax == "1.2.840.10008.1.2.1.99":
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(data[offset:])
        except zlib.error as exc:
            raise DicomFormatError(f"the deflated dataset is corrupt: {exc}") from exc
        if not inflater.eof:
            raise DicomFormatError("truncated: the deflated dataset stops before its end")
        data, offset, transfer_syntax = inflated, 0, "1.2.840.10008.1.2.1"
    elif not transfer_syntax:
        return
    try:
        walk_header(data, offset, transfer_syntax, {_CHARSET_TAG}, to_end=True)
    except MalformedDataset as exc:
        raise DicomFormatError(_not_in_syntax(exc, transfer_syntax)) from exc
    except (HeaderWalkError, LookupError, ValueError):
        return


def _not_in_syntax(exc: MalformedDataset, transfer_syntax: str) -> str:
    """The sender-facing reason: what is wrong first (DICOM's Error Comment holds 64 characters)."""
    text = str(exc)
    if text.startswith("truncated"):
        return text
    encoding = {"1.2.840.10008.1.2": "implicit VR LE", "1.2.840.10008.1.2.2": "explicit VR BE"}.get(
        transfer_syntax, "explicit VR LE")
    return f"invalid {encoding} data set: {text} (transfer syntax {transfer_syntax})"


# PS3.5 9.1: components of ASCII digits, no leading zero unless the component is "0".
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def uid_problem(value: str) -> str:
    """Why ``value`` is not a valid UID (PS3.5 9.1), or "" if it is one.

    Written out rather than ``str.isdigit``, which accepts superscripts and Arabic-Indic
    digits: such a UID, once stored, broke every C-FIND for its patient.
    """
    if len(value) > 64:
        return f"over 64 characters ({len(value)})"
    if _UID.fullmatch(value):
        return ""
    if any(c not in "0123456789." for c in value):
        return "not only digits 0-9 and '.'"
    if "" in value.split("."):
        return "an empty component"
    return "leading zero in a component"


def _check_uid(values: dict[str, str], field: str, label: str) -> str:
    value = values[field]
    if not value:
        raise DicomFormatError(f"the dataset has no {label}; it cannot be archived")
    problem = uid_problem(value)
    if problem:
        keyword = label.split(" ")[0]
        raise DicomFormatError(f"invalid UID in {keyword}: {problem} ({value[:70]!r})")
    return value


def _check_affected(values: dict[str, str], affected: tuple[str, str]) -> None:
    """The data set must be the instance the C-STORE request announced: the archived file's
    meta is written from the request, and must not disagree with the data set it wraps."""
    sop_class, sop_instance = affected
    if values["sop_class_uid"] != sop_class:
        raise DatasetMismatch(
            f"data set SOPClassUID {values['sop_class_uid']!r} is not the request's Affected SOP Class {sop_class!r}"
        )
    if values["sop_instance_uid"] != sop_instance:
        raise DatasetMismatch(
            f"data set SOPInstanceUID {values['sop_instance_uid']!r} is not the request's Affected SOP Instance"
            f" {sop_instance!r}"
        )


def parse_part10(data: bytes, transfer_syntax: str | None = None,
                 affected: tuple[str, str] | None = None) -> ParsedInstance:
    """Read header attributes from Part-10 bytes (or a bare dataset) without touching pixels.

    ``affected``: the (SOP Class, SOP Instance) UIDs a C-STORE request announced; the data
    set must carry the same ones (``DatasetMismatch`` otherwise).
    """
    if len(data) < 8:
        raise DicomFormatError(f"only {len(data)} bytes: not a DICOM file")
    offset, meta_ts, media_class = _read_meta(data)
    ts = transfer_syntax or meta_ts
    values = None
    if offset and ts:
        try:
            values = _fast_values(data, offset, ts)
        except MalformedDataset as exc:
            raise DicomFormatError(_not_in_syntax(exc, ts)) from exc
        except (HeaderWalkError, LookupError, ValueError):
            values = None
    if values is None:
        values, parsed_ts = _pydicom_values(data, offset)
        ts = ts or parsed_ts
    values["sop_class_uid"] = values["sop_class_uid"] or media_class
    if offset == 0 and not values["sop_class_uid"] and not values["sop_instance_uid"]:
        raise DicomFormatError(
            "not a DICOM file: no Part-10 'DICM' header and no SOP Class/Instance UID in what follows"
        )
    if not ts:
        if offset:
            raise DicomFormatError("the file meta has no Transfer Syntax UID (0002,0010)")
        ts = IMPLICIT_VR_LITTLE_ENDIAN
    for field, label in (
        ("sop_instance_uid", "SOPInstanceUID (0008,0018)"), ("sop_class_uid", "SOPClassUID (0008,0016)"),
        ("study_uid", "StudyInstanceUID (0020,000D)"), ("series_uid", "SeriesInstanceUID (0020,000E)"),
    ):
        _check_uid(values, field, label)
    if affected is not None:
        _check_affected(values, affected)
    return ParsedInstance(InstanceAttributes(transfer_syntax_uid=ts, **values), offset)


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB",):
        return struct.pack("<HH2s2xI", 0x0002, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def build_part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset: bytes) -> bytes:
    """Wrap dataset bytes received over the network in a deterministic Part-10 header.

    Deterministic (no timestamps, no sender AE) so the same instance sent twice produces the
    same bytes; who sent it is recorded in the catalog instead. The dataset is untouched.
    The seven meta elements are packed directly: pydicom's writer cost ~0.5 ms per instance
    on the ingest hot path (a test pins the output to pydicom's).
    """
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _meta_element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body + dataset


def build_part10_with_pydicom(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset: bytes) -> bytes:
    """The reference implementation of ``build_part10`` (used by tests only)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(buffer), meta, enforce_standard=True)
    return buffer.getvalue() + dataset
