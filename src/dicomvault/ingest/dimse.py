"""The DIMSE receiver: C-ECHO and C-STORE for every storage SOP class and transfer syntax.

We accept whatever the sender proposes (pynetdicom's unrestricted storage service) and never
transcode: the dataset bytes from the wire are wrapped in a deterministic Part-10 header and
stored as they are. A C-STORE success is returned only after ``Ingestor.ingest`` committed.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomvault.config import DicomSettings
from dicomvault.dicom import build_part10

from dicomvault.archive.write import IngestRejected, Ingestor
from dicomvault.ingest.gate import NOT_AUTHORIZED, AccessGate

log = logging.getLogger(__name__)

# Accept every storage SOP class, including private ones, in every transfer syntax offered.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# Keep the raw dataset bytes exactly as received (we never decode what we archive).
_config.STORE_RECV_CHUNKED_DATASET = False

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


@dataclass
class DimseServer:
    settings: DicomSettings
    ingestor: Ingestor
    server: Any = None
    commitment: Any = None  # a StorageCommitmentService (ingest/commitment.py) to answer N-ACTION
    gate: AccessGate | None = None  # who may do what (access.py)

    def _refusal(self, permission: str, event: evt.Event) -> Dataset | None:
        """A 0124H status naming why, or None when the caller may do ``permission``."""
        if self.gate is None:
            return None
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip() if isinstance(requestor.ae_title, str) else str(requestor.ae_title)
        decision = self.gate.decide(permission, calling, str(requestor.address))
        if decision.allowed:
            return None
        status = Dataset()
        status.Status = NOT_AUTHORIZED
        status.ErrorComment = decision.reason[:64]
        return status

    def _on_n_action(self, event: evt.Event) -> Any:
        refused = self._refusal("commit", event)
        return (refused, None) if refused is not None else self.commitment.on_n_action(event)

    def _on_conn_open(self, event: evt.Event) -> None:
        """Disable Nagle: small C-STORE exchanges otherwise stall ~40 ms on delayed ACKs."""
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> Any:
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip() if isinstance(requestor.ae_title, str) else str(requestor.ae_title)
        source = f"dimse:{calling}@{requestor.address}"
        refused = self._refusal("store", event)
        if refused is not None:
            return refused
        request = event.request
        dataset_bytes = request.DataSet.getvalue()
        transfer_syntax = str(event.context.transfer_syntax)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        status = Dataset()
        try:
            part10 = build_part10(sop_class, sop_instance, transfer_syntax, dataset_bytes)
            self.ingestor.ingest(part10, source=source, actor=f"dicom:{calling}", transfer_syntax=transfer_syntax,
                                 wait_for_index=False)  # durable now; the catalog row follows (group commit)
        except IngestRejected as exc:
            log.warning("C-STORE %s from %s refused: %s", sop_instance, source, exc.reason)
            status.Status = STATUS_OUT_OF_RESOURCES if exc.kind == "storage" else STATUS_CANNOT_UNDERSTAND
            status.ErrorComment = exc.reason[:64]
            return status
        except Exception as exc:  # noqa: BLE001 - never let one bad instance kill the association
            log.exception("C-STORE %s from %s failed", sop_instance, source)
            status.Status = STATUS_PROCESSING_FAILURE
            status.ErrorComment = f"internal error: {type(exc).__name__}"[:64]
            return status
        status.Status = 0x0000
        return status

    def start(self) -> None:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.network_timeout = self.settings.network_timeout
        ae.dimse_timeout = self.settings.network_timeout
        ae.maximum_pdu_size = 0  # no limit on what we receive
        ae.add_supported_context(Verification)
        if self.settings.allowed_calling_aets:
            ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        # --- Storage Commitment Push Model SCP (ingest/commitment.py) ---
        if self.commitment is not None:
            from dicomvault.ingest.commitment import SOP_CLASS_UID as STORAGE_COMMITMENT

            # Default roles (the requester is the SCU); reports go out on associations we open.
            ae.add_supported_context(STORAGE_COMMITMENT)
            handlers.append((evt.EVT_N_ACTION, self._on_n_action))
        # --- end Storage Commitment ---
        self.server = ae.start_server((self.settings.bind, self.settings.port), block=False, evt_handlers=handlers)
        log.info("DIMSE listening as %s on %s:%d", self.settings.ae_title, self.settings.bind, self.settings.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
