"""Where a restore drill restores to: a scratch folder (the file written, then read back from
disk and hashed: byte for byte) or a test PACS over C-STORE (stored, possibly with a warning,
or failed, as ``peers/status.py`` rules).

Both receive the original Part-10 bytes already authenticated and SHA-256-checked against
the catalog, and answer with the problem, or None when the instance arrived intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dicomvault.peers.sender import PeerLost, StoreSender

if TYPE_CHECKING:
    from dicomvault.catalog.retrieval import RetrievalItem
    from dicomvault.config import PeerSettings, Settings

log = logging.getLogger(__name__)
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
    """C-STORE to a ``[peers.NAME]`` test PACS over one association (``peers/sender.py``), the
    stored data set unchanged in its stored transfer syntax (a drill never transcodes: it proves
    the bytes). A warning status means stored (``peers/status.py``): it passes, and is logged
    with its code."""

    def __init__(self, settings: "Settings", peer: "PeerSettings", pairs: list[tuple[str, str]]) -> None:
        self.peer = peer
        self.sender = StoreSender.to_peer(settings, peer)
        try:
            self.sender.open(pairs, convert=False)
        except PeerLost as exc:
            raise TargetLost(str(exc)) from exc

    def describe(self) -> str:
        return self.sender.describe()

    def deliver(self, site: str, item: "RetrievalItem", original: bytes, dataset_offset: int) -> str | None:
        try:
            sent = self.sender.send(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid,
                                    original[dataset_offset:], convert=False)
        except PeerLost as exc:
            raise TargetLost(str(exc)) from exc
        result = sent.outcome
        if result.warning:
            log.warning("drill of site %s: %s %s", site, item.sop_instance_uid, result.detail())
        if result.stored:
            return None
        if result.status is None:
            return f"{result.describe()}; a drill sends the stored bytes unchanged"
        return f"{self.peer.name} answered C-STORE {result.describe()}"

    def close(self) -> None:
        self.sender.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
