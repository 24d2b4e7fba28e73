"""DIMSE Query/Retrieve SCP: C-FIND, C-GET and C-MOVE answered from the archive itself.

This is what lets radiologists keep working from the backup while the PACS is down: a
viewer or the PACS queries dicomvault (Patient Root or Study Root) and retrieves from it.
The lean listener (``net/acceptor.py``) runs each request as an ``Operation`` in a worker
thread; this module decides the answers. C-FIND uses the same matching engine as QIDO-RS
(``catalog/query.py``); retrieval (``retrieve.py``) sends instances exactly as stored.
Every query and retrieval is audited (who asked, what, how many matched or were sent).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dicomvault.catalog.query import Query, QueryError, run_query
from dicomvault.net import pdu
from dicomvault.net.acceptor import OperationAbandoned
from dicomvault.serve.qr.common import (
    NOT_FILTERS,
    CANCELLED,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    IdentifierError,
    audit_operation,
    decode_identifier,
    element_text,
    encode_identifier,
    query_level,
)
from dicomvault.serve.qr.retrieve import Retriever

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.net.acceptor import Operation

log = logging.getLogger(__name__)


class QueryRetrieveService:
    """The ``on_query`` handler of the DIMSE listener."""

    def __init__(self, archive: "Archive") -> None:
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
                   if elem.tag not in NOT_FILTERS and elem.tag.group not in (0x0000, 0x0002)
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
