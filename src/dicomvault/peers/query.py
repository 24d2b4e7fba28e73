"""The PACS side of ``dicomvault reconcile``: a Study Root C-FIND / C-MOVE SCU (pynetdicom).

One association is opened per reconcile run and reused for every query and move of the run
(re-opened once if the PACS drops it between operations, e.g. an idle timeout during a long
backfill). Every failure becomes a :class:`PacsError` whose message says what to check:
nothing listening, the association rejected (the PACS does not know our AE title, or the
peer's AE title is wrong), a query refused, the move destination unknown to the PACS, or
sub-operations that failed (the vault's ``dicomvault serve`` not running or unreachable from
the PACS).

Timeouts come from ``[dicom] network_timeout``: the ACSE, DIMSE and network timeouts of the
association (the DIMSE timeout is per message, so a long C-MOVE is fine as long as the PACS
sends its pending responses), and at most 10 s for the TCP connect.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomvault.config import ConfigError, DicomSettings, PeerSettings
from dicomvault.net.tls import client_context, pynetdicom_tls_args

if TYPE_CHECKING:  # pydicom is imported by the queries themselves: `status` imports this module
    from pydicom.dataset import Dataset  # (MoveResult, via reconcile_report) and must stay light

log = logging.getLogger(__name__)

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE

STUDY_KEYS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "PatientID", "PatientName", "AccessionNumber",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")

_PENDING = (0xFF00, 0xFF01)
_MOVE_DESTINATION_UNKNOWN = 0xA801


class PacsError(Exception):
    """The PACS could not be reached or did not do what was asked: the message says why."""


@dataclass
class MoveResult:
    """The outcome of one C-MOVE (the counts of its last response)."""

    level: str
    study_uid: str
    series_uid: str | None
    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status in (0x0000, 0xB000) and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level, "study_uid": self.study_uid, "series_uid": self.series_uid,
            "status": None if self.status is None else f"0x{self.status:04X}", "completed": self.completed,
            "failed": self.failed, "warning": self.warning, "error": self.error,
        }


def text(ds: Dataset, keyword: str) -> str:
    """An identifier's value as a DICOM string ("" when absent); multi-values joined by a backslash."""
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def count(ds: Dataset | dict[str, str], keyword: str) -> int | None:
    """A Number...Related... value, or None when the peer did not fill it (or filled it badly)."""
    raw = ds.get(keyword, "") if isinstance(ds, dict) else text(ds, keyword)
    raw = str(raw or "").strip()
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


