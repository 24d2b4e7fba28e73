"""One C-STORE into the archive, the same for both DIMSE engines (``listener.py``, ``dimse.py``).

The request is judged before its data set: its Affected SOP Class/Instance UIDs become the
archived file's meta, so they must be valid UIDs (PS3.5 9.1) and present, and the data set
must carry the same ones (``parse_part10``'s ``affected`` check). Every refusal is a status
with an Error Comment (at most 64 characters, the reason first) and stores nothing; the
association goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dicomvault.access import NOT_AUTHORIZED
from dicomvault.dicom import build_part10
from dicomvault.dicom.part10 import uid_problem
from dicomvault.net import spool

from dicomvault.archive.write import IngestRejected, Ingestor
from dicomvault.ingest.iocm import RejectionNoteError, RejectionNotes

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # "Data Set does not match SOP Class" (PS3.4 B.2.3)
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
_STATUS_OF_KIND = {"storage": STATUS_OUT_OF_RESOURCES, "mismatch": STATUS_DATASET_MISMATCH}


def request_problem(sop_class: str, sop_instance: str) -> str:
    """Why a C-STORE request's Affected SOP Class/Instance UIDs cannot be archived, or ""."""
    for label, value in (("Affected SOP Instance UID", sop_instance), ("Affected SOP Class UID", sop_class)):
        if not value:
            return f"the request has no {label}"
        problem = uid_problem(value)
        if problem:
            return f"invalid {label}: {problem}"
    return ""


def c_store(ingestor: Ingestor, sop_class: str, sop_instance: str, transfer_syntax: str, dataset: bytes,
            source: str, actor: str, notes: RejectionNotes | None = None,
            may_reject: Callable[[], str] | None = None) -> tuple[int, str]:
    """(DIMSE status, Error Comment) for one C-STORE; success only once the object is durable.

    With ``notes``, an IOCM rejection note (ingest/iocm.py) is applied once it is durable,
    and refused with 0124H unless ``may_reject()`` (the refusal's reason, "" when allowed, the
    refusal already audited) allows it."""
    part10: bytes | spool.SpooledDataset = b""
    note = None
    try:
        problem = request_problem(sop_class, sop_instance)
        if problem:
            raise ingestor.refuse(problem, source, actor)
        if notes is not None:
            try:
                note = notes.read(sop_class, transfer_syntax, dataset)
            except RejectionNoteError as exc:
                raise ingestor.refuse(str(exc), source, actor) from None
            refusal = may_reject() if note is not None and may_reject is not None else ""
            if refusal:
                log.warning("rejection note %r from %s refused: %s", sop_instance[:80], source, refusal)
                return NOT_AUTHORIZED, refusal
        if isinstance(dataset, spool.SpooledDataset):  # large: wrapped on disk, not in memory
            part10 = dataset.with_prefix(build_part10(sop_class, sop_instance, transfer_syntax, b""))
        else:
            part10 = build_part10(sop_class, sop_instance, transfer_syntax, dataset)
        ingestor.ingest(part10, source=source, actor=actor, transfer_syntax=transfer_syntax,
                        wait_for_index=False,  # durable now; the catalog row follows (group commit)
                        affected=(sop_class, sop_instance), rejection_note=note is not None)
        if note is not None and notes is not None:
            notes.apply(note, actor, source)  # before the success: acknowledged means applied
    except IngestRejected as exc:
        log.warning("C-STORE %r from %s refused: %s", sop_instance[:80], source, exc.reason)
        return _STATUS_OF_KIND.get(exc.kind, STATUS_CANNOT_UNDERSTAND), exc.reason
    except Exception as exc:  # noqa: BLE001 - never let one bad instance kill the association
        log.exception("C-STORE %r from %s failed", sop_instance[:80], source)
        return STATUS_PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"
    finally:
        spool.release(part10)
    return STATUS_SUCCESS, ""
