"""DICOM Storage Commitment, push model (SOP Class 1.2.840.10008.1.20.1), as an SCP.

Promise 6, *commitment means copies*: an instance is reported committed only when the
archive's copy policy holds for it, i.e. the object of its latest version has at least
``policy.copies`` copies in state ``verified`` in the ``copies`` table (the primary counts,
on-site), of which at least ``policy.offsite_copies`` are on sites configured ``offsite``.
The policy itself lives in ``archive/copies.py``; the SQL in ``catalog/commitments.py``.

Flow (PS3.4 Annex J):

1. **N-ACTION** (Action Type 1) arrives on ``dicomvault serve``'s DIMSE port. The Action
   Information is validated (Transaction UID, a non-empty Referenced SOP Sequence of valid,
   distinct SOP Class / Instance UID pairs); a bad request is refused with an N-ACTION
   failure status (PS3.7 10.1.4.1.10; 0x0115 *Invalid argument value* for bad Action
   Information) and an Error Comment saying why. A good one is persisted in the catalog
   (``commitment_requests`` + ``commitment_items``) together with its audit row, in one
   transaction, and only then answered with success.
2. A background **evaluator** re-checks undecided items when something they depend on
   changes (``notify``: replication recorded verified copies, an instance was stored, a
   request arrived), when the oldest request times out, and every ``[commitment]
   poll_seconds`` as a safety net: committed when the policy (``archive/copies.py``)
   holds; failed 0x0119 (class/instance conflict) when the stored instance has another SOP
   Class; failed 0x0110 (processing failure, with the reason kept
   in the catalog and the audit log) when the policy still does not hold after
   ``[commitment] timeout_seconds``; failed 0x0112 (no such object instance) when the vault
   never received it. An unknown instance is only declared missing once nothing else of the
   request is still waiting for replication (or at the timeout), so an instance whose
   C-STORE races the N-ACTION is not failed needlessly.
3. Once **every** item is decided, a **deliverer** sends one N-EVENT-REPORT (Event Type 1
   when all committed, 2 when failures exist) on a new association from our own AE title to
   the requester, found by its calling AE title in ``[peers.NAME]``. The association
   proposes the Storage Commitment SOP Class with SCP/SCU Role Selection (we propose the SCP
   role: the requester is the SCU of the SOP class but receives the N-EVENT-REPORT). Failed
   deliveries back off and retry (the deliverer looks every ``[commitment] check_interval``,
   and at once when a request is decided); the request counts as delivered only after an
   N-EVENT-REPORT-RSP with status success. A requester with no ``[peers]`` entry is logged,
   kept pending and shown as *undeliverable* in ``status``.

Everything is in the catalog, so a restart resumes evaluation and delivery where it stopped.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomvault.archive.copies import CopyPolicy
from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog
from dicomvault.catalog import commitments as q
from dicomvault.catalog.commitments import COMMITTED, DELIVERED, FAILED, PENDING, decision
from dicomvault.catalog.copies import verified_sites
from dicomvault.config import ConfigError, DicomSettings, PeerSettings, Settings
from dicomvault.net.tls import client_context, pynetdicom_tls_args

if TYPE_CHECKING:  # pydicom (~0.3 s with numpy) is imported where a data set is built or read,
    from pydicom.dataset import Dataset  # not by `status`, which only needs commitment_status

log = logging.getLogger(__name__)

SOP_CLASS_UID = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
SOP_INSTANCE_UID = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
ACTION_REQUEST_COMMITMENT = 1
EVENT_ALL_SUCCESS = 1
EVENT_FAILURES_EXIST = 2
COALESCE_SECONDS = 0.1  # one evaluation per burst of wake-ups (see _evaluate_loop)

# N-ACTION response statuses (PS3.7 10.1.4.1.10; Annex J defines no class-specific ones).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_INVALID_ARGUMENT_VALUE = 0x0115
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_NO_SUCH_ACTION = 0x0123
STATUS_RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) values in the Failed SOP Sequence (PS3.3 C.14.1.1).
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_OBJECT_INSTANCE = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119

MAX_ITEMS = 100_000  # per request; more is refused with 0x0213 (resource limitation)

RETRY_BASE = 2.0
RETRY_CAP = 300.0


class CommitmentRefused(Exception):
    """An N-ACTION we will not process: answered with ``status`` and an Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


class DeliveryFailed(Exception):
    """The N-EVENT-REPORT did not reach the requester (or it did not answer success)."""


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    items: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID), in request order


