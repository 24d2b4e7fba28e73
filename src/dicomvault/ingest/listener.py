"""The archive's DICOM front door on the lean listener (``net/acceptor.py``).

Maps what arrives to the archive: C-STORE into the ingest pipeline (acknowledged once the
object is durable), N-ACTION (Storage Commitment) into the commitment service, and
C-FIND/C-GET/C-MOVE to the query/retrieve service (``serve/qr/find.py``) handed in by ``serve``. The
statuses and Error Comments are the same as the pynetdicom server's (``dimse.py``), which
stays available as ``[dicom] engine = "pynetdicom"``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomvault.config import DicomSettings
from dicomvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomvault.net import pdu
from dicomvault.net.acceptor import Association, DicomListener, Operation

from dicomvault.archive.write import Ingestor
from dicomvault.ingest.store import c_store
from dicomvault.ingest.gate import NOT_AUTHORIZED, AccessGate
from dicomvault.ingest.iocm import RejectionNotes

log = logging.getLogger(__name__)


@dataclass
class FastDimseServer:
    settings: DicomSettings
    ingestor: Ingestor
    commitment: Any = None  # StorageCommitmentService, when serving N-ACTION
    query_retrieve: Any = None  # serve.qr.QueryRetrieveService, when serving C-FIND/C-GET/C-MOVE
    gate: AccessGate | None = None  # who may do what (access.py); None only in unit tests of the wire
    listener: DicomListener | None = None
    spool_dir: Path | None = None  # large incoming data sets wait here (inside the data directory)
    notes: RejectionNotes | None = None  # IOCM rejection notes (ingest/iocm.py)

    def _refused(self, assoc: Association, permission: str) -> str:
        """The refusal's reason, or "" when ``assoc``'s caller may do ``permission``."""
        if self.gate is None:
            return ""
        decision = self.gate.decide(permission, assoc.calling_ae, assoc.address, assoc.tls_subject)
        return "" if decision.allowed else decision.reason

    def store(self, assoc: Association, sop_class: str, sop_instance: str, transfer_syntax: str,
              dataset: bytes) -> tuple[int, str]:
        # The listener asked ``authorize`` before the data set arrived; without it (a bare
        # listener in tests of the wire) every caller may store.
        return c_store(self.ingestor, sop_class, sop_instance, transfer_syntax, dataset,
                       source=f"dimse:{assoc.calling_ae}@{assoc.address}", actor=f"dicom:{assoc.calling_ae}",
                       notes=self.notes, may_reject=lambda: self._refused(assoc, "reject"))

    def action(self, assoc: Association, command: dict[int, bytes], dataset: bytes | None,
               syntax: str) -> tuple[int, str]:
        from dicomvault.ingest.commitment import STATUS_PROCESSING_FAILURE as FAILURE, CommitmentRefused, parse_request

        action_type = pdu.command_us(command, pdu.TAG_ACTION_TYPE)
        requested_class = pdu.command_uid(command, pdu.TAG_REQUESTED_SOP_CLASS)
        requested_instance = pdu.command_uid(command, pdu.TAG_REQUESTED_SOP_INSTANCE)
        address = f"{assoc.address}:{assoc.port}"
        refusal = self._refused(assoc, "commit")
        if refusal:
            return NOT_AUTHORIZED, refusal
        try:
            request = parse_request(action_type, requested_class, requested_instance,
                                    lambda: _decode(dataset, syntax) if dataset else None)
            self.commitment.submit(request, assoc.calling_ae, assoc.called_ae, address)
        except CommitmentRefused as exc:
            log.warning("storage commitment N-ACTION from %s@%s refused (0x%04X): %s", assoc.calling_ae, address,
                        exc.status, exc.comment)
            self.commitment._audit_refusal(assoc.calling_ae, address, exc)
            return exc.status, exc.comment
        except Exception as exc:  # noqa: BLE001 - answer, do not kill the association
            log.exception("storage commitment N-ACTION from %s failed", address)
            return FAILURE, f"internal error: {type(exc).__name__}"
        return 0x0000, ""

    def query(self, op: Operation) -> None:
        """C-FIND, C-GET or C-MOVE: refused with 0124H unless the caller has the permission."""
        permission = {pdu.C_FIND_RQ: "find", pdu.C_GET_RQ: "get", pdu.C_MOVE_RQ: "move"}.get(op.kind, "find")
        refusal = self._refused(op.assoc, permission)
        if refusal:
            op.respond(NOT_AUTHORIZED, comment=refusal)
            return
        self.query_retrieve(op)

    def start(self) -> None:
        self.listener = DicomListener(
            self.settings, self.store, self.action if self.commitment is not None else None,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version=IMPLEMENTATION_VERSION_NAME,
            on_query=self.query if self.query_retrieve is not None else None, spool_dir=self.spool_dir,
            on_refusal=self.gate.connection_refused if self.gate is not None else None,
            authorize=self._refused if self.gate is not None else None,
        )
        self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


def _decode(dataset: bytes, transfer_syntax: str) -> Any:
    """The N-ACTION's Action Information (small; pydicom is fine here)."""
    from pydicom.filereader import read_dataset

    implicit = transfer_syntax == "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    return read_dataset(io.BytesIO(dataset), is_implicit_VR=implicit, is_little_endian=little)


