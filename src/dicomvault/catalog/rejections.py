"""IOCM rejections: which SOP instances a rejection note rejected, and the predicate every answer
uses to hide them (C-FIND/QIDO in ``query.py``, retrieval, restore/export selection, WADO paths).

A rejection is keyed by SOP Instance UID alone, so a reference to an instance that has not
arrived yet hides it the moment it does. The first rejection of an instance wins (a second
note naming it again changes nothing): its ``delete_after`` does not move. The rejection
note itself is recorded as kind ``note``: hidden from answers too (a study whose every
instance is rejected disappears), kept as evidence, never due for deletion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exists, func, literal, select

from . import schema as t
from .chunks import in_chunks

_r = t.rejections


@dataclass(frozen=True)
class Rejected:
    """One rejected instance (a row of ``rejections``)."""

    sop_instance_uid: str
    kind: str  # "instance" (rejected) | "note" (the rejection note, kept as evidence)
    study_uid: str
    series_uid: str
    code: str
    meaning: str
    kos_uid: str
    actor: str
    rejected_at: float
    delete_after: float | None  # None for a note


def visible(instances: Any = t.instances) -> Any:
    """SQL: ``instances`` (the table or an alias) is not rejected."""
    return ~exists(select(literal(1)).select_from(_r).where(_r.c.sop_instance_uid == instances.c.sop_instance_uid))


def any_rejected(conn: Connection) -> bool:
    """Whether any rejection exists (answers skip the hiding predicate while none does)."""
    return conn.execute(select(literal(1)).select_from(_r).limit(1)).first() is not None


def record(conn: Connection, references: Sequence[tuple[str, str, str]], *, code: str, meaning: str, kos_uid: str,
           actor: str, now: float, delete_after: float, note: tuple[str, str] = ("", "")) -> int:
    """Reject each (study, series, SOP instance UID) not rejected yet, and hide the note
    ``kos_uid`` itself (in study, series ``note``); how many instances became rejected."""
    uids = list(dict.fromkeys(sop for _study, _series, sop in references))
    known = set(rejected_among(conn, [*uids, kos_uid]))
    added = 0
    rows = [(sop, "instance", study, series, delete_after) for study, series, sop in references]
    for sop, kind, study, series, due in [*rows, (kos_uid, "note", note[0], note[1], None)]:
        if sop in known:
            continue
        known.add(sop)
        conn.execute(_r.insert().values(sop_instance_uid=sop, kind=kind, study_uid=study, series_uid=series,
                                        code=code, meaning=meaning[:64], kos_uid=kos_uid, actor=actor[:256],
                                        rejected_at=now, delete_after=due))
        added += kind == "instance"
    return added


def rejected_among(conn: Connection, uids: Iterable[str]) -> dict[str, Rejected]:
    """The rejections of those of ``uids`` that are rejected."""
    found: dict[str, Rejected] = {}
    for chunk in in_chunks(list(dict.fromkeys(uids))):
        for row in conn.execute(select(_r).where(_r.c.sop_instance_uid.in_(chunk))):
            found[row.sop_instance_uid] = Rejected(**row._mapping)
    return found


def stored_count(conn: Connection, uids: Iterable[str]) -> int:
    """How many of ``uids`` are instances in the archive."""
    total = 0
    for chunk in in_chunks(list(dict.fromkeys(uids))):
        total += conn.execute(select(func.count()).select_from(t.instances)
                              .where(t.instances.c.sop_instance_uid.in_(chunk))).scalar_one()
    return total


def rejected_due(conn: Connection, now: float) -> list[Rejected]:
    """Rejected instances whose ``delete_after`` has passed (for the deletion engine), oldest first."""
    rows = conn.execute(select(_r).where(_r.c.kind == "instance", _r.c.delete_after <= now)
                        .order_by(_r.c.delete_after, _r.c.sop_instance_uid))
    return [Rejected(**row._mapping) for row in rows]


def counts(conn: Connection, now: float) -> dict[str, int]:
    """For ``status``: rejected instances (``stored``: of them in the archive now), ``due``
    for deletion, and the rejection ``notes`` applied."""
    instance = _r.c.kind == "instance"
    rejected = conn.execute(select(func.count()).select_from(_r).where(instance)).scalar_one()
    due = conn.execute(select(func.count()).select_from(_r).where(instance, _r.c.delete_after <= now)).scalar_one()
    stored = conn.execute(select(func.count()).select_from(
        _r.join(t.instances, t.instances.c.sop_instance_uid == _r.c.sop_instance_uid)).where(instance)).scalar_one()
    notes = conn.execute(select(func.count()).select_from(_r).where(_r.c.kind == "note")).scalar_one()
    return {"rejected": int(rejected), "stored": int(stored), "due": int(due), "notes": int(notes)}