@dataclass(frozen=True)
class Report:
    """One decided request, ready to be sent as an N-EVENT-REPORT."""

    request_pk: int
    transaction_uid: str
    calling_ae: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]  # (class, instance, failure reason)
    attempts: int

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_SUCCESS


# --- parsing the N-ACTION -----------------------------------------------------------------


def _text(value: Any) -> str:
    return str(value).strip().rstrip("\x00").strip() if value is not None else ""


def _valid_uid(value: str) -> bool:
    from pydicom.uid import UID

    return bool(value) and UID(value).is_valid


def parse_request(action_type: Any, requested_class: Any, requested_instance: Any,
                  action_information: Callable[[], Dataset | None]) -> CommitmentRequest:
    """Validate an N-ACTION against PS3.4 J.3.2; raises :class:`CommitmentRefused` with the status."""
    if action_type != ACTION_REQUEST_COMMITMENT:
        raise CommitmentRefused(STATUS_NO_SUCH_ACTION, f"Action Type ID {action_type} unsupported; use 1")
    if _text(requested_class) != SOP_CLASS_UID:
        raise CommitmentRefused(STATUS_NO_SUCH_SOP_CLASS, f"SOP Class {_text(requested_class)} is not Storage Commitment")
    if _text(requested_instance) != SOP_INSTANCE_UID:
        raise CommitmentRefused(STATUS_NO_SUCH_SOP_INSTANCE, f"Requested SOP Instance must be {SOP_INSTANCE_UID}")
    try:
        ds = action_information()
        if ds is None or len(ds) == 0:
            raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, "no Action Information")
        transaction_uid = _text(ds.get("TransactionUID"))
        sequence = ds.get("ReferencedSOPSequence")
        raw_items = [(_text(item.get("ReferencedSOPClassUID")), _text(item.get("ReferencedSOPInstanceUID")))
                     for item in (sequence or [])]
    except CommitmentRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily; any malformed element lands here
        raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE,
                                f"Action Information undecodable: {type(exc).__name__}") from exc
    if not transaction_uid:
        raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, "missing Transaction UID (0008,1195)")
    if not _valid_uid(transaction_uid):
        raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is not a valid UID")
    if not raw_items:
        raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) missing or empty")
    if len(raw_items) > MAX_ITEMS:
        raise CommitmentRefused(STATUS_RESOURCE_LIMITATION, f"more than {MAX_ITEMS} instances in one request")
    seen: set[str] = set()
    for index, (sop_class, sop_instance) in enumerate(raw_items, start=1):
        if not _valid_uid(sop_class):
            raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, f"item {index}: bad Referenced SOP Class UID")
        if not _valid_uid(sop_instance):
            raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, f"item {index}: bad Referenced SOP Instance UID")
        if sop_instance in seen:  # PS3.4 J.3.2.1.1.3: referenced only once
            raise CommitmentRefused(STATUS_INVALID_ARGUMENT_VALUE, f"item {index}: SOP Instance listed twice")
        seen.add(sop_instance)
    return CommitmentRequest(transaction_uid, tuple(raw_items))


