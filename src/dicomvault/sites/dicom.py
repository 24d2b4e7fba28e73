"""A ``dicom://AET@host:port`` target: C-STORE to a PACS (on-site or cloud), decrypting on the way.

This is the one kind of site that SEES PLAINTEXT: a PACS must be able to read what it holds.
Use it only for a destination that is itself trusted with patient data (a second PACS, a
cloud PACS under a BAA), never as the encrypted off-site copy. It is write-only: a PACS
cannot hand back the sealed object, so ``get``/``list`` hold nothing; a copy counts as
verified when the PACS answers the C-STORE with success (DICOM has no checksum to compare).
Each object's dataset is sent exactly as it was received, in its stored transfer syntax.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from .base import Site, SiteError

Opener = Callable[[bytes], tuple[dict[str, Any], bytes]]


class DicomSite(Site):
    sees_plaintext = True

    def __init__(self, url: str, called_ae: str, host: str, port: int, calling_ae: str = "DICOMVAULT",
                 timeout: float = 30.0, opener: Opener | None = None) -> None:
        self.url = url
        self.called_ae, self.host, self.port = called_ae, host, port
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.opener = opener
        self._local = threading.local()
        self._sent: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None, opener: Opener | None = None) -> "DicomSite":
        parsed = urlparse(url)
        options = dict(options or {})
        unknown = set(options) - {"calling_ae", "timeout"}
        if unknown:
            raise SiteError(f"dicom site {url}: unknown option(s) {', '.join(sorted(unknown))}; known: calling_ae, timeout")
        called = (parsed.username or "").strip()
        if not called or len(called) > 16 or not parsed.hostname or not parsed.port:
            raise SiteError(f"dicom site URL {url!r}: expected dicom://AETITLE@host:port")
        try:
            timeout = float(options.get("timeout", 30.0))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise SiteError(f"dicom site {url}: timeout must be a number of seconds") from exc
        return cls(url, called, parsed.hostname, parsed.port, str(options.get("calling_ae", "DICOMVAULT")),
                   timeout, opener)

    def _requestor(self) -> Any:
        requestor = getattr(self._local, "requestor", None)
        if requestor is None:
            from dicomvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
            from dicomvault.net.requestor import StoreRequestor

            requestor = StoreRequestor(self.host, self.port, self.called_ae, self.calling_ae, self.timeout,
                                       IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
            self._local.requestor = requestor
        return requestor

    def put_if_absent(self, name: str, data: bytes) -> bool:
        from dicomvault.net.requestor import AssociationRejected

        if self.opener is None:
            raise SiteError(f"{self.url}: no decryption available here (only `dicomvault serve` can send to a PACS)")
        metadata, original = self.opener(data)
        attributes = metadata["attributes"]
        dataset = original[int(metadata.get("dataset_offset", 0)):]
        try:
            status, comment = self._requestor().store(attributes["sop_class_uid"], attributes["sop_instance_uid"],
                                                      attributes["transfer_syntax_uid"], dataset)
        except AssociationRejected as exc:
            raise SiteError(str(exc)) from exc
        except OSError as exc:
            raise SiteError(f"cannot reach PACS {self.called_ae}@{self.host}:{self.port}: {exc}") from exc
        if status != 0x0000 and not 0xB000 <= status <= 0xBFFF:  # warnings still mean stored
            raise SiteError(f"PACS {self.called_ae} refused {attributes['sop_instance_uid']}: status 0x{status:04X}"
                            + (f" ({comment})" if comment else ""))
        with self._lock:
            self._sent[name] = hashlib.sha256(data).hexdigest()
        return True

    def checksum_sha256(self, name: str) -> str | None:
        """The PACS acknowledged the C-STORE: vouch for exactly what was sent (nothing else)."""
        with self._lock:
            return self._sent.pop(name, None)

    def get(self, name: str) -> bytes:
        raise KeyError(name)  # write-only: a PACS does not keep our sealed objects

    def stat(self, name: str) -> int | None:
        return None

    def list(self) -> Iterator[str]:
        return iter(())

    def delete(self, name: str) -> None:
        raise SiteError(f"{self.url}: deleting from a PACS is done in the PACS, not by dicomvault")

    def health(self) -> dict[str, object]:
        """C-ECHO the PACS."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        info: dict[str, object] = {"url": self.url, "kind": "dicom", "sees_plaintext": True}
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = min(self.timeout, 10.0)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        except Exception as exc:  # noqa: BLE001
            return {**info, "ok": False, "error": f"cannot reach PACS {self.called_ae}@{self.host}:{self.port}: {exc}"}
        if not assoc.is_established:
            return {**info, "ok": False,
                    "error": f"PACS {self.called_ae}@{self.host}:{self.port} refused the association (is our AE "
                             f"{self.calling_ae} known to it?)"}
        try:
            status = assoc.send_c_echo()
            ok = bool(status) and status.Status == 0
        finally:
            assoc.release()
        return {**info, "ok": ok, **({} if ok else {"error": "C-ECHO failed"})}
