"""A DICOM File-set (PS3.10 / PS3.11): File IDs and the DICOMDIR for instance files that are
written byte-exact by someone else (``jobs/restore/export.py``).

Why not ``pydicom.fileset.FileSet.write()``: ``FileSet.add()`` re-encodes every instance with
pydicom into a staging folder and ``write()`` copies those re-encoded files into place, so
the files would no longer be the archived bytes. Using it only for its DICOMDIR (stage header
stubs, keep the DICOMDIR) does not scale either: each ``add()`` scans every instance already
added, so 3000 instances took ~150 s (quadratic), and its File IDs cannot live under the
``DICOM/`` folder media profiles expect. So this module keeps pydicom for what it knows
(which directory record type a SOP class gets and which keys each record type carries:
``pydicom.fileset.DIRECTORY_RECORDERS``) and does the rest itself:

* **File IDs** ``DICOM/Pnnnnnnn/Snnnnnnn/SEnnnnnn/Innnnnnn``: 5 components of at most 8
  characters from A-Z, 0-9 (PS3.10 8.2, PS3.11), the naming DCMTK's dcmmkdir accepts.
* **Records** come from the instance's own header. A Type 1 record key the instance lacks is
  invented for the DICOMDIR only (never in the file), the way ``dcmmkdir --invent`` does,
  and counted in ``invented`` so the export report says so.
* **Offsets** are not computed by hand: the DICOMDIR is encoded once by pydicom, read back to
  *measure* where each record item starts (``seq_item_tell``), the offsets are filled in and
  it is encoded again. Offsets are fixed-size UL values, so the second encoding has the same
  layout; that is checked before anything is returned.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, build_part10

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

ROOT_FOLDER = "DICOM"
FILE_SET_ID = "DICOMVAULT"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_TRANSFER_SYNTAX_BY_ENCODING = {  # (implicit VR, little endian) -> transfer syntax
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}
# Type 1 keys of each directory record type (PS3.3 Annex F.5) that an instance can lack and
# that can be invented sensibly; the same lists pydicom's recorders check.
_TYPE1: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyDate", "StudyTime", "StudyID"),
    "SERIES": ("Modality", "SeriesNumber"),
    "IMAGE": ("InstanceNumber",),
    "RT DOSE": ("InstanceNumber", "DoseSummationType"),
    "RT STRUCTURE SET": ("InstanceNumber", "StructureSetLabel"),
    "RT PLAN": ("InstanceNumber", "RTPlanLabel"),
    "RT TREAT RECORD": ("InstanceNumber",),
    "PRESENTATION": ("PresentationCreationDate", "PresentationCreationTime", "InstanceNumber", "ContentLabel"),
    "WAVEFORM": ("InstanceNumber", "ContentDate", "ContentTime"),
    "SR DOCUMENT": ("InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime"),
    "KEY OBJECT DOC": ("InstanceNumber", "ContentDate", "ContentTime"),
    "SPECTROSCOPY": ("ContentDate", "ContentTime", "InstanceNumber"),
    "RAW DATA": ("InstanceNumber", "ContentDate", "ContentTime"),
    "REGISTRATION": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "FIDUCIAL": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "VALUE MAP": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "MEASUREMENT": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "SURFACE": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "TRACT": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel"),
    "ENCAP DOC": ("InstanceNumber", "MIMETypeOfEncapsulatedDocument"),
    "ASSESSMENT": ("InstanceNumber", "InstanceCreationDate"),
    "RADIOTHERAPY": ("InstanceNumber",),
    "SURFACE SCAN": ("ContentDate", "ContentTime"),
}
_DATE_SOURCES = ("ContentDate", "SeriesDate", "AcquisitionDate", "InstanceCreationDate", "StudyDate")
_TIME_SOURCES = ("ContentTime", "SeriesTime", "AcquisitionTime", "InstanceCreationTime", "StudyTime")
_FIXED_INVENTIONS = {"Modality": "OT", "CompletionFlag": "PARTIAL", "VerificationFlag": "UNVERIFIED"}
_HAS_CONCEPT_MOD = "HAS CONCEPT MOD"


class FileSetError(Exception):
    """The instance cannot be described in a DICOMDIR; the message says why."""


@dataclass(frozen=True)
class Framed:
    """The bytes to write for one instance and, when they are not the stored bytes, why."""

    data: bytes
    change: str = ""  # empty: byte-identical to the stored copy


def frame_for_file_set(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> Framed:
    """Stored Part-10 bytes as a File-set member.

    Almost every stored copy already is one and is returned untouched. The archive also
    accepts (byte-exact) legacy files that a File-set cannot hold as they are: a dataset with
    no File Meta Information at all, or a meta group without the 128-byte preamble. Those get
    the missing framing (a deterministic meta group as for network-received instances, or the
    zero preamble) with the dataset bytes unchanged, and ``change`` says what was added, so
    the caller reports it instead of silently writing different bytes.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return Framed(data)
    if data[:4] == b"DICM":
        return Framed(b"\x00" * 128 + data, "added the 128-byte preamble the stored copy lacks; "
                                             "meta header and dataset bytes unchanged")
    syntax = detect_transfer_syntax(data)  # no "DICM" anywhere: a bare dataset
    return Framed(build_part10(sop_class_uid, sop_instance_uid, syntax, data),
                  f"stored without File Meta Information; added a meta header (transfer syntax {syntax}), "
                  "dataset bytes unchanged")