class PacsClient:
    """One association to one PACS, as a context manager. Not thread-safe (one run uses it)."""

    def __init__(self, peer: PeerSettings, our_ae_title: str, timeout: float = 60.0,
                 cancelled: threading.Event | None = None, dicom: DicomSettings | None = None) -> None:
        self.peer = peer
        self.dicom = dicom  # [dicom]: TLS defaults for a peer with tls = true
        self._ssl_context: ssl.SSLContext | None = None
        self.our_ae_title = our_ae_title
        self.timeout = float(timeout)
        self.cancelled = cancelled or threading.Event()
        self.where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        self._assoc: Any = None
        self._lock = threading.Lock()  # guards _assoc against abort() from another thread
        self.can_move = False
        self.finds = 0
        self.moves = 0

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "PacsClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _describe(self) -> str:
        return f"PACS {self.peer.name} ({self.where})"

    def connect(self) -> None:
        """Open the association; PacsError with what to check when it cannot be opened."""
        from pynetdicom import AE

        self._check_cancel()
        # A plain TCP connect first: "connection refused" / "timed out" say more than pynetdicom's
        # generic "association request failed".
        try:
            with socket.create_connection((self.peer.host, self.peer.port), timeout=min(self.timeout, 10.0)):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, socket.timeout):
                reason = f"no answer within {min(self.timeout, 10.0):g} s"
            raise PacsError(f"cannot reach {self._describe()}: {reason}; check [peers.{self.peer.name}] host and "
                            f"port and that the PACS is running") from None
        ae = AE(ae_title=self.our_ae_title)
        ae.connection_timeout = min(self.timeout, 10.0)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.add_requested_context(FIND_MODEL)
        ae.add_requested_context(MOVE_MODEL)
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title,
                             tls_args=pynetdicom_tls_args(self._tls(), self.peer.host))
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsError(
                    f"{self._describe()} rejected the association from our AE title {self.our_ae_title!r}: check "
                    f"that the PACS knows us (AE title {self.our_ae_title}, this host) and that its AE title is "
                    f"{self.peer.ae_title!r}")
            # A PACS that refuses an unknown AE title may close the connection right after its
            # A-ASSOCIATE-RJ; pynetdicom then reports an abort, so both causes are named.
            raise PacsError(f"{self._describe()} accepted the connection but no DICOM association was established "
                            f"(aborted, or no answer within {self.timeout:g} s): check that the PACS knows us (AE "
                            f"title {self.our_ae_title}, this host) and that this is its DICOM port")
        with self._lock:
            self._assoc = assoc
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        if FIND_MODEL not in accepted:
            self.close()
            raise PacsError(f"{self._describe()} does not accept Study Root C-FIND from {self.our_ae_title!r}; "
                            "allow queries for our AE title in the PACS")
        self.can_move = MOVE_MODEL in accepted

    def _tls(self) -> ssl.SSLContext | None:
        """The peer's TLS context (``tls = true``), built once; PacsError if its files are unusable."""
        if self._ssl_context is None and self.peer.tls:
            try:
                self._ssl_context = client_context(self.peer, self.dicom)
            except ConfigError as exc:
                raise PacsError(f"{self._describe()}: {exc}") from None
        return self._ssl_context

    def close(self) -> None:
        with self._lock:
            assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # noqa: BLE001 - closing anyway
                assoc.abort()

    def abort(self) -> None:
        """From another thread (server stopping): make any blocking operation return at once.

        pynetdicom's ``Association.abort()`` is not safe from a thread other than the one using
        the association (it can leave that one waiting for its DIMSE timeout), so the socket is
        shut down instead: the association sees the transport close, as on a network failure,
        and the waiting C-FIND/C-MOVE returns; the run then stops on ``cancelled``."""
        self.cancelled.set()
        with self._lock:
            assoc = self._assoc
        sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _check_cancel(self) -> None:
        if self.cancelled.is_set():
            raise PacsError("reconcile interrupted (stopping)")

    def _live(self) -> Any:
        """The association, re-opened once if the PACS closed it since the last operation."""
        self._check_cancel()
        with self._lock:
            assoc = self._assoc
        if assoc is None or not assoc.is_established:
            log.info("association with %s was closed; opening a new one", self.where)
            self.connect()
            with self._lock:
                assoc = self._assoc
        return assoc

    # --- C-FIND ---------------------------------------------------------------------------

    def find(self, level: str, keys: Iterable[str], match: dict[str, str]) -> list[Dataset]:
        """One C-FIND; the matches as identifiers. ``keys`` are asked as return keys."""
        from pydicom.dataset import Dataset

        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword in keys:
            setattr(identifier, keyword, "")
        for keyword, value in match.items():
            setattr(identifier, keyword, value)
        assoc = self._live()
        self.finds += 1
        matches: list[Dataset] = []
        final: int | None = None
        comment = ""
        for status, found in assoc.send_c_find(identifier, FIND_MODEL):
            code = getattr(status, "Status", None)
            if code is None:
                break  # no response (timeout or abort)
            if code in _PENDING:
                if found is not None:
                    matches.append(found)
                continue
            final, comment = int(code), str(getattr(status, "ErrorComment", "") or "")
        self._check_cancel()
        if final is None:
            raise PacsError(f"{self._describe()} did not answer a {level} C-FIND within {self.timeout:g} s "
                            "(timeout or association aborted)")
        if final != 0x0000:
            what = ", ".join(f"{k}={v}" for k, v in match.items())
            raise PacsError(f"{self._describe()} refused a {level} C-FIND ({what}) with status 0x{final:04X}"
                            + (f": {comment}" if comment else ""))
        return matches

    def studies(self, match: dict[str, str]) -> list[Dataset]:
        return self.find("STUDY", STUDY_KEYS, match)

    def series(self, study_uid: str) -> list[Dataset]:
        return self.find("SERIES", SERIES_KEYS, {"StudyInstanceUID": study_uid})

    def instance_count(self, study_uid: str, series_uid: str) -> int:
        """For a PACS that does not fill NumberOfSeriesRelatedInstances: count IMAGE-level matches."""
        found = self.find("IMAGE", ("SOPInstanceUID",),
                          {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid})
        return len({text(ds, "SOPInstanceUID") for ds in found})

    # --- C-MOVE ---------------------------------------------------------------------------

    def move(self, destination: str, study_uid: str, series_uid: str | None = None,
             progress: Callable[[MoveResult], None] | None = None, hint: str = "") -> MoveResult:
        """C-MOVE one study (or one of its series) to ``destination``; never raises for a
        refused or failed move (the result carries the error), only for a lost association.
        ``hint`` says what to check when nothing arrived (where the PACS must send)."""
        level = "SERIES" if series_uid else "STUDY"
        result = MoveResult(level, study_uid, series_uid)
        assoc = self._live()
        if not self.can_move:
            result.error = (f"{self._describe()} does not accept Study Root C-MOVE from {self.our_ae_title!r}; "
                            "allow retrieves for our AE title in the PACS")
            return result
        from pydicom.dataset import Dataset

        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.StudyInstanceUID = study_uid
        if series_uid:
            identifier.SeriesInstanceUID = series_uid
        self.moves += 1
        comment = ""
        for status, _identifier in assoc.send_c_move(identifier, destination, MOVE_MODEL):
            code = getattr(status, "Status", None)
            if code is None:
                break
            result.status = int(code)
            for attr, keyword in (("completed", "NumberOfCompletedSuboperations"),
                                  ("failed", "NumberOfFailedSuboperations"),
                                  ("warning", "NumberOfWarningSuboperations")):
                value = status.get(keyword)
                if value is not None:
                    setattr(result, attr, int(value))
            comment = str(getattr(status, "ErrorComment", "") or "")
            if code in _PENDING and progress is not None:
                progress(result)
        self._check_cancel()
        code = result.status
        if code is None or code in _PENDING:
            result.error = (f"{self._describe()} did not finish the C-MOVE within {self.timeout:g} s of its last "
                            "response (timeout or association aborted)")
        elif code == _MOVE_DESTINATION_UNKNOWN:
            result.error = (f"{self._describe()} does not know the move destination {destination!r}: add the vault "
                            f"to the PACS's DICOM nodes (AE title {destination}, this host, the vault's [dicom] port)")
        elif code not in (0x0000, 0xB000):
            sent = result.completed + result.warning
            result.error = (f"{self._describe()} answered the C-MOVE to {destination!r} with status 0x{code:04X}"
                            + (f" ({comment})" if comment else "")
                            + (f" after sending {sent} instance(s)" if sent else f"; nothing arrived: {hint}" if hint
                               else "; nothing arrived"))
        elif result.failed and not result.completed and not result.warning:
            result.error = (f"{self._describe()} could not send any instance to {destination!r} ({result.failed} "
                            f"failed): {hint or 'is `dicomvault serve` running, and can the PACS reach its DICOM port?'}")
        return result
