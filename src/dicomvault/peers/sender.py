"""The one C-STORE sender: what restore, export, drill ``--to``, C-MOVE sub-operations and the
``dicom://`` replication target use to hand stored instances to a PACS.

It owns one association (``net/requestor.py``: stored bytes as they are, TCP_NODELAY), picks
the transfer syntax (the stored one; a lossless re-encoding only when the peer refused it at
negotiation and the caller allows it), sends, and judges the answer with ``peers/status.py``.
Callers get an ``Outcome`` per instance, or ``PeerLost`` when the association itself failed
(the peer, not the instance: callers stop or retry rather than fail every instance).

C-GET sub-operations travel back on the requestor's own association (``net/acceptor.py``);
they share ``payload_for`` and the status rule, not the association.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicomvault.dicom.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from dicomvault.dicom.transcode import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    UNCOMPRESSED,
    TranscodeError,
    pick_syntax,
    proposals,
    transcode,
)
from dicomvault.net import pdu
from dicomvault.net.requestor import AssociationRejected, MissingStatus, StoreRequestor
from dicomvault.net.tls import client_context
from dicomvault.peers.status import Outcome, not_sent, outcome

if TYPE_CHECKING:
    from dicomvault.config import PeerSettings, Settings


class PeerLost(Exception):
    """The association could not be opened or broke mid-way: the peer failed, not the instance."""


@dataclass(frozen=True)
class Sent:
    """One instance's outcome, and the syntax it was re-encoded to (None: sent as stored)."""

    outcome: Outcome
    converted_to: str | None = None


def payload_for(stored_syntax: str, accepted: list[str], dataset: bytes) -> tuple[str, bytes] | Outcome:
    """(syntax, bytes) to send: the stored bytes untouched when ``accepted`` has the stored
    syntax, else a lossless re-encoding; a failed Outcome when neither is possible."""
    try:
        syntax = pick_syntax(stored_syntax, accepted)
        return syntax, transcode(dataset, stored_syntax, syntax)
    except TranscodeError as exc:
        return not_sent(str(exc))


class StoreSender:
    """C-STOREs to one peer over one kept-open association (one per thread: not thread-safe)."""

    def __init__(self, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 30.0,
                 name: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name or called_ae
        self.called_ae, self.host, self.port = called_ae, host, port
        self.tls = ssl_context is not None
        self.requestor = StoreRequestor(host, port, called_ae, calling_ae, timeout,
                                        IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ssl_context)

    @classmethod
    def to_peer(cls, settings: "Settings", peer: "PeerSettings") -> "StoreSender":
        """A sender to a configured ``[peers.NAME]``, as our ``[dicom] ae_title``; over TLS when
        the peer says ``tls = true`` (a TlsSetupError when its certificate files are unusable)."""
        return cls(peer.host, peer.port, peer.ae_title, settings.dicom.ae_title,
                   settings.dicom.network_timeout, peer.name, client_context(peer, settings.dicom))

    def describe(self) -> str:
        return f"{self.name} ({self.called_ae}@{self.host}:{self.port}{', TLS' if self.tls else ''})"

    def open(self, pairs: list[tuple[str, str]], convert: bool = True) -> None:
        """Propose every (SOP class, stored syntax) up front (plus the lossless fallbacks when
        ``convert``), so a whole job runs on one association. PeerLost if it cannot."""
        try:
            self.requestor.prepare(proposals(pairs) if convert else pairs)
        except (AssociationRejected, OSError, pdu.ProtocolError) as exc:
            self.requestor.close()
            raise PeerLost(f"cannot associate with {self.describe()}: {exc}") from exc

    def close(self) -> None:
        self.requestor.close()

    def _syntaxes(self, sop_class: str, stored: str, convert: bool) -> list[str] | Outcome:
        """The syntaxes the peer took for this instance, or why it cannot be sent."""
        candidates = (stored, EXPLICIT_VR_LE, IMPLICIT_VR_LE) if convert else (stored,)
        accepted = [ts for ts in candidates if self.requestor.accepts(sop_class, ts)]
        if accepted:
            return accepted
        reasons = sorted({r for r in (self.requestor.refusal(sop_class, ts) for ts in candidates) if r})
        if not reasons:
            return [stored]  # not proposed yet (over 126 pairs): the requestor negotiates it now
        if not convert:
            return not_sent(f"{self.name} does not take SOP class {sop_class} in the stored transfer syntax "
                            f"{stored} ({'; '.join(reasons)})")
        lossy = "" if stored in UNCOMPRESSED else f"; it is stored as {stored} and is never converted with loss"
        return not_sent(f"{self.called_ae} refused SOP class {sop_class} ({'; '.join(reasons)}){lossy}")

    def send(self, sop_class: str, sop_instance: str, stored_syntax: str, dataset: bytes, *,
             convert: bool = True, originator: tuple[str, int] | None = None,
             pace: Callable[[int], None] | None = None) -> Sent:
        """C-STORE one data set (no file meta). ``convert``: a lossless re-encoding is allowed
        when the peer refused the stored syntax (a drill and a replica copy forbid it).
        ``originator``: the C-MOVE requestor's (AE title, message id). ``pace`` is called with
        the byte count just before sending (rate limits)."""
        syntaxes = self._syntaxes(sop_class, stored_syntax, convert)
        if isinstance(syntaxes, Outcome):
            return Sent(syntaxes)
        chosen = payload_for(stored_syntax, syntaxes, dataset)
        if isinstance(chosen, Outcome):
            return Sent(chosen)
        syntax, payload = chosen
        if pace is not None:
            pace(len(payload))
        try:
            status, comment = self.requestor.store(sop_class, sop_instance, syntax, payload, originator)
        except AssociationRejected as exc:  # the peer refused a context negotiated just now
            return Sent(not_sent(str(exc)))
        except MissingStatus as exc:  # aborted by the requestor; the next send associates anew
            return Sent(outcome(None, str(exc)))
        except (OSError, pdu.ProtocolError) as exc:
            raise PeerLost(f"lost the association with {self.describe()}: {exc}") from exc
        return Sent(outcome(status, comment), syntax if syntax != stored_syntax else None)