def detect_transfer_syntax(dataset: bytes) -> str:
    """The encoding of a bare dataset, as pydicom's reader recognises it (a meta-less file
    says nothing, and the catalog then records implicit VR, which may be wrong)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(dataset), force=True, stop_before_pixels=True)
        ds.get("SOPInstanceUID")
        encoding = ds.original_encoding
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds of error on garbage
        raise FileSetError(f"cannot tell how the meta-less dataset is encoded: {exc}") from exc
    try:
        return _TRANSFER_SYNTAX_BY_ENCODING[(bool(encoding[0]), bool(encoding[1]))]
    except KeyError as exc:
        raise FileSetError(f"the meta-less dataset has an unknown encoding {encoding}") from exc


def read_header(part10: bytes) -> "Dataset":
    """The instance's attributes up to its pixel data, for its directory records."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
        ds.get("SOPInstanceUID")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds of error on garbage
        raise FileSetError(f"cannot read the header for the DICOMDIR: {type(exc).__name__}: {exc}") from exc
    if not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
        raise FileSetError("the dataset has no SOP Class/Instance UID to reference from the DICOMDIR")
    return ds


def _record_type(ds: "Dataset") -> tuple[str, bool]:
    """(leaf record type, single level?) for the SOP class, as pydicom's FileSet decides it.

    These two helpers are private to pydicom; they are used so the SOP-class mapping has one
    source of truth, and the tests pin the result against DCMTK's dcmmkdir.
    """
    from pydicom import fileset

    single = fileset._single_level_record_type(ds)
    if single != "PATIENT":
        return single, True
    return fileset._four_level_record_type(ds), False


def _has(ds: "Dataset", keyword: str) -> bool:
    try:
        element = ds[keyword]
    except (KeyError, ValueError):
        return False
    return element.VM > 0 and element.value not in (None, "")


@dataclass
class _Node:
    record: "Dataset"
    component: str
    children: dict[str, "_Node"] = field(default_factory=dict)  # insertion order = File ID order


