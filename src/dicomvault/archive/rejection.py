"""Putting an IOCM rejection note in effect: the one place that records its rejections and
audits them, whether the note has just arrived (``ingest/iocm.py``) or is re-applied from the
stored note after a crash or a catalog rebuild (``Ingestor.reapply_rejection``)."""

from __future__ import annotations

from typing import Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import rejections
from dicomvault.dicom.iocm import RejectionNote


def apply_rejection(catalog: Any, note: RejectionNote, *, actor: str, source: str, received_at: float,
                    delete_after_seconds: float, reapplied: bool = False) -> tuple[int, int]:
    """Record the note's rejections (``delete_after`` counted from its receipt) and audit them,
    in one transaction: (instances newly rejected, referenced instances in the archive)."""
    uids = [sop for _study, _series, sop in note.references]
    delete_after = received_at + delete_after_seconds
    with catalog.write() as conn:
        added = rejections.record(conn, note.references, code=note.code, meaning=note.meaning,
                                  kos_uid=note.kos_uid, actor=source if reapplied else actor, now=received_at,
                                  delete_after=delete_after, note=(note.study_uid, note.series_uid))
        stored = rejections.stored_count(conn, uids)
        append(conn, AuditEvent(actor=actor, action="reject", subject=note.kos_uid, outcome="success", detail={
            "title": f"(DCM, {note.code}, {note.meaning})", "source": source, "referenced": len(uids),
            "newly_rejected": added, "in_archive": stored, "instances": uids[:100], "delete_after": delete_after,
            **({"reapplied": True} if reapplied else {})}), **({} if reapplied else {"ts": received_at}))
    return added, stored