def build_event_information(report: Report) -> Dataset:
    """The Storage Commitment Result (PS3.4 Table J.3-2) for ``report``."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:  # 1C: present when at least one instance is committed
        items = []
        for sop_class, sop_instance in report.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = items
    if report.failed:
        items = []
        for sop_class, sop_instance, reason in report.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: disable Nagle on the association's socket (small DIMSE exchanges)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def send_report(local_ae_title: str, peer: PeerSettings, report: Report, timeout: float = 30.0,
                dicom: DicomSettings | None = None) -> None:
    """One N-EVENT-REPORT on a new association; returns only after an N-EVENT-REPORT-RSP success.
    Over TLS when the peer has ``tls = true`` (``dicom``: our ``[dicom]`` TLS defaults)."""
    from pynetdicom import AE, build_role, evt
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title=local_ae_title)
    ae.connection_timeout = min(timeout, 10.0)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(SOP_CLASS_UID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # We, the SCP of the SOP Class, request the association: propose the SCP role (PS3.4 J.3.3.1.2 note 1).
    role = build_role(SOP_CLASS_UID, scu_role=False, scp_role=True)
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        context = client_context(peer, dicom)
    except ConfigError as exc:
        raise DeliveryFailed(str(exc)) from exc
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role],
                         evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)],
                         tls_args=pynetdicom_tls_args(context, peer.host))
    if not assoc.is_established:
        if assoc.is_rejected:
            raise DeliveryFailed(f"association with {where} rejected")
        raise DeliveryFailed(f"cannot associate with {where} (refused, aborted or timed out)")
    try:
        if not any(cx.abstract_syntax == SOP_CLASS_UID for cx in assoc.accepted_contexts):
            raise DeliveryFailed(f"{where} did not accept the Storage Commitment Push Model context")
        status, _reply = assoc.send_n_event_report(build_event_information(report), report.event_type,
                                                   SOP_CLASS_UID, SOP_INSTANCE_UID)
        code = getattr(status, "Status", None)
        if code is None:
            raise DeliveryFailed(f"no N-EVENT-REPORT response from {where} (timeout or abort)")
        if code != STATUS_SUCCESS:
            comment = getattr(status, "ErrorComment", "") or ""
            raise DeliveryFailed(f"{where} answered the N-EVENT-REPORT with 0x{int(code):04X} {comment}".strip())
    finally:
        if assoc.is_established:
            assoc.release()


# --- the service ----------------------------------------------------------------------------


class StorageCommitmentService:
    """Persists N-ACTION requests, decides them by the copy policy and reports the results."""

    def __init__(self, settings: Settings, catalog: Catalog,
                 sender: Callable[[str, PeerSettings, Report], None] | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.policy = CopyPolicy.from_settings(settings)  # which copies count: archive/copies.py
        self.sites = self.policy.sites
        self.timeout = settings.commitment.timeout_seconds
        self.interval = settings.commitment.check_interval
        self.poll = settings.commitment.poll_seconds
        self.peers = {peer.ae_title: peer for peer in settings.peers if peer.callable}  # reports go back to them
        self.sender = sender or (lambda ae_title, peer, report: send_report(ae_title, peer, report,
                                                                            dicom=settings.dicom))
        self._rng = random.Random()
        self._stop = threading.Event()
        self._wake_evaluator = threading.Event()
        self._wake_deliverer = threading.Event()
        self._threads: list[threading.Thread] = []
        self._warned_undeliverable: set[int] = set()
        self._last_fingerprint: tuple[Any, ...] | None = None
        self._next_timeout: float | None = None  # when the oldest pending request times out
        # False once an evaluation found nothing pending and no request came since: a store
        # then wakes nobody (ingest calls ``notify`` for every instance it stores).
        self._pending = True

    # --- N-ACTION -------------------------------------------------------------------------

    def on_n_action(self, event: Any) -> tuple[Dataset, None]:
        """pynetdicom EVT_N_ACTION handler: validate, persist, answer; never raises."""
        from pydicom.dataset import Dataset

        requestor = event.assoc.requestor
        calling = _text(requestor.ae_title)
        called = _text(event.assoc.acceptor.ae_title)
        address = f"{requestor.address}:{requestor.port}"
        request = event.request
        status = Dataset()
        try:
            parsed = parse_request(request.ActionTypeID, request.RequestedSOPClassUID,
                                   request.RequestedSOPInstanceUID, lambda: event.action_information)
            self.submit(parsed, calling, called, address)
        except CommitmentRefused as exc:
            log.warning("storage commitment N-ACTION from %s@%s refused (0x%04X): %s", calling, address,
                        exc.status, exc.comment)
            self._audit_refusal(calling, address, exc)
            status.Status = exc.status
            status.ErrorComment = exc.comment[:64]
            return status, None
        except Exception as exc:  # noqa: BLE001 - a failure here must answer, not kill the association
            log.exception("storage commitment N-ACTION from %s@%s failed", calling, address)
            status.Status = STATUS_PROCESSING_FAILURE
            status.ErrorComment = f"internal error: {type(exc).__name__}"[:64]
            return status, None
        status.Status = STATUS_SUCCESS
        return status, None

    def _audit_refusal(self, calling: str, address: str, exc: CommitmentRefused) -> None:
        try:
            with self.catalog.write() as conn:
                append(conn, AuditEvent(actor=f"dicom:{calling}", action="commitment-request", outcome="refused",
                                        detail={"address": address, "status": f"0x{exc.status:04X}",
                                                "reason": exc.comment}))
        except Exception as audit_exc:  # noqa: BLE001 - the refusal itself must still be answered
            log.warning("cannot audit a refused commitment request: %s", audit_exc)

    def submit(self, request: CommitmentRequest, calling_ae: str, called_ae: str = "", address: str = "") -> bool:
        """Persist a validated request with its audit row; False if it was a retransmission."""
        now = time.time()
        with self.catalog.write() as conn:
            existing = q.find_request(conn, request.transaction_uid)
            if existing is not None:
                known = q.request_references(conn, existing.id)
                if existing.calling_ae == calling_ae and tuple(known) == request.items:
                    log.info("storage commitment %s from %s received again; already being processed",
                             request.transaction_uid, calling_ae)
                    return False
                raise CommitmentRefused(STATUS_PROCESSING_FAILURE, "Transaction UID already used for another request")
            q.add_request(conn, request.transaction_uid, calling_ae[:16], called_ae[:16], address[:64],
                          request.items, now)
            append(conn, AuditEvent(actor=f"dicom:{calling_ae}", action="commitment-request",
                                    subject=request.transaction_uid, outcome="accepted",
                                    detail={"address": address, "instances": len(request.items),
                                            "peer_configured": calling_ae in self.peers}), ts=now)
        if calling_ae not in self.peers:
            log.error("storage commitment %s from %s accepted, but no [peers] entry has ae_title = %r: "
                      "its report cannot be delivered until one is configured", request.transaction_uid,
                      calling_ae, calling_ae)
        log.info("storage commitment %s from %s: %d instance(s) pending", request.transaction_uid, calling_ae,
                 len(request.items))
        self._pending = True
        self._wake_evaluator.set()
        return True

    # --- evaluation -----------------------------------------------------------------------

    def _fingerprint(self, conn: Any, now: float) -> tuple[Any, ...] | None:
        """What decisions depend on; None when a pending request's timeout has fallen due.

        Also notes when the oldest pending request times out, so the evaluator wakes for it.
        """
        oldest = q.oldest_pending_received_at(conn)
        self._next_timeout = None if oldest is None else oldest + self.timeout
        self._pending = oldest is not None  # a request submitted meanwhile has set its wake-up
        if oldest is None:
            return ("idle",)
        if now - oldest >= self.timeout:
            return None
        return q.evaluation_inputs(conn, sorted(self.sites))

    def evaluate_once(self, now: float | None = None, force: bool = False) -> int:
        """Decide what can be decided in every pending request; returns how many became complete."""
        now = time.time() if now is None else now
        with self.catalog.read() as conn:
            fingerprint = self._fingerprint(conn, now)
            if not force and fingerprint is not None and fingerprint == self._last_fingerprint:
                return 0
            pending = q.pending_requests(conn)
        completed = 0
        for request in pending:
            try:
                if self._evaluate_request(request.id, request.transaction_uid, request.received_at, now):
                    completed += 1
            except Exception as exc:  # noqa: BLE001 - one bad request must not stall the others
                log.warning("cannot evaluate storage commitment %s yet: %s", request.transaction_uid, exc)
                fingerprint = None  # try again next round whatever changes
        self._last_fingerprint = fingerprint
        if completed:
            self._wake_deliverer.set()
        return completed

    def _evaluate_request(self, pk: int, transaction_uid: str, received_at: float, now: float) -> bool:
        expired = now - received_at >= self.timeout
        with self.catalog.read() as conn:
            items = q.pending_items(conn, pk)
            stored = q.latest_stored(conn, [item.sop_instance_uid for item in items])
            verified = verified_sites(conn, [obj for _cls, obj in stored.values()])
        decisions: list[dict[str, Any]] = []
        missing: list[Any] = []
        waiting = 0
        for item in items:
            found = stored.get(item.sop_instance_uid)
            if found is None:
                missing.append(item)
                continue
            stored_class, object_id = found
            if stored_class != item.sop_class_uid:
                decisions.append(decision(item.id, FAILED, now, REASON_CLASS_INSTANCE_CONFLICT,
                                          f"stored with SOP Class {stored_class}, request says {item.sop_class_uid}"))
                continue
            check = self.policy.check(verified.get(object_id, ()))
            if check.met:
                decisions.append(decision(item.id, COMMITTED, now))
            elif expired:
                decisions.append(decision(
                    item.id, FAILED, now, REASON_PROCESSING_FAILURE,
                    f"copy policy not met within {self.timeout:g}s: {self.policy.shortfall(check)}"))
            else:
                waiting += 1
        if waiting == 0:  # nothing else to wait for: what the vault does not hold, it never received
            decisions += [decision(item.id, FAILED, now, REASON_NO_SUCH_OBJECT_INSTANCE,
                                   "the vault never received this SOP Instance") for item in missing]
        complete = waiting == 0
        if not decisions and not complete:
            return False
        with self.catalog.write() as conn:
            if decisions:
                q.record_decisions(conn, decisions)
            if complete:
                if q.count_pending_items(conn, pk):
                    return False
                q.mark_request_decided(conn, pk, now)
        for item_decision in decisions:
            if item_decision["b_state"] == FAILED:
                log.warning("storage commitment %s: instance failed (0x%04X): %s", transaction_uid,
                            item_decision["b_reason"], item_decision["b_text"])
        if complete:
            log.info("storage commitment %s decided; report due", transaction_uid)
        return complete

    # --- delivery -------------------------------------------------------------------------

    def _due_reports(self, now: float) -> list[Report]:
        """Decided reports whose next attempt is due, for requesters with a [peers] entry."""
        with self.catalog.read() as conn:
            reports = []
            for request in q.due_reports(conn, now, self.peers):
                items = q.report_items(conn, request.id)
                reports.append(Report(
                    request_pk=request.id, transaction_uid=request.transaction_uid, calling_ae=request.calling_ae,
                    committed=tuple((i.sop_class_uid, i.sop_instance_uid) for i in items if i.state == COMMITTED),
                    failed=tuple((i.sop_class_uid, i.sop_instance_uid, int(i.failure_reason or REASON_PROCESSING_FAILURE))
                                 for i in items if i.state == FAILED),
                    attempts=int(request.attempts),
                ))
        return reports

    def deliver_once(self, now: float | None = None) -> int:
        """Send every due report once; returns how many were delivered."""
        now = time.time() if now is None else now
        self._flag_undeliverable()
        delivered = 0
        for report in self._due_reports(now):
            if self._stop.is_set():
                break
            peer = self.peers[report.calling_ae]
            try:
                self.sender(self.settings.dicom.ae_title, peer, report)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
                self._delivery_failed(report, peer, f"{type(exc).__name__}: {exc}" if not isinstance(exc, DeliveryFailed)
                                      else str(exc))
                continue
            self._delivered(report, peer)
            delivered += 1
        return delivered

    def _flag_undeliverable(self) -> None:
        """Decided reports for requesters without a [peers] entry: log once each, note why in the catalog.

        They stay decided (pending delivery) and are sent after a restart with the peer configured.
        """
        with self.catalog.read() as conn:
            rows = [row for row in q.undeliverable_requests(conn, self.peers)
                    if row.id not in self._warned_undeliverable]
        for row in rows:
            error = f"no [peers] entry with ae_title = {row.calling_ae!r}: cannot send the report"
            log.error("storage commitment %s is decided but UNDELIVERABLE: %s; add [peers.NAME] with "
                      "ae_title, host and port, then restart", row.transaction_uid, error)
            try:
                with self.catalog.write() as conn:
                    q.note_request_error(conn, row.id, error)
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot record that commitment %s is undeliverable: %s", row.transaction_uid, exc)
                continue
            self._warned_undeliverable.add(row.id)

    def _delivery_failed(self, report: Report, peer: PeerSettings, error: str) -> None:
        attempts = report.attempts + 1
        step = min(RETRY_CAP, RETRY_BASE * (2 ** (attempts - 1)))
        next_at = time.time() + step * (0.5 + self._rng.random() / 2)
        log.warning("storage commitment report %s to %s@%s:%d failed (attempt %d, retry in %.0fs): %s",
                    report.transaction_uid, peer.ae_title, peer.host, peer.port, attempts, next_at - time.time(), error)
        try:
            with self.catalog.write() as conn:
                q.record_delivery_failure(conn, report.request_pk, attempts, next_at, error[:1000])
                if report.attempts == 0:  # the first failure is audited; later retries only logged
                    append(conn, AuditEvent(actor="dicomvault:commitment", action="commitment-report",
                                            subject=report.transaction_uid, outcome="retry",
                                            detail={"peer": f"{peer.ae_title}@{peer.host}:{peer.port}",
                                                    "error": error[:500]}))
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot record a failed delivery of commitment %s: %s", report.transaction_uid, exc)

    def _delivered(self, report: Report, peer: PeerSettings) -> None:
        now = time.time()
        detail = {
            "peer": f"{peer.ae_title}@{peer.host}:{peer.port}", "event_type": report.event_type,
            "committed": len(report.committed), "attempts": report.attempts + 1,
            "failed": [{"sop_instance_uid": uid, "reason": f"0x{reason:04X}"} for _cls, uid, reason in report.failed],
        }
        for _ in range(3):  # the peer has the report: recording it must not be lost to a busy catalog
            try:
                with self.catalog.write() as conn:
                    q.mark_request_delivered(conn, report.request_pk, report.attempts + 1, now)
                    append(conn, AuditEvent(actor="dicomvault:commitment", action="commitment-report",
                                            subject=report.transaction_uid,
                                            outcome="success" if not report.failed else "failures",
                                            detail=detail), ts=now)
                break
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot record the delivery of commitment %s yet: %s", report.transaction_uid, exc)
                time.sleep(0.5)
        log.info("storage commitment report %s delivered to %s (event type %d: %d committed, %d failed)",
                 report.transaction_uid, peer.ae_title, report.event_type, len(report.committed), len(report.failed))

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._evaluate_loop, "commitment-evaluate"), (self._deliver_loop, "commitment-deliver")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("storage commitment SCP: policy %d copies (%d off-site), timeout %gs, %d peer(s) configured",
                 self.policy.copies, self.policy.offsite_copies, self.timeout, len(self.peers))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake_evaluator.set()
        self._wake_deliverer.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads.clear()

    def notify(self) -> None:
        """Something changed (a copy verified, an instance stored): re-evaluate now.

        ``serve`` wires this to the replication outbox (a batch of copies verified) and to
        the ingestor (an instance stored); nothing else needs to call it. Cheap while no
        request is pending, which is most of the time."""
        if self._pending:
            self._wake_evaluator.set()

    def _evaluate_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.evaluate_once()
            except Exception as exc:  # noqa: BLE001 - catalog busy or gone: try again next round
                log.warning("storage commitment evaluation failed: %s", exc)
            self._wake_evaluator.wait(self._until_next_evaluation())
            # A burst of wake-ups (one per stored instance while a request is pending) makes one
            # evaluation per COALESCE seconds, not one per instance.
            self._stop.wait(COALESCE_SECONDS)
            self._wake_evaluator.clear()

    def _until_next_evaluation(self) -> float:
        """Seconds to sleep unless woken: until the oldest pending request times out, else the
        ``[commitment] poll_seconds`` safety net (changes made by another process, such as an
        ``import`` or a ``verify``, wake nobody here)."""
        if self._next_timeout is None:
            return self.poll
        remaining = self._next_timeout - time.time()
        if remaining <= 0:  # due but not decided (the catalog refused?): retry at the old pace
            return min(self.poll, self.interval)
        return min(self.poll, remaining + 0.01)

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_once()
            except Exception as exc:  # noqa: BLE001
                log.warning("storage commitment delivery failed: %s", exc)
            self._wake_deliverer.wait(self.interval)
            self._wake_deliverer.clear()


def commitment_status(catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """Counts for ``status``: pending (still being evaluated or awaiting delivery), delivered,
    undeliverable (decided or not, but no ``[peers]`` entry for the requester's AE title)."""
    peers = {peer.ae_title for peer in settings.peers}
    now = time.time()
    with catalog.read() as conn:
        rows = q.request_counts(conn)
        failing = q.failing_deliveries(conn)
        last_error = q.last_undelivered_error(conn)
    counts = {"pending": 0, "delivered": 0, "undeliverable": 0, "evaluating": 0, "awaiting_delivery": 0}
    undeliverable_aes: set[str] = set()
    oldest: float | None = None
    for state, calling_ae, count, first in rows:
        if state == DELIVERED:
            counts["delivered"] += count
            continue
        if calling_ae not in peers:
            counts["undeliverable"] += count
            undeliverable_aes.add(calling_ae)
            continue
        counts["pending"] += count
        counts["evaluating" if state == PENDING else "awaiting_delivery"] += count
        oldest = first if oldest is None else min(oldest, first)
    return {
        **counts,
        "failing_deliveries": int(failing),
        "oldest_pending_age_seconds": round(now - oldest, 1) if oldest is not None else 0.0,
        "undeliverable_ae_titles": sorted(undeliverable_aes),
        "last_error": last_error,
        "timeout_seconds": settings.commitment.timeout_seconds,
    }

