"""C-GET and C-MOVE: the archive's instances sent back exactly as they were received.

Each instance goes out as its stored data set bytes, in its stored transfer syntax, whenever
the receiver accepts that syntax; only when it does not, and the stored syntax is
uncompressed, is it re-encoded losslessly (``dicom/transcode.py``). Objects are decrypted
and verified against their recorded SHA-256 a few instances ahead of the network (a small
prefetch pool), so decrypting overlaps with sending. C-MOVE destinations must be configured
peers (``[peers.NAME]``): the archive never sends PHI to an address a request names.
C-MOVE sends through ``peers/sender.py``; every sub-operation's C-STORE status, C-GET's
too, is judged by ``peers/status.py``: a warning is a stored instance, counted in the
Number of Warning Sub-operations, and makes the final status 0xB000.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dicomvault.catalog.retrieval import LEVEL_KEYS, RetrievalItem, retrieval_items
from dicomvault.archive.coercion import Coercer, CoercionError
from dicomvault.archive.prefetch import Prefetcher
from dicomvault.net import pdu
from dicomvault.peers.sender import PeerLost, StoreSender, payload_for
from dicomvault.peers.status import Outcome, outcome

from dicomvault.serve.qr.common import (
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    SUCCESS,
    IdentifierError,
    audit_operation,
    decode_identifier,
    element_text,
    encode_identifier,
    query_level,
)

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.net.acceptor import Operation

log = logging.getLogger(__name__)

MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPERATIONS_FAILED = 0xA702  # none of the sub-operations succeeded
WARNING_SOME_FAILED = 0xB000
PREFETCH = 4  # instances decrypted ahead of the one being sent


class SubOperationFailed(Exception):
    """One instance could not be delivered; the others go on."""


class Retriever:
    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self.settings = archive.settings
        self._loaders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qr-load")

    # --- shared -------------------------------------------------------------------------

    def _load(self, item: RetrievalItem) -> bytes:
        """The stored data set bytes (decrypted, SHA-256 verified, file meta removed)."""
        return self.archive.repository.load_dataset(item.object_id, item.sha256)

    def _prefetched(self, items: list[RetrievalItem], coercer: Coercer | None) -> Prefetcher[RetrievalItem, bytes]:
        if coercer is None:
            return Prefetcher(items, self._load, self._loaders, PREFETCH)

        def load(item: RetrievalItem) -> bytes:  # the peer's coerce_demographics: current demographics
            return coercer.dataset(item.sop_instance_uid, item.sha256, self._load(item), item.transfer_syntax_uid)

        return Prefetcher(items, load, self._loaders, PREFETCH)

    def _coercer(self, op: "Operation", is_move: bool) -> Coercer | None:
        """C-MOVE: the destination's ``coerce_demographics``; C-GET: the caller's."""
        ae = op.move_destination if is_move else op.assoc.calling_ae
        peer = next((p for p in self.settings.peers if p.ae_title == ae), None)
        return Coercer(self.archive.catalog) if peer is not None and peer.coerce_demographics else None

    def retrieve(self, op: "Operation") -> None:
        is_move = op.kind == pdu.C_MOVE_RQ
        action = "move" if is_move else "get"
        try:
            request = decode_identifier(op.identifier, op.transfer_syntax)
            level = query_level(request, op.model)
            key = LEVEL_KEYS[level]
            keys = [k.strip() for k in element_text(request[key]).split("\\")] if key in request else []
            keys = [k for k in keys if k]
            if not keys:
                raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH,
                                      f"a {level}-level retrieve needs {key} in the identifier")
        except IdentifierError as exc:
            log.warning("C-%s from %s refused (0x%04X): %s", action.upper(), op.assoc.calling_ae, exc.status, exc)
            op.respond(exc.status, comment=str(exc))
            self._audit(op, action, "", "refused", {"reason": str(exc)})
            return
        subject = "\\".join(keys)
        deliver: Callable[[RetrievalItem, bytes], Outcome]
        if is_move:
            peer = next((p for p in self.settings.peers if p.ae_title == op.move_destination), None)
            if peer is None or not peer.callable:
                reason = (f"move destination {op.move_destination!r} is not a configured [peers] entry" if peer is None
                          else f"move destination {op.move_destination!r} has no host and port to send to")
                log.warning("C-MOVE from %s refused: %s", op.assoc.calling_ae, reason)
                op.respond(MOVE_DESTINATION_UNKNOWN, comment=reason)
                self._audit(op, action, subject, "refused", {"reason": reason})
                return
            sender = StoreSender.to_peer(self.settings, peer)
        try:
            items = retrieval_items(self.archive.catalog, level, keys)
        except Exception as exc:  # noqa: BLE001 - the catalog is unreachable or broken
            log.exception("C-%s from %s: matching failed", action.upper(), op.assoc.calling_ae)
            op.respond(0xA701, comment=f"cannot compute matches: {type(exc).__name__}")
            return
        if is_move:
            try:
                deliver = self._move_sender(op, sender, items)
            except PeerLost as exc:
                reason = f"cannot reach {op.move_destination}: {exc}"
                log.warning("C-MOVE from %s: %s", op.assoc.calling_ae, reason)
                op.respond(SUBOPERATIONS_FAILED if items else SUCCESS, failed=len(items), completed=0, warning=0,
                           identifier=self._failed_list(op, [i.sop_instance_uid for i in items]) if items else None,
                           comment=reason[:64])
                self._audit(op, action, subject, "failure", {"reason": reason, "destination": op.move_destination})
                return
        else:
            deliver = self._get_sender(op)
        try:
            self._run(op, action, subject, items, deliver, self._coercer(op, is_move))
        finally:
            if is_move:
                sender.close()

    def _run(self, op: "Operation", action: str, subject: str, items: list[RetrievalItem],
             deliver: Callable[[RetrievalItem, bytes], Outcome], coercer: Coercer | None = None) -> None:
        completed, failed_uids, warning, warned_uids = 0, [], 0, []
        remaining = len(items)
        audit_outcome = "success"
        try:
            for item, loading in self._prefetched(items, coercer):
                if op.cancelled.is_set():
                    op.respond(CANCELLED, identifier=self._failed_list(op, failed_uids) if failed_uids else None,
                               remaining=remaining, completed=completed, failed=len(failed_uids), warning=warning)
                    audit_outcome = "cancelled"
                    return
                try:
                    try:
                        dataset = loading.result()
                    except CoercionError as exc:  # the stored copy is fine; its rewrite is not possible
                        raise SubOperationFailed(str(exc)) from exc
                    except Exception as exc:  # noqa: BLE001 - damaged, missing or unreadable copy
                        log.error("ALERT: the stored copy of %s (object %s) cannot be read back: %s",
                                  item.sop_instance_uid, item.object_id, exc)
                        raise SubOperationFailed(f"stored copy unreadable: {exc}") from exc
                    result = deliver(item, dataset)
                    if not result.stored:
                        raise SubOperationFailed(result.describe())
                    if result.warning:  # stored: counted apart, as PS3.4 C.4.2/C.4.3 ask
                        warning += 1
                        warned_uids.append(item.sop_instance_uid)
                    else:
                        completed += 1
                except SubOperationFailed as exc:
                    log.warning("C-%s sub-operation for %s failed: %s", action.upper(), item.sop_instance_uid, exc)
                    failed_uids.append(item.sop_instance_uid)
                remaining -= 1
                if remaining:
                    op.respond(PENDING, remaining=remaining, completed=completed, failed=len(failed_uids),
                               warning=warning)
            if not failed_uids:
                op.respond(WARNING_SOME_FAILED if warning else SUCCESS, completed=completed, failed=0,
                           warning=warning)
            else:
                audit_outcome = "partial" if completed or warning else "failure"
                op.respond(WARNING_SOME_FAILED if completed or warning else SUBOPERATIONS_FAILED,
                           identifier=self._failed_list(op, failed_uids), completed=completed,
                           failed=len(failed_uids), warning=warning)
        finally:
            self._audit(op, action, subject, audit_outcome, {
                "instances": len(items), "completed": completed, "failed": len(failed_uids), "warning": warning,
                **({"destination": op.move_destination} if op.move_destination else {}),
                **({"failed_uids": failed_uids[:50]} if failed_uids else {}),
                **({"warning_uids": warned_uids[:50]} if warned_uids else {}),
                **({"coerced": coercer.coerced[:50]} if coercer is not None and coercer.coerced else {}),
            })

    def _failed_list(self, op: "Operation", uids: list[str]) -> bytes:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.FailedSOPInstanceUIDList = uids
        return encode_identifier(ds, op.transfer_syntax)

    def _audit(self, op: "Operation", action: str, subject: str, outcome: str, detail: dict[str, Any]) -> None:
        audit_operation(self.archive.catalog, op, action, subject, outcome, detail)

    # --- C-GET: C-STOREs back on the requestor's own association ------------------------

    def _get_sender(self, op: "Operation") -> Callable[[RetrievalItem, bytes], Outcome]:
        def deliver(item: RetrievalItem, dataset: bytes) -> Outcome:
            contexts = op.assoc.storage_contexts(item.sop_class_uid)
            if not contexts:
                raise SubOperationFailed(f"{op.assoc.calling_ae} did not offer to receive {item.sop_class_uid} "
                                         "(no storage context with the SCP role)")
            chosen = payload_for(item.transfer_syntax_uid, list(contexts), dataset)
            if isinstance(chosen, Outcome):
                return chosen
            syntax, payload = chosen
            return outcome(*op.store(contexts[syntax], item.sop_class_uid, item.sop_instance_uid, payload))

        return deliver

    # --- C-MOVE: a new association to the configured destination (peers/sender.py) -----

    def _move_sender(self, op: "Operation", sender: StoreSender,
                     items: list[RetrievalItem]) -> Callable[[RetrievalItem, bytes], Outcome]:
        if items:
            sender.open([(item.sop_class_uid, item.transfer_syntax_uid) for item in items])
        originator = (op.assoc.calling_ae, op.message_id)

        def deliver(item: RetrievalItem, dataset: bytes) -> Outcome:
            try:
                return sender.send(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid, dataset,
                                   originator=originator).outcome
            except PeerLost as exc:  # the next sub-operation tries a fresh association
                raise SubOperationFailed(f"sending to {op.move_destination} failed: {exc}") from exc

        return deliver
