"""What C-FIND and the retrievals share: statuses, identifier coding, the Q/R level, audit rows."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog.query import LEVELS

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomvault.net.acceptor import Operation

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700

NOT_FILTERS = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level


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
