"""IHE IOCM rejection notes: a Key Object Selection document (KOS) whose Concept Name Code is one
of the rejection titles of PS3.16 CID 7011 rejects the instances it references.

``rejection_note`` reads a KOS data set (as received, in its transfer syntax) and returns what
it rejects, or None when the KOS has another title (an ordinary key-image note).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
# DCM codes of the rejection titles (PS3.16 CID 7011 "Rejected for ...", IHE IOCM).
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


class RejectionNoteError(ValueError):
    """A KOS with a rejection title that cannot be applied: the message says why."""


@dataclass(frozen=True)
class RejectionNote:
    kos_uid: str
    study_uid: str  # where the note itself lives
    series_uid: str
    code: str  # one of REJECTION_TITLES
    meaning: str
    references: tuple[tuple[str, str, str], ...]  # (study, series, SOP instance UID) rejected


def refusal_elsewhere(dataset: bytes, transfer_syntax: str) -> str:
    """Why a KOS arriving by a door without a ``reject`` right (STOW-RS, import, a C-STORE
    from a caller without it) is refused: "" when it is not a rejection note."""
    try:
        note = rejection_note(dataset, transfer_syntax)
    except RejectionNoteError as exc:
        return str(exc)
    if note is None:
        return ""
    return ("rejection note (IOCM) refused: applied only when a [peers] entry with the 'reject' permission "
            "sends it over DICOM; not stored")


def _read(dataset: bytes, transfer_syntax: str):  # noqa: ANN202 - a pydicom Dataset
    from pydicom.filereader import read_dataset

    implicit = transfer_syntax == "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    if transfer_syntax == "1.2.840.10008.1.2.1.99":  # deflated explicit VR little endian
        import zlib

        dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(dataset), is_implicit_VR=implicit, is_little_endian=little)


def rejection_note(dataset: bytes, transfer_syntax: str) -> RejectionNote | None:
    """What a KOS data set rejects, None when its title is not a rejection title; raises
    ``RejectionNoteError`` for a rejection note that cannot be read or references nothing."""
    try:
        ds = _read(bytes(dataset), transfer_syntax)
        names = ds.get("ConceptNameCodeSequence") or []
        code = names[0] if len(names) else None
        if code is None or str(code.get("CodingSchemeDesignator", "")).strip() != "DCM":
            return None
        value = str(code.get("CodeValue", "")).strip()
        if value not in REJECTION_TITLES:
            return None
        references: list[tuple[str, str, str]] = []
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
            for series in study.get("ReferencedSeriesSequence") or []:
                for item in series.get("ReferencedSOPSequence") or []:
                    sop = str(item.get("ReferencedSOPInstanceUID", "")).strip()
                    if sop:
                        references.append((str(study.get("StudyInstanceUID", "")).strip(),
                                           str(series.get("SeriesInstanceUID", "")).strip(), sop))
        kos_uid = str(ds.get("SOPInstanceUID", "")).strip()
        where = (str(ds.get("StudyInstanceUID", "")).strip(), str(ds.get("SeriesInstanceUID", "")).strip())
    except Exception as exc:  # noqa: BLE001 - any unreadable note is refused with the reason
        raise RejectionNoteError(f"rejection note cannot be read: {type(exc).__name__}: {exc}") from exc
    if not references:
        raise RejectionNoteError("rejection note references no instance (Current Requested Procedure Evidence "
                                 "Sequence is empty)")
    if any(len(sop) > 64 for _st, _se, sop in references):
        raise RejectionNoteError("rejection note references a SOP Instance UID over 64 characters")
    meaning = str(code.get("CodeMeaning", "")).strip() or REJECTION_TITLES[value]
    return RejectionNote(kos_uid, where[0], where[1], value, meaning, tuple(dict.fromkeys(references)))
