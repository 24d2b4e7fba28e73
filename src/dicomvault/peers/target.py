"""A ``dicom://AET@host:port`` replication target: a PACS (on-site or cloud) that gets every
object decrypted, over C-STORE.

It is NOT a site: sites hold ciphertext only, and a PACS must read what it holds. Use it only
for a destination that is itself trusted with patient data (a second PACS, a cloud PACS
under a BAA), never as the encrypted off-site copy. It cannot hand anything back, so it is
never read from, drilled, rebuilt from or counted towards storage commitment.

Each object is opened through the repository (authenticated, SHA-256 checked against its
sealed record) and its data set sent as it was received, in its stored transfer syntax
(``peers/sender.py``, one association per replication thread). A delivery counts when the
PACS answers success or a warning (``peers/status.py``); DICOM has no checksum to compare.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlparse

from dicomvault.config import ConfigError, DicomSettings, PeerSettings
from dicomvault.net.tls import client_context, pynetdicom_tls_args
from dicomvault.peers.sender import PeerLost, StoreSender

log = logging.getLogger(__name__)

_OPTIONS = {"calling_ae", "timeout", "tls", "tls_cert_file", "tls_key_file", "tls_ca_file"}


class TargetError(Exception):
    """The PACS did not take the object, or the target is misconfigured."""


class Opener(Protocol):
    """The repository's gate: sealed bytes -> (metadata, original Part-10 bytes), verified."""

    def open_blob(self, blob: bytes, object_id: str = "", expected_sha256: str | None = None) \
            -> tuple[dict[str, Any], bytes]: ...


class PacsTarget:
    """Delivers sealed objects to a PACS as plaintext C-STOREs."""

    def __init__(self, url: str, called_ae: str, host: str, port: int, repository: Opener | None,
                 calling_ae: str = "DICOMVAULT", timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl_context = ssl_context  # DIMSE over TLS (the site's tls = true); None: plain TCP
        self.called_ae, self.host, self.port = called_ae, host, port
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.repository = repository
        self._local = threading.local()
        self._senders: list[StoreSender] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, object] | None = None,
                 repository: Opener | None = None, dicom: DicomSettings | None = None) -> "PacsTarget":
        """``options``: the site table's other keys. With ``tls = true`` the PACS is reached over
        TLS (``tls_ca_file``, ``tls_cert_file``/``tls_key_file`` as for a ``[peers.NAME]``,
        defaulting to ``dicom``'s, i.e. ``[dicom]``)."""
        parsed = urlparse(url)
        options = dict(options or {})
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TargetError(f"dicom target {url}: unknown option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_OPTIONS))}")
        called = (parsed.username or "").strip()
        if parsed.scheme != "dicom" or not called or len(called) > 16 or not parsed.hostname or not parsed.port:
            raise TargetError(f"dicom target URL {url!r}: expected dicom://AETITLE@host:port")
        try:
            timeout = float(options.get("timeout", 30.0))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise TargetError(f"dicom target {url}: timeout must be a number of seconds") from exc
        tls = options.get("tls", False)
        files = {key: str(options.get(key, "")) for key in ("tls_cert_file", "tls_key_file", "tls_ca_file")}
        if not isinstance(tls, bool) or (any(files.values()) and not tls):
            raise TargetError(f"dicom target {url}: tls must be true or false (and true when tls_*_file is set)")
        peer = PeerSettings(called, called, parsed.hostname, parsed.port, tls=tls, **files)
        try:
            context = client_context(peer, dicom, where=f"dicom target {url}")
        except ConfigError as exc:
            raise TargetError(str(exc)) from exc
        return cls(url, called, parsed.hostname, parsed.port, repository, str(options.get("calling_ae", "DICOMVAULT")),
                   timeout, context)

    def _sender(self) -> StoreSender:
        """This thread's association (replication runs several threads per target)."""
        sender = getattr(self._local, "sender", None)
        if sender is None:
            sender = StoreSender(self.host, self.port, self.called_ae, self.calling_ae, self.timeout,
                                 name=f"PACS {self.called_ae}", ssl_context=self.ssl_context)
            self._local.sender = sender
            with self._lock:
                self._senders.append(sender)
        return sender

    def deliver(self, name: str, sealed: bytes) -> bool:
        """Open ``sealed`` through the SHA-256 gate and C-STORE it; True once the PACS stored it
        (a warning is logged with its code). Raises TargetError otherwise."""
        if self.repository is None:
            raise TargetError(f"{self.url}: no decryption available here (only `dicomvault serve` can send to a PACS)")
        metadata, original = self.repository.open_blob(sealed, name)
        attributes = metadata["attributes"]
        dataset = original[int(metadata.get("dataset_offset", 0)):]
        try:
            sent = self._sender().send(attributes["sop_class_uid"], attributes["sop_instance_uid"],
                                       attributes["transfer_syntax_uid"], dataset, convert=False)
        except PeerLost as exc:
            raise TargetError(f"cannot reach PACS {self.called_ae}@{self.host}:{self.port}: {exc}") from exc
        result = sent.outcome
        if not result.stored:
            raise TargetError(f"PACS {self.called_ae} refused {attributes['sop_instance_uid']}: {result.describe()}")
        if result.warning:
            log.warning("PACS %s took %s (object %s) %s", self.called_ae, attributes["sop_instance_uid"], name,
                        result.detail())
        return True

    def close(self) -> None:
        with self._lock:
            senders, self._senders = self._senders, []
        for sender in senders:
            sender.close()

    def health(self) -> dict[str, object]:
        """C-ECHO the PACS."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        info: dict[str, object] = {"url": self.url, "kind": "dicom", "sees_plaintext": True}
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = min(self.timeout, 10.0)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae,
                                 tls_args=pynetdicom_tls_args(self.ssl_context, self.host))
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
