"""What a replicator copies to: a ``CopyTarget``. Two kinds satisfy it.

- ``SiteTarget``: a ciphertext site (``sites/``). The sealed object is stored as it is, then
  verified by the checksum the site computed on arrival or by reading it back.
- ``peers.target.PacsTarget``: a ``dicom://`` PACS. It is not a site: it opens the object
  through the repository's SHA-256 gate and C-STOREs the plaintext; the PACS's success or
  warning status is the only proof it can give.

The replicator needs nothing else, so it never asks which kind it holds; the places that
must (plaintext warning, status) ask by type: ``isinstance(target, SiteTarget)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dicomvault.crypto.envelope import read_header

from dicomvault.sites import Site, SiteError, open_site

if TYPE_CHECKING:
    from dicomvault.config import ReplicaSiteSettings


class CopyTarget(Protocol):
    url: str

    def deliver(self, name: str, sealed: bytes) -> bool:
        """Hand over one sealed object and prove it arrived; True if it was new there.
        Raises when it was not delivered (the replicator retries)."""

    def health(self) -> dict[str, object]:
        """``{"ok": bool, "error": ...}``: does the target answer at all (circuit breaker)."""

    def close(self) -> None:
        """Let go of connections (replication stopping)."""


class VerificationFailed(SiteError):
    """What the site holds is not what was sent."""


def verify_copy(site: Site, name: str, blob: bytes) -> str:
    """Prove the site holds exactly ``blob``; returns how it was checked."""
    expected = hashlib.sha256(blob).hexdigest()
    remote = site.checksum_sha256(name)  # None: the site cannot vouch for it, read it back
    if remote is not None:
        if remote != expected:
            raise VerificationFailed(f"checksum mismatch on {site.url}: site reports {remote[:16]}..., sent {expected[:16]}...")
        return "checksum"
    try:
        held = site.get(name)
    except KeyError as exc:
        raise VerificationFailed(f"object {name} is missing on {site.url} right after upload") from exc
    if hashlib.sha256(held).hexdigest() != expected:
        raise VerificationFailed(f"read-back of {name} from {site.url} differs from what was sent")
    return "read-back"


class SiteTarget:
    """A ciphertext site as a copy target: write-once put, flush, verify, release the intent.

    An object that names its key id only goes after its study's key record: a site never
    holds a copy it could not be read from with the recovery key alone (promise 3)."""

    def __init__(self, site: Site, key_record: Callable[[str], bytes | None] | None = None) -> None:
        self.site = site
        self.url = site.url
        self.key_record = key_record  # KeyStore.record: the record to place, from the catalog
        self._placed: set[str] = set()  # key ids whose record this target put (this process)

    def _place_key_record(self, name: str, sealed: bytes) -> None:
        header, _ = read_header(sealed)
        if header.embeds_keys or header.key_id in self._placed:
            return
        record = self.key_record(header.key_id) if self.key_record is not None else None
        if record is None:
            raise SiteError(f"object {name} needs key record {header.key_id}, which the catalog does not hold "
                            "(its study was deleted?): the copy is not made")
        self.site.put_key(header.key_id, record)
        if len(self._placed) > 100_000:
            self._placed.clear()
        self._placed.add(header.key_id)

    def deliver(self, name: str, sealed: bytes) -> bool:
        self._place_key_record(name, sealed)
        written = self.site.put_if_absent(name, sealed)
        self.site.flush()
        verify_copy(self.site, name, sealed)
        self.site.release_intents([name])
        return written

    def health(self) -> dict[str, object]:
        return self.site.health()

    def close(self) -> None:
        pass  # the site outlives its replicator (the archive may read it)


def open_target(replica: "ReplicaSiteSettings", repository: Any = None, dicom: Any = None) -> CopyTarget:
    """The copy target for a configured ``[sites.NAME]``. ``repository`` (the archive's
    ``Repository``) is needed only by a ``dicom://`` PACS, which must decrypt to send;
    ``dicom`` (``[dicom]``) gives its TLS defaults."""
    if replica.is_pacs:
        from dicomvault.peers.target import PacsTarget

        return PacsTarget.from_url(replica.url, replica.option_map, repository, dicom)
    keys = getattr(repository, "keys", None)
    return SiteTarget(open_site(replica.url, replica.option_map), keys.record if keys is not None else None)
