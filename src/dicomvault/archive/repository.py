"""The repository: sealed, content-addressed objects on a site (after restic's repository).

It joins the codec, the crypto envelope and a site, and owns the one rule that makes reads
trustworthy: an object's bytes are returned only after authentication succeeded AND the
SHA-256 of the restored original equals the one recorded at ingest.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomvault.codec import CodecError, compress, decompress, worth_compressing
from dicomvault.crypto import DecryptionError, Keyring, StudyKey, open_object, seal_object
from dicomvault.archive.keystore import KeyStore
from dicomvault.crypto.envelope import read_header
from dicomvault.crypto.keys import KeyError_
from dicomvault.dicom import split_part10
from dicomvault.sites import Site, SiteError

log = logging.getLogger(__name__)


class IntegrityError(Exception):
    """Stored bytes failed authentication, decoding or the recorded SHA-256: never use them."""


@dataclass(frozen=True)
class SavedObject:
    object_id: str
    size_stored: int
    codec: str
    written: bool  # False when an identical object already existed


class Repository:
    def __init__(self, site: Site, keyring: Keyring, keys: KeyStore, compression_level: int = 1,
                 fallbacks: "list[tuple[str, Callable[[], Site]]] | None" = None) -> None:
        self.site = site
        self.keyring = keyring
        self.keys = keys
        self.compression_level = compression_level
        # Replica sites to read from when the primary's copy is missing or damaged, opened on
        # first need: (name, opener). A damaged copy is never served; a healthy one elsewhere is.
        self.fallbacks = list(fallbacks or [])
        self._opened: dict[str, Site] = {}
        self.excluded: set[str] = set()  # quarantined sites (archive/quarantine.py): never read from
        self.fallback_reads = 0
        self._lock = threading.Lock()

    def object_id_for(self, sha256_digest: bytes, study_key: StudyKey) -> str:
        return self.keyring.object_id(sha256_digest, "" if study_key.embedded else study_key.key_id)

    def encode(self, original: bytes, transfer_syntax_uid: str) -> tuple[str, bytes]:
        """The payload to seal: zstd for raw pixel data, as is for already-compressed syntaxes.

        Separate from ``save`` so ingest can run it while the SHA-256s are computed on
        another core (both release the GIL)."""
        if worth_compressing(transfer_syntax_uid) or not transfer_syntax_uid:
            return compress(original, self.compression_level)
        return "none", original

    def save(self, study_key: StudyKey, sha256_digest: bytes, metadata: dict[str, Any], original: bytes,
             encoded: tuple[str, bytes] | None = None) -> SavedObject:
        """Compress (unless ``encoded`` is given: the result of ``encode(original, ...)``),
        seal and durably store ``original``; returns once it is on stable storage."""
        object_id = self.object_id_for(sha256_digest, study_key)
        syntax = str(metadata.get("attributes", {}).get("transfer_syntax_uid", ""))
        codec, payload = encoded if encoded is not None else self.encode(original, syntax)
        sealed = seal_object(study_key, {**metadata, "codec": codec}, payload, embed_keys=study_key.embedded)
        written = self.site.put_if_absent(object_id, sealed)
        return SavedObject(object_id, len(sealed), codec, written)

    def _data_key_for(self, blob: bytes) -> bytes:
        header, _ = read_header(blob)
        try:
            return self.keys.data_key(header)
        except KeyError_ as exc:
            raise DecryptionError(str(exc)) from exc

    def load(self, object_id: str, expected_sha256: str | None = None) -> tuple[dict[str, Any], bytes]:
        """Return (metadata, original bytes), verified; raise IntegrityError on any doubt.

        When the primary's copy is missing or fails verification, the replicas are tried in
        order (an ALERT is logged: `dicomvault verify` repairs the primary); the first copy
        that verifies is returned, so a retrieval, restore or export never gets wrong bytes
        and still succeeds while one healthy copy exists."""
        try:
            return self.open_blob(self.site.get(object_id), object_id, expected_sha256)
        except (IntegrityError, KeyError) as exc:
            if not self.fallbacks:
                raise
            first_error = exc
        self.fallback_reads += 1
        if self.fallback_reads <= 10 or self.fallback_reads % 1000 == 0:  # a refill after a rebuild reads thousands
            log.error("ALERT: primary copy of object %s is %s; reading a replica (%d such reads so far)", object_id,
                      "missing" if isinstance(first_error, KeyError) else f"damaged ({first_error})",
                      self.fallback_reads)
        for name, opener in self.fallbacks:
            if name in self.excluded:
                continue
            try:
                site = self.fallback_site(name, opener)
                return self.open_blob(site.get(object_id), object_id, expected_sha256)
            except (IntegrityError, KeyError, SiteError) as exc:
                log.error("ALERT: copy of object %s on site %s unusable too: %s", object_id, name, exc)
        raise first_error

    def sealed(self, object_id: str, skip: str | None = None, expected_sha256: str | None = None) -> bytes:
        """The sealed bytes to copy to another site: the primary's; or, when the primary lacks
        the object (a new disk being refilled after ``rebuild-index``), the first replica's
        copy (other than ``skip``) that verifies. KeyError when nobody has a good one."""
        try:
            return self.site.get(object_id)
        except KeyError:
            pass
        for name, opener in self.fallbacks:
            if name == skip or name in self.excluded:
                continue
            try:
                blob = self.fallback_site(name, opener).get(object_id)
                self.open_blob(blob, object_id, expected_sha256)
                return blob
            except (KeyError, SiteError, IntegrityError) as exc:
                log.warning("copy of object %s on site %s unusable as a source: %s", object_id, name, exc)
        raise KeyError(object_id)

    def load_dataset(self, object_id: str, expected_sha256: str | None = None) -> bytes:
        """The stored data set without its file meta (what a C-STORE carries), verified as by ``load``."""
        _meta, data = self.load(object_id, expected_sha256)
        offset, _syntax = split_part10(data)
        return data[offset:]

    def fallback_site(self, name: str, opener: "Callable[[], Site]") -> Site:
        with self._lock:
            site = self._opened.get(name)
        if site is None:
            site = opener()
            with self._lock:
                self._opened[name] = site
        return site

    def open_blob(self, blob: bytes, object_id: str = "", expected_sha256: str | None = None) -> tuple[dict[str, Any], bytes]:
        """Authenticate, decrypt and check sealed bytes already in hand (e.g. being replicated)."""
        try:
            opened = open_object(blob, data_key=self._data_key_for(blob))
            metadata = opened.metadata
            original = decompress(metadata["codec"], opened.payload, int(metadata["size_original"]))
        except (DecryptionError, CodecError, KeyError, ValueError) as exc:
            raise IntegrityError(f"object {object_id} cannot be trusted: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - e.g. a key unwrap failure from a foreign site key
            raise IntegrityError(f"object {object_id} cannot be opened: {exc}") from exc
        actual = hashlib.sha256(original).hexdigest()
        recorded = expected_sha256 or metadata.get("sha256")
        if actual != recorded or actual != metadata.get("sha256"):
            raise IntegrityError(
                f"object {object_id} decrypted but its SHA-256 {actual[:16]}... differs from the recorded "
                f"{str(recorded)[:16]}...; the stored copy is damaged"
            )
        return metadata, original
