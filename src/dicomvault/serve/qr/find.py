"""DIMSE Query/Retrieve SCP: C-FIND, C-GET and C-MOVE answered from the archive itself.

This is what lets radiologists keep working from the backup while the PACS is down: a
viewer or the PACS queries dicomvault (Patient Root or Study Root) and retrieves from it.
The lean listener (``net/acceptor.py``) runs each request as an ``Operation`` in a worker
thread; this module decides the answers. C-FIND uses the same matching engine as QIDO-RS
(``catalog/query.py``); retrieval (``qr_retrieve.py``) sends instances exactly as stored.
Every query and retrieval is audited (who asked, what, how many matched or were sent).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog.query import LEVELS, Query, QueryError, run_query
from dicomvault.net import pdu
from dicomvault.net.acceptor import OperationAbandoned

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomvault.archive.core import Archive
    from dicomvault.net.acceptor import Operation

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700

_NOT_FILTERS = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level


class IdentifierError(Exception):
    """The identifier cannot be used as sent: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_identifier(data: bytes, transfer_syntax: str) -> "Dataset":
    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(io.BytesIO(data), is_implicit_VR=transfer_syntax == "1.2.840.10008.1.2",
                          is_little_endian=True)
        for _elem in ds:  # decode every element now, so a malformed one fails here
            pass
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on malformed data
        raise IdentifierError(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}") from exc
    return ds


def encode_identifier(ds: "Dataset", transfer_syntax: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax == "1.2.840.10008.1.2"
    write_dataset(out, ds)
    return out.getvalue()


def query_level(ds: "Dataset", model: str) -> str:
    """The Query/Retrieve Level, checked against the information model (PS3.4 C.3)."""
    level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, "identifier has no Query/Retrieve Level (0008,0052)")
    if level not in LEVELS:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, f"unknown Query/Retrieve Level {level!r}")
    if model == "STUDY" and level == "PATIENT":
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, "Study Root has no PATIENT level")
    return level


def element_text(elem: Any) -> str:
    """An element's value as DICOM string matching text (multiple values joined by ``\\``)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    return str(value)


def audit_operation(catalog: Any, op: "Operation", action: str, subject: str, outcome: str,
                    detail: dict[str, Any]) -> None:
    """One audit row for a query or retrieval, by the calling AE; never fails the answer."""
    try:
        with catalog.write() as conn:
            append(conn, AuditEvent(actor=f"dicom:{op.assoc.calling_ae}", action=action, subject=subject[:256],
                                    outcome=outcome, detail={"address": op.assoc.address, **detail}))
    except Exception:  # noqa: BLE001 - never fail the answer over the audit row; but say so loudly
        log.exception("ALERT: could not audit %s by %s", action, op.assoc.calling_ae)


class QueryRetrieveService:
    """The ``on_query`` handler of the DIMSE listener."""

    def __init__(self, archive: "Archive") -> None:
        from dicomvault.serve.qr.retrieve import Retriever

        self.archive = archive
        self.settings = archive.settings
        self.retriever = Retriever(archive)

    def __call__(self, op: "Operation") -> None:
        if op.kind == pdu.C_FIND_RQ:
            self.find(op)
        else:
            self.retriever.retrieve(op)

    def audit(self, op: "Operation", action: str, subject: str, outcome: str, detail: dict[str, Any]) -> None:
        audit_operation(self.archive.catalog, op, action, subject, outcome, detail)

    # --- C-FIND -------------------------------------------------------------------------

    def find(self, op: "Operation") -> None:
        from pydicom.dataelem import DataElement
        from pydicom.dataset import Dataset

        try:
            request = decode_identifier(op.identifier, op.transfer_syntax)
            level = query_level(request, op.model)
        except IdentifierError as exc:
            log.warning("C-FIND from %s refused (0x%04X): %s", op.assoc.calling_ae, exc.status, exc)
            op.respond(exc.status, comment=str(exc))
            self.audit(op, "query", "", "refused", {"reason": str(exc)})
            return
        filters = {elem.keyword: element_text(elem) for elem in request
                   if elem.tag not in _NOT_FILTERS and elem.tag.group not in (0x0000, 0x0002)
                   and elem.keyword and elem.VR != "SQ"}
        query = Query(level=level, filters=filters, root=op.model,
                      fuzzy_person_names=self.settings.dicom.case_insensitive_names)
        requested = [elem for elem in request if elem.tag.group not in (0x0000, 0x0002)]
        matches = 0
        outcome = "success"
        rows: Any = iter(())
        try:
            rows = run_query(self.archive.catalog, query)  # validates first: QueryError before any row
            for row in rows:
                if op.cancelled.is_set():
                    op.respond(CANCELLED)
                    outcome = "cancelled"
                    break
                answer = Dataset()
                non_ascii = False
                for elem in requested:
                    if elem.tag == 0x00080005:
                        continue
                    value: Any = elem.value
                    if elem.keyword in row:
                        value = row[elem.keyword]
                    elif elem.keyword == "RetrieveAETitle":
                        value = self.settings.dicom.ae_title
                    elif elem.keyword == "InstanceAvailability":
                        value = "ONLINE"
                    elif elem.VR == "SQ":
                        value = []
                    if isinstance(value, str) and not value.isascii():
                        non_ascii = True
                    answer.add(DataElement(elem.tag, elem.VR, value if value != "" else None))
                if non_ascii:
                    answer.SpecificCharacterSet = "ISO_IR 192"
                elif "SpecificCharacterSet" in request:
                    answer.SpecificCharacterSet = request.SpecificCharacterSet
                op.respond(PENDING, encode_identifier(answer, op.transfer_syntax))
                matches += 1
            else:
                op.respond(SUCCESS)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", op.assoc.calling_ae, exc)
            op.respond(UNABLE_TO_PROCESS, comment=str(exc))
            outcome = "refused"
        except OperationAbandoned:
            outcome = "abandoned"
            raise
        finally:
            if hasattr(rows, "close"):
                rows.close()  # release the catalog snapshot at once when stopping early
            self.audit(op, "query", level, outcome,
                       {"model": op.model, "filters": {k: v for k, v in filters.items() if v}, "matches": matches})
