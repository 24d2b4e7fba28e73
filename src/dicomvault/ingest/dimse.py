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

from dicomvault.archive.write import Ingestor
from dicomvault.ingest.store import c_store
from dicomvault.ingest.gate import NOT_AUTHORIZED, AccessGate
from dicomvault.ingest.iocm import RejectionNotes

log = logging.getLogger(__name__)

# Accept every storage SOP class, including private ones, in every transfer syntax offered.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# Keep the raw dataset bytes exactly as received (we never decode what we archive).
_config.STORE_RECV_CHUNKED_DATASET = False


@dataclass
class DimseServer:
    settings: DicomSettings
    ingestor: Ingestor
    server: Any = None
    commitment: Any = None  # a StorageCommitmentService (ingest/commitment.py) to answer N-ACTION
    gate: AccessGate | None = None  # who may do what (access.py)
    notes: RejectionNotes | None = None  # IOCM rejection notes (ingest/iocm.py)

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

    def _reason(self, permission: str, calling: str, address: str) -> str:
        """Why the caller may not do ``permission`` ("" when it may; the refusal is audited)."""
        return "" if self.gate is None else self.gate.decide(permission, calling, address).reason

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
        refused = self._refusal("store", event)
        if refused is not None:
            return refused
        request = event.request
        status = Dataset()
        status.Status, comment = c_store(
            self.ingestor, str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
            str(event.context.transfer_syntax), request.DataSet.getvalue(),
            source=f"dimse:{calling}@{requestor.address}", actor=f"dicom:{calling}", notes=self.notes,
            may_reject=lambda: self._reason("reject", calling, str(requestor.address)),
        )
        if comment:
            status.ErrorComment = comment[:64]
        return status

    def start(self) -> None:
        # pynetdicom ends the association over a request UID it finds invalid (over 64
        # characters); ingest/store.py judges the request's UIDs itself and answers with a
        # failure status instead. Process-wide, so only once this engine is really serving.
        _config.VALIDATORS["UI"] = lambda _value: (True, "")
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