class DicomDir:
    """The record tree of one File-set. ``add`` each instance before writing its file (a
    problem surfaces before any byte is written), then ``encode`` once all files are in place.
    """

    def __init__(self, file_set_id: str = FILE_SET_ID) -> None:
        self.file_set_id = file_set_id
        self.invented: Counter[str] = Counter()  # keyword -> records with an invented value
        self.instances = 0
        self._patients: dict[str, _Node] = {}  # by Patient ID (PS3.3 F.5.1: unique in a File-set)
        self._singles: dict[str, _Node] = {}  # single-level records, by SOP Instance UID

    @property
    def patients(self) -> int:
        """PATIENT records: one per Patient ID (or per name, for instances without an ID)."""
        return len(self._patients)

    def add(self, header: "Dataset") -> tuple[str, ...]:
        """Directory records for one instance (from its header); returns its File ID.

        ``header`` is consumed: invented values are set on it while the records are built.
        Raises ``FileSetError`` (and changes nothing) when the records cannot be built.
        """
        counted = self.invented.copy()
        try:
            return self._add(header)
        except FileSetError:
            self.invented = counted
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a garbled header value
            self.invented = counted
            raise FileSetError(f"cannot build its directory records: {type(exc).__name__}: {exc}") from exc

    def _add(self, header: "Dataset") -> tuple[str, ...]:
        leaf_type, single = _record_type(header)
        if single:
            return self._add_single_level(header, leaf_type)
        patient_key = str(header.get("PatientID") or "") or f"\0{header.get('PatientName') or ''}"
        patient = self._patients.get(patient_key)
        if patient is None:
            position = len(self._patients) + 1
            patient = _Node(self._record("PATIENT", header, position), f"P{position:07d}")
        study = patient.children.get(str(header.StudyInstanceUID))
        if study is None:
            position = len(patient.children) + 1
            study = _Node(self._record("STUDY", header, position), f"S{position:07d}")
        series = study.children.get(str(header.SeriesInstanceUID))
        if series is None:
            position = len(study.children) + 1
            series = _Node(self._record("SERIES", header, position), f"SE{position:06d}")
        if str(header.SOPInstanceUID) in series.children:
            raise FileSetError(f"SOP Instance UID {header.SOPInstanceUID} is already in this File-set")
        position = len(series.children) + 1
        leaf = _Node(self._record(leaf_type, header, position), f"I{position:07d}")
        file_id = (ROOT_FOLDER, patient.component, study.component, series.component, leaf.component)
        self._reference(leaf.record, header, file_id)
        # Linked only now: a record that could not be built leaves no empty parent behind.
        self._patients.setdefault(patient_key, patient)
        patient.children.setdefault(str(header.StudyInstanceUID), study)
        study.children.setdefault(str(header.SeriesInstanceUID), series)
        series.children[str(header.SOPInstanceUID)] = leaf
        self.instances += 1
        return file_id

    def _add_single_level(self, header: "Dataset", record_type: str) -> tuple[str, ...]:
        """Palettes, implant templates, hanging protocols: a top-level leaf record."""
        if str(header.SOPInstanceUID) in self._singles:
            raise FileSetError(f"SOP Instance UID {header.SOPInstanceUID} is already in this File-set")
        position = len(self._singles) + 1
        node = _Node(self._record(record_type, header, position), f"R{position:07d}")
        file_id = (ROOT_FOLDER, node.component)
        self._reference(node.record, header, file_id)
        self._singles[str(header.SOPInstanceUID)] = node
        self.instances += 1
        return file_id

    def _record(self, record_type: str, ds: "Dataset", position: int) -> "Dataset":
        """One directory record from pydicom's recorder for the type, Type 1 gaps invented."""
        from pydicom.fileset import DIRECTORY_RECORDERS

        for keyword in _TYPE1.get(record_type, ()):
            if not _has(ds, keyword):
                value = _invention(keyword, ds, record_type, position)
                if value is not None:
                    setattr(ds, keyword, value)
                    self.invented[keyword] += 1
        try:
            record = DIRECTORY_RECORDERS[record_type](ds)
        except (KeyError, ValueError, AttributeError) as exc:
            raise FileSetError(f"cannot build its {record_type} directory record: {exc}") from exc
        if "ContentSequence" in record:  # SR/KO: only the concept modifiers belong in the record
            _keep_concept_modifiers(record)
        record.OffsetOfTheNextDirectoryRecord = 0
        record.RecordInUseFlag = 0xFFFF
        record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
        record.DirectoryRecordType = record_type
        if "SpecificCharacterSet" in ds:
            record.SpecificCharacterSet = ds.SpecificCharacterSet
        return record

    @staticmethod
    def _reference(record: "Dataset", header: "Dataset", file_id: tuple[str, ...]) -> None:
        record.ReferencedFileID = list(file_id)
        record.ReferencedSOPClassUIDInFile = header.SOPClassUID
        record.ReferencedSOPInstanceUIDInFile = header.SOPInstanceUID
        record.ReferencedTransferSyntaxUIDInFile = header.file_meta.TransferSyntaxUID

    def _preorder(self) -> list[_Node]:
        nodes: list[_Node] = []

        def walk(children: dict[str, _Node]) -> None:
            for node in children.values():
                nodes.append(node)
                walk(node.children)

        walk(self._patients)
        walk(self._singles)
        return nodes

    def encode(self) -> bytes:
        """The DICOMDIR file (explicit VR little endian), offsets measured, not computed."""
        from pydicom.uid import generate_uid

        nodes = self._preorder()
        ds = _dicomdir_dataset(self.file_set_id, generate_uid(), [n.record for n in nodes])
        first = _encode(ds)
        offsets = _item_offsets(first)
        if len(offsets) != len(nodes):
            raise FileSetError(f"DICOMDIR encoding lost records ({len(offsets)} of {len(nodes)})")
        at = {id(node): offset for node, offset in zip(nodes, offsets)}
        for node in nodes:
            first_child = next(iter(node.children.values()), None)
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = at[id(first_child)] if first_child else 0
            _link_siblings(node.children, at)
        roots = {**self._patients, **{f"\1{uid}": node for uid, node in self._singles.items()}}
        _link_siblings(roots, at)
        top = list(roots.values())
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = at[id(top[0])] if top else 0
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = at[id(top[-1])] if top else 0
        final = _encode(ds)
        _check_layout(final, offsets, [n.record for n in nodes])
        return final


