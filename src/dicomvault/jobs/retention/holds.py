"""Legal holds as the CLI (`dicomvault hold`) and the operations API (/api/holds) take them:
checked, written and audited in one transaction (actions ``hold`` and ``hold-release``).

Bad input (no reason, both or neither of study and patient, an unknown study or patient, a
hold that is not in force) raises ``HoldError`` and changes nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import holds

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog

MAX_REASON = 1024


class HoldError(Exception):
    """A hold request that cannot be honoured; the message says why."""


def _reason(reason: object) -> str:
    text = str(reason or "").strip() if isinstance(reason, (str, type(None))) else ""
    if not text:
        raise HoldError("a reason is required (who asked and why, e.g. \"litigation 2026-114, counsel J. Doe\")")
    if len(text) > MAX_REASON:
        raise HoldError(f"the reason is {len(text)} characters; at most {MAX_REASON}")
    return text


def hold_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "scope": row.scope, "target": row.target, "reason": row.reason, "actor": row.actor,
            "created_at": row.created_at, "active": row.released_at is None, "released_at": row.released_at,
            "released_by": row.released_by, "release_reason": row.release_reason}


def place_hold(catalog: "Catalog", *, study: str | None, patient: str | None, reason: object, actor: str) -> dict:
    """Hold one study or every study of a Patient ID; returns the hold."""
    for label, value in (("study", study), ("patient", patient)):
        if value is not None and not isinstance(value, str):
            raise HoldError(f"{label} must be text, got {value!r}"[:120])
    study = (study or "").strip() or None
    patient = (patient or "").strip() or None
    if (study is None) == (patient is None):
        raise HoldError("give exactly one of a study (Study Instance UID) and a patient (Patient ID)")
    text = _reason(reason)
    scope, target = ("study", study) if study else ("patient", patient)
    assert target is not None
    if len(target) > 64:
        raise HoldError(f"{scope} {target[:70]!r}... is longer than 64 characters")
    with catalog.write() as conn:
        if scope == "study" and not holds.study_exists(conn, target):
            raise HoldError(f"no study {target} in the catalog (check the Study Instance UID)")
        studies = 1 if scope == "study" else holds.patient_study_count(conn, target)
        if not studies:
            raise HoldError(f"no study of Patient ID {target!r} in the catalog (check the Patient ID)")
        hold_id = holds.add_hold(conn, scope=scope, target=target, reason=text, actor=actor, now=time.time())
        detail: dict[str, Any] = {"hold": hold_id, "scope": scope, "reason": text, "studies": studies}
        detail["study" if scope == "study" else "patient"] = target
        append(conn, AuditEvent(actor=actor, action="hold", subject=f"{scope}:{target}", detail=detail))
        row = holds.get_hold(conn, hold_id)
    return hold_dict(row)


def release(catalog: "Catalog", hold_id: object, *, reason: object, actor: str) -> dict:
    """Release a hold in force; returns it (released)."""
    if isinstance(hold_id, bool) or not isinstance(hold_id, (int, str)) or not str(hold_id).strip().isdigit():
        raise HoldError(f"a hold id is a whole number (see `dicomvault hold list`), got {str(hold_id)[:40]!r}")
    number = int(str(hold_id).strip())
    text = _reason(reason)
    with catalog.write() as conn:
        if not holds.release_hold(conn, number, actor=actor, reason=text, now=time.time()):
            row = holds.get_hold(conn, number)
            raise HoldError(f"there is no legal hold {number}" if row is None else
                            f"legal hold {number} was already released by {row.released_by}")
        row = holds.get_hold(conn, number)
        append(conn, AuditEvent(actor=actor, action="hold-release", subject=f"{row.scope}:{row.target}",
                                detail={"hold": number, "scope": row.scope, "reason": text,
                                        "placed_by": row.actor, "hold_reason": row.reason}))
    return hold_dict(row)


def list_holds(catalog: "Catalog", active_only: bool = False) -> list[dict]:
    with catalog.read() as conn:
        return [hold_dict(row) for row in holds.list_holds(conn, active_only)]
