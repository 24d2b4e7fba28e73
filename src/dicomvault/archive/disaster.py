"""Reading an archive's copies with nothing but a site and the offline recovery key.

This is the disaster-recovery path: the hospital's server, its catalog and its site key
are gone, an off-site bucket (or NAS, or replica vault directory) and the recovery key
printed at `init` remain. Objects are self-describing (the header wraps the study key for
the recovery key; the sealed metadata holds every catalog attribute and the SHA-256 of
the original bytes), so every instance can be authenticated, decrypted, checked and
written back as the very Part-10 file that was received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomvault.codec import CodecError, decompress
from dicomvault.crypto.envelope import DecryptionError, ObjectHeader, open_object, read_header
from dicomvault.crypto.keys import KeyRecord
from dicomvault.crypto.keys import KeyError_, RecoveryKey
from dicomvault.sites import Site


@dataclass
class RecoveryReport:
    written: int = 0
    skipped: int = 0  # not in the requested study
    failed: list[tuple[str, str]] = field(default_factory=list)  # (object name, reason)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "skipped": self.skipped, "bytes": self.bytes,
                "failed": [{"object": name, "reason": reason} for name, reason in self.failed]}


def _safe(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".") or "unknown"


class RecoveryReader:
    """Opens objects with the recovery key, caching unwrapped study keys by key id.

    An object sealed before key records carries its wrapped key; any other is opened through
    its study's key record on ``site`` (the site the objects come from holds them all). A
    study deleted since has no record anywhere: its objects are reported, never opened."""

    def __init__(self, recovery: RecoveryKey, site: Site | None = None) -> None:
        self.recovery = recovery
        self.site = site
        self._keys: dict[str, bytes] = {}

    def open(self, blob: bytes) -> tuple[dict[str, Any], bytes]:
        header, _ = read_header(blob)
        key = self._keys.get(header.key_id)
        if key is None:
            key = self.recovery.unwrap(self._wrapped_for_recovery(header), header.key_id)
            self._keys[header.key_id] = key
        opened = open_object(blob, data_key=key)
        metadata = opened.metadata
        original = decompress(metadata["codec"], opened.payload, int(metadata["size_original"]))
        if hashlib.sha256(original).hexdigest() != metadata.get("sha256"):
            raise DecryptionError("decrypted bytes differ from the SHA-256 sealed with them")
        return metadata, original


    def _wrapped_for_recovery(self, header: ObjectHeader) -> bytes:
        if header.embeds_keys:
            return header.wrapped_for_recovery
        if self.site is None:
            raise DecryptionError(f"object names key {header.key_id}; its key record is needed to open it")
        try:
            return KeyRecord.from_bytes(self.site.get_key(header.key_id), header.key_id).wrapped_for_recovery
        except KeyError:
            raise DecryptionError(f"no key record {header.key_id} on {self.site.url}: the study was deleted and "
                                  "this copy shredded (or the site never received the record)") from None


def restore_from_site(site: Site, recovery: RecoveryKey, out: Path, study_uid: str | None = None,
                      progress: Callable[[], None] | None = None) -> RecoveryReport:
    """Write every (or one study's) instance held by ``site`` under ``out/study/series/``.

    Versions of one SOP Instance are all kept: the first as ``<uid>.dcm``, later ones with
    ``.v2``, ``.v3``... in order of receipt. An object that fails authentication or its
    checksum is reported, never written.
    """
    reader = RecoveryReader(recovery, site)
    report = RecoveryReport()
    found: list[tuple[float, str, dict[str, Any], bytes]] = []
    for name in site.list():
        if progress:
            progress()
        try:
            metadata, original = reader.open(site.get(name))
        except KeyError_ as exc:
            report.failed.append((name, f"the recovery key does not open it: {exc}"))
            continue
        except (DecryptionError, CodecError, KeyError, ValueError) as exc:
            report.failed.append((name, f"damaged or altered: {exc}"))
            continue
        attributes = metadata.get("attributes", {})
        if study_uid and attributes.get("study_uid") != study_uid:
            report.skipped += 1
            continue
        found.append((float(metadata.get("received_at", 0.0)), name, attributes, original))
    seen: dict[str, int] = {}
    for _received, _name, attributes, original in sorted(found, key=lambda item: item[0]):
        sop = _safe(attributes.get("sop_instance_uid", ""))
        seen[sop] = seen.get(sop, 0) + 1
        suffix = "" if seen[sop] == 1 else f".v{seen[sop]}"
        folder = out / _safe(attributes.get("study_uid", "")) / _safe(attributes.get("series_uid", ""))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sop}{suffix}.dcm").write_bytes(original)
        report.written += 1
        report.bytes += len(original)
    return report
