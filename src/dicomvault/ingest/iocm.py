"""IHE IOCM rejection notes at the front door (both DIMSE engines, through ``store.c_store``).

A Key Object Selection document whose title is a rejection title (``dicom/iocm.py``) is
applied only for a caller whose ``[peers.NAME] permissions`` include ``reject`` (never for an
anonymous caller): otherwise it is refused with 0124H and an Error Comment, audited by the
access gate, and not stored. An accepted note is archived like every instance (byte-exact:
it is the evidence), then every instance it references is recorded as rejected
(``catalog/rejections.py``) with ``delete_after = now + [iocm] delete_after``, audited as
``reject``, before the C-STORE success is sent. A reference to an instance not (yet) in the
archive is recorded too, so it is hidden the moment it arrives.

A rejected instance sent again is stored (the archive never loses what it acknowledged, and
the sender sees success, so it does not retry forever) but stays hidden: the rejection is
keyed by its SOP Instance UID, and the deletion engine removes every version of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from dicomvault.archive.rejection import apply_rejection
from dicomvault.config import Settings
from dicomvault.dicom.iocm import KOS_SOP_CLASS, RejectionNote, RejectionNoteError, rejection_note

log = logging.getLogger(__name__)

__all__ = ["KOS_SOP_CLASS", "RejectionNote", "RejectionNoteError", "RejectionNotes"]


@dataclass
class RejectionNotes:
    catalog: Any
    delete_after_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Any) -> "RejectionNotes":
        return cls(catalog, settings.iocm.delete_after_seconds)

    @staticmethod
    def read(sop_class: str, transfer_syntax: str, dataset: Any) -> RejectionNote | None:
        """The rejection this C-STORE carries, None for anything else (other KOS titles too);
        raises ``RejectionNoteError`` for a rejection note that cannot be applied."""
        if sop_class != KOS_SOP_CLASS:
            return None
        if not isinstance(dataset, (bytes, bytearray, memoryview)):
            raise RejectionNoteError("Key Object Selection too large to be read as a rejection note")
        return rejection_note(bytes(dataset), transfer_syntax)

    def apply(self, note: RejectionNote, actor: str, source: str, now: float | None = None) -> int:
        """Record the note's rejections and audit them; how many instances became rejected."""
        now = time.time() if now is None else now
        added, stored = apply_rejection(self.catalog, note, actor=actor, source=source, received_at=now,
                                        delete_after_seconds=self.delete_after_seconds)
        log.info("rejection note %s (%s) from %s: %d instance(s) rejected (%d newly, %d in the archive)",
                 note.kos_uid, note.meaning, actor, len(note.references), added, stored)
        return added
