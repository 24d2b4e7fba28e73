"""Where a restore drill restores to: a scratch folder (the file written, then read back from
disk and hashed: byte for byte) or a test PACS over C-STORE (success status or failure).

Both receive the original Part-10 bytes already authenticated and SHA-256-checked against
the catalog, and answer with the problem, or None when the instance arrived intact.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dicomvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomvault.net import pdu
from dicomvault.net.requestor import AssociationRejected, StoreRequestor

if TYPE_CHECKING:
    from dicomvault.catalog.retrieval import RetrievalItem
    from dicomvault.config import PeerSettings, Settings

_UNSAFE = re.compile(r"[^0-9A-Za-z.]")


class TargetLost(Exception):
    """The target itself failed (association lost): the site's remaining instances are not tried."""


class Target(Protocol):
    def deliver(self, site: str, item: "RetrievalItem", original: bytes, dataset_offset: int) -> str | None: ...

    def close(self) -> None: ...


class ScratchTarget:
    """``ROOT/<site>/<study>/<instance>.dcm``, private to the archive's user (plaintext images)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def deliver(self, site: str, item: "RetrievalItem", original: bytes, dataset_offset: int) -> str | None:
        folder = self.root / site / _UNSAFE.sub("_", item.study_uid)
        path = folder / f"{_UNSAFE.sub('_', item.sop_instance_uid)}.dcm"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(original)
            written = sha256_file(path)
        except OSError as exc:
            return f"cannot write the restored file {path}: {exc.strerror or exc} (the copy itself verified)"
        if written != item.sha256:
            return (f"the restored file {path} reads back with SHA-256 {written[:16]}..., not the recorded "
                    f"{item.sha256[:16]}...")
        return None

    def close(self) -> None:
        pass


class PeerTarget:
    """C-STORE to a ``[peers.NAME]`` test PACS over one association, the stored data set
    unchanged in its stored transfer syntax (a drill never transcodes: it proves the bytes)."""

    def __init__(self, settings: "Settings", peer: "PeerSettings", pairs: list[tuple[str, str]]) -> None:
        self.peer = peer
        self.requestor = StoreRequestor(peer.host, peer.port, peer.ae_title, settings.dicom.ae_title,
                                        timeout=settings.dicom.network_timeout,
                                        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                                        implementation_version=IMPLEMENTATION_VERSION_NAME)
        try:
            self.requestor.prepare(pairs)
        except (AssociationRejected, OSError, pdu.ProtocolError) as exc:
            self.requestor.close()
            raise TargetLost(f"cannot associate with {self.describe()}: {exc}") from exc

    def describe(self) -> str:
        return f"{self.peer.name} ({self.peer.ae_title}@{self.peer.host}:{self.peer.port})"

    def deliver(self, site: str, item: "RetrievalItem", original: bytes, dataset_offset: int) -> str | None:
        syntax = item.transfer_syntax_uid
        refused = self.requestor.refusal(item.sop_class_uid, syntax)
        if refused is not None:
            return (f"{self.peer.name} does not take SOP class {item.sop_class_uid} in the stored transfer syntax "
                    f"{syntax} ({refused}); a drill sends the stored bytes unchanged")
        try:
            status, comment = self.requestor.store(item.sop_class_uid, item.sop_instance_uid, syntax,
                                                   original[dataset_offset:])
        except AssociationRejected as exc:
            return str(exc)
        except (OSError, pdu.ProtocolError) as exc:
            raise TargetLost(f"lost the association with {self.describe()}: {exc}") from exc
        if status != 0x0000:
            return f"{self.peer.name} answered C-STORE status 0x{status:04X}" + (f": {comment}" if comment else "")
        return None

    def close(self) -> None:
        self.requestor.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
