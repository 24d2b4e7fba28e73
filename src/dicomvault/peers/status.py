"""What a C-STORE response means: the ONE rule every sender uses (restore, export, drill,
C-MOVE/C-GET sub-operations, the ``dicom://`` replication target).

PS3.7 Annex C and PS3.4 Annex B.2.3 define the classes; we map them to three outcomes:

=====================  ===============================  =========================================
Status                 Class                            Outcome
=====================  ===============================  =========================================
0000                   Success                          STORED
0001, 0107, 0116,      Warning (PS3.7 C.4.2; B000       STORED_WITH_WARNING: the instance IS
B000-BFFF              coercion, B006 elements          stored; the code and Error Comment are
                       discarded, B007 SOP class        kept with it
                       mismatch)
A700-A7FF              Refused: out of resources        FAILED
A900-A9FF              Error: data set does not         FAILED
                       match SOP class
C000-CFFF              Error: cannot understand         FAILED
0122 / 0124            SOP class not supported /        FAILED
                       not authorised
0210, 0211, 0212 ...   Other failures (duplicate        FAILED
                       invocation, unrecognised
                       operation, mistyped argument)
FF00, FF01, FE00       Pending / cancel: not a valid    FAILED
                       C-STORE answer
(no Status element)    Protocol error                   FAILED, status None: never success
=====================  ===============================  =========================================

Everything not listed as success or warning is a failure: an unknown code must never be
taken for "stored".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

WARNING_CODES = frozenset({0x0001, 0x0107, 0x0116})
NO_STATUS = "protocol error: the C-STORE response carried no Status element"

_MEANINGS: tuple[tuple[int, int, str], ...] = (  # (first, last, meaning) for a receiver giving no comment
    (0x0000, 0x0000, "success"),
    (0x0001, 0x0001, "warning"),
    (0x0107, 0x0107, "warning: attribute list error"),
    (0x0116, 0x0116, "warning: attribute value out of range"),
    (0xB000, 0xB000, "warning: coercion of data elements"),
    (0xB006, 0xB006, "warning: elements discarded"),
    (0xB007, 0xB007, "warning: data set does not match SOP class"),
    (0xB001, 0xBFFF, "warning"),
    (0xA700, 0xA7FF, "refused: out of resources"),
    (0xA900, 0xA9FF, "error: data set does not match SOP class"),
    (0xC000, 0xCFFF, "error: cannot understand"),
    (0x0122, 0x0122, "refused: SOP class not supported"),
    (0x0124, 0x0124, "refused: not authorized"),
    (0x0110, 0x0110, "processing failure"),
    (0x0117, 0x0117, "invalid object instance"),
    (0x0210, 0x0210, "duplicate invocation"),
    (0x0211, 0x0211, "unrecognized operation"),
    (0x0212, 0x0212, "mistyped argument"),
    (0xFE00, 0xFE00, "cancelled: not a valid C-STORE answer"),
    (0xFF00, 0xFF01, "pending: not a valid C-STORE answer"),
)


class Kind(enum.Enum):
    STORED = "stored"
    STORED_WITH_WARNING = "stored_with_warning"
    FAILED = "failed"


STORED, STORED_WITH_WARNING, FAILED = Kind.STORED, Kind.STORED_WITH_WARNING, Kind.FAILED


@dataclass(frozen=True)
class Outcome:
    """One C-STORE's result. ``status`` is None when no DIMSE status exists (a protocol
    error, or the instance never went out: refused context, transcoding impossible)."""

    kind: Kind
    status: int | None
    comment: str = ""

    @property
    def stored(self) -> bool:
        return self.kind is not Kind.FAILED

    @property
    def warning(self) -> bool:
        return self.kind is Kind.STORED_WITH_WARNING

    def detail(self) -> str | None:
        """What to record beside the instance: None for a plain success, the warning (code and
        comment) for a warning, the receiver's comment or the status meaning for a failure."""
        if self.kind is Kind.STORED:
            return None
        if self.kind is Kind.STORED_WITH_WARNING:
            text = self.comment or meaning(self.status or 0).removeprefix("warning").lstrip(": ")
            return f"stored with warning 0x{self.status:04X}" + (f": {text}" if text else "")
        return self.comment or (meaning(self.status) if self.status is not None else "failure")

    def describe(self) -> str:
        """One line for logs and error messages: the code (when there is one) and the reason."""
        if self.status is None:
            return self.comment or "failure"
        return f"status 0x{self.status:04X}: {self.comment or meaning(self.status)}"


def meaning(status: int) -> str:
    """The PS3.4 meaning of a C-STORE status, for a receiver that gave no Error Comment."""
    for first, last, text in _MEANINGS:
        if first <= status <= last:
            return text
    return "failure"


def outcome(status: int | None, comment: str = "") -> Outcome:
    """The documented mapping (module docstring): the only place a C-STORE status is judged."""
    if status is None:
        return Outcome(Kind.FAILED, None, f"{NO_STATUS} ({comment})" if comment else NO_STATUS)
    if status == 0x0000:
        return Outcome(Kind.STORED, status, comment)
    if status in WARNING_CODES or 0xB000 <= status <= 0xBFFF:
        return Outcome(Kind.STORED_WITH_WARNING, status, comment)
    return Outcome(Kind.FAILED, status, comment)


def not_sent(reason: str) -> Outcome:
    """A failure decided before any C-STORE went out (no status to report)."""
    return Outcome(Kind.FAILED, None, reason)