def _link_siblings(children: dict[str, _Node], at: dict[int, int]) -> None:
    """Each record points at the next record of the same directory entity (0 for the last)."""
    ordered = list(children.values())
    for node, following in zip(ordered, ordered[1:] + [None]):
        node.record.OffsetOfTheNextDirectoryRecord = at[id(following)] if following is not None else 0


def _invention(keyword: str, ds: "Dataset", record_type: str, position: int) -> str | None:
    """A stand-in for a missing Type 1 record key, as ``dcmmkdir --invent`` would make it:
    dates/times from the nearest other date/time of the instance (else an obvious
    placeholder), numbers from the position in the File-set, IDs marked as invented."""
    if keyword in _FIXED_INVENTIONS:
        return _FIXED_INVENTIONS[keyword]
    if keyword.endswith("Date"):
        return next((str(ds[k].value) for k in _DATE_SOURCES if _has(ds, k)), "19000101")
    if keyword.endswith("Time"):
        return next((str(ds[k].value) for k in _TIME_SOURCES if _has(ds, k)), "000000")
    if keyword in ("InstanceNumber", "SeriesNumber"):
        return str(position)
    if keyword == "PatientID":
        return f"DVPAT{position:06d}"
    if keyword == "StudyID":
        return f"DVSTUDY{position:06d}"
    if keyword in ("ContentLabel", "StructureSetLabel", "RTPlanLabel"):
        return "UNLABELLED"
    if keyword == "DoseSummationType":
        return "PLAN"
    if keyword == "MIMETypeOfEncapsulatedDocument":
        return "application/octet-stream"
    return None


def _keep_concept_modifiers(record: "Dataset") -> None:
    """PS3.3 F.5: an SR/KO record's Content Sequence holds only the HAS CONCEPT MOD items
    (pydicom copies the whole document tree, which can be megabytes)."""
    from pydicom.sequence import Sequence

    kept = [item for item in record.ContentSequence if item.get("RelationshipType") == _HAS_CONCEPT_MOD]
    if kept:
        record.ContentSequence = Sequence(kept)
    else:
        del record.ContentSequence


def _dicomdir_dataset(file_set_id: str, uid: str, records: list["Dataset"]) -> "Dataset":
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = file_set_id
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence(records)
    return ds


def _encode(ds: "Dataset") -> bytes:
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _read_records(encoded: bytes) -> list["Dataset"]:
    import pydicom

    return list(pydicom.dcmread(io.BytesIO(encoded)).DirectoryRecordSequence)


def _item_offsets(encoded: bytes) -> list[int]:
    """Where each Directory Record Sequence item starts, from the start of the file (the
    preamble's first byte), as pydicom's own reader finds them."""
    return [int(item.seq_item_tell) for item in _read_records(encoded)]


def _check_layout(encoded: bytes, offsets: list[int], records: list["Dataset"]) -> None:
    """The final encoding must have its items where they were measured and carry the links
    that were set; anything else would be a DICOMDIR that points into the wrong bytes."""
    read = _read_records(encoded)
    if [int(item.seq_item_tell) for item in read] != offsets:
        raise FileSetError("DICOMDIR layout changed when its offsets were filled in")
    for item, record in zip(read, records):
        for keyword in ("OffsetOfTheNextDirectoryRecord", "OffsetOfReferencedLowerLevelDirectoryEntity"):
            if item[keyword].value != record[keyword].value:
                raise FileSetError(f"DICOMDIR record at {item.seq_item_tell} has a wrong {keyword}")


__all__ = ["DicomDir", "FileSetError", "Framed", "ROOT_FOLDER", "detect_transfer_syntax", "frame_for_file_set",
           "read_header"]
