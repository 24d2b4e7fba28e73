"""The one path by which what leaves the archive may carry the current demographics instead of
the stored ones (``--coerce-demographics``, ``[peers.NAME] coerce_demographics``): the catalog's
patient record (kept current by HL7 ADT, ingest/adt.py) rewritten into the outgoing copy by
``dicom/coerce.py``. Each coerced instance is remembered with the stored SHA-256 and the SHA-256
of the bytes sent, for the caller's report and audit row.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from dicomvault.catalog import patients
from dicomvault.dicom.coerce import CoercionError, coerce_dataset, coerce_file

__all__ = ["CoercionError", "Coercer"]


class Coercer:
    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.coerced: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def _values(self, sop_instance_uid: str) -> dict[str, str] | None:
        with self.catalog.read() as conn:
            return patients.demographics_for_instance(conn, sop_instance_uid)

    def _note(self, sop_instance_uid: str, stored_sha256: str, sent: bytes) -> bytes:
        with self._lock:
            self.coerced.append({"sop_instance_uid": sop_instance_uid, "stored_sha256": stored_sha256,
                                 "sent_sha256": hashlib.sha256(sent).hexdigest()})
        return sent

    def dataset(self, sop_instance_uid: str, stored_sha256: str, data: bytes, transfer_syntax_uid: str) -> bytes:
        """The data set to send: coerced when the current demographics differ, else ``data``."""
        values = self._values(sop_instance_uid)
        coerced = coerce_dataset(data, transfer_syntax_uid, values) if values is not None else None
        return data if coerced is None else self._note(sop_instance_uid, stored_sha256, coerced)

    def file(self, sop_instance_uid: str, stored_sha256: str, data: bytes) -> bytes:
        """The Part-10 file to write: coerced when the current demographics differ, else ``data``."""
        values = self._values(sop_instance_uid)
        coerced = coerce_file(data, values) if values is not None else None
        return data if coerced is None else self._note(sop_instance_uid, stored_sha256, coerced)
