"""The ``restore_jobs`` and ``restore_items`` rows: what restore and export planning writes,
what a runner reads back and records, and what progress and reports count.

The planning order, the batch sizes and the liveness rules stay in ``jobs/restore``; this
module only says how each question is asked of the catalog. A function that takes ``conn``
runs inside the caller's transaction (the caller audits in it, or groups it with other
statements); one that takes ``catalog`` is a whole transaction by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection, bindparam, case, func, insert, select, update

from . import schema as t
from .selection import SelectedInstance

if TYPE_CHECKING:
    from .db import Catalog

_INSERT_BATCH = 1000  # item rows per executemany

# One executemany per batch of outcomes (the bind names differ from the columns, as SQLAlchemy
# requires for an UPDATE with a WHERE on a bound parameter).
_RECORD_OUTCOME = update(t.restore_items).where(t.restore_items.c.id == bindparam("item_id")).values(
    state=bindparam("new_state"), status=bindparam("new_status"), detail=bindparam("new_detail"),
    sent_syntax=bindparam("new_syntax"), run=bindparam("new_run"), finished_at=bindparam("at"))


class ItemOutcome(NamedTuple):
    """What became of one item in one run (``state``: sent | failed)."""

    item_id: int
    state: str
    status: int | None
    detail: str | None
    sent_syntax: str | None
    run: int
    at: float


# --- planning ------------------------------------------------------------------------------

def create_planning_job(catalog: "Catalog", *, kind: str, peer: str, destination: str, selection: str,
                        ordering: str, options: str, actor: str, total: int, total_bytes: int,
                        now: float) -> int:
    """Insert a ``planning`` job; returns its id. An earlier planner of the same request
    (same kind, peer and selection JSON) that is still ``planning`` died or is replaced: it is
    superseded in the same transaction, so only one plan of a request is ever in the making."""
    with catalog.write() as conn:
        conn.execute(update(t.restore_jobs).where(
            t.restore_jobs.c.kind == kind, t.restore_jobs.c.peer == peer,
            t.restore_jobs.c.selection == selection, t.restore_jobs.c.state == "planning",
        ).values(state="superseded"))
        return int(conn.execute(insert(t.restore_jobs).values(
            kind=kind, peer=peer, destination=destination, selection=selection, ordering=ordering,
            options=options, state="planning", actor=actor, total=total, total_bytes=total_bytes, runs=0,
            created_at=now, heartbeat_at=now, seconds_sending=0.0,
        )).inserted_primary_key[0])


def add_planned_items(catalog: "Catalog", job_id: int, items: Iterable[tuple[int, int, SelectedInstance]]) -> None:
    """Write one batch of a plan, ``(position, tier, instance)`` each, and beat the job's
    heartbeat, in one write transaction: a batch is all in or all out, and the heartbeat
    says the planner is alive."""
    rows = iter(items)
    with catalog.write() as conn:
        while chunk := list(islice(rows, _INSERT_BATCH)):
            conn.execute(insert(t.restore_items), [
                dict(job_id=job_id, position=position, tier=tier, study_uid=row.study_uid,
                     sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                     object_id=row.object_id, sha256=row.sha256, transfer_syntax_uid=row.transfer_syntax_uid,
                     size=row.size_original, state="pending")
                for position, tier, row in chunk])
        conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id)
                     .values(heartbeat_at=time.time()))


def activate_planned_job(catalog: "Catalog", job_id: int, total: int, total_bytes: int) -> bool:
    """``planning`` -> ``active`` with the planned totals; False when the job is no longer
    ``planning`` (a newer planner of the same request superseded it)."""
    with catalog.write() as conn:
        return bool(conn.execute(update(t.restore_jobs).where(
            t.restore_jobs.c.id == job_id, t.restore_jobs.c.state == "planning",
        ).values(state="active", total=total, total_bytes=total_bytes, heartbeat_at=None)).rowcount)


def supersede_unfinished_plan(catalog: "Catalog", job_id: int) -> None:
    """A job still ``planning`` becomes ``superseded``: nobody may resume a half plan."""
    with catalog.write() as conn:
        conn.execute(update(t.restore_jobs).where(
            t.restore_jobs.c.id == job_id, t.restore_jobs.c.state == "planning").values(state="superseded"))


def supersede_job(catalog: "Catalog", job_id: int) -> None:
    with catalog.write() as conn:
        conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id).values(state="superseded"))


# --- finding jobs --------------------------------------------------------------------------

def job_row(catalog: "Catalog", job_id: int) -> Any:
    """The job's ``restore_jobs`` row, or None."""
    with catalog.read() as conn:
        return conn.execute(select(t.restore_jobs).where(t.restore_jobs.c.id == job_id)).first()


def latest_job_id(catalog: "Catalog", kind: str, peer: str, selection: str) -> int | None:
    """The newest resumable job (neither superseded nor still planning) of this request."""
    with catalog.read() as conn:
        job_id = conn.execute(
            select(t.restore_jobs.c.id)
            .where(t.restore_jobs.c.kind == kind, t.restore_jobs.c.peer == peer,
                   t.restore_jobs.c.selection == selection,
                   t.restore_jobs.c.state.notin_(("superseded", "planning")))
            .order_by(t.restore_jobs.c.id.desc()).limit(1)
        ).scalar()
    return int(job_id) if job_id is not None else None


def planning_job_ids(catalog: "Catalog", kind: str, peer: str, selection: str) -> list[int]:
    """Jobs of this request still ``planning``."""
    with catalog.read() as conn:
        return [int(job_id) for job_id in conn.execute(
            select(t.restore_jobs.c.id).where(
                t.restore_jobs.c.kind == kind, t.restore_jobs.c.peer == peer,
                t.restore_jobs.c.selection == selection, t.restore_jobs.c.state == "planning")
        ).scalars()]


def recent_job_ids(catalog: "Catalog", since: float, limit: int) -> list[int]:
    """Jobs still active, finished since ``since``, or created since then and still planning;
    newest first, superseded ones left out."""
    jobs = t.restore_jobs
    with catalog.read() as conn:
        return [int(job_id) for job_id in conn.execute(
            select(jobs.c.id).where(jobs.c.state != "superseded")
            .where((jobs.c.state == "active") | (jobs.c.finished_at >= since)
                   | ((jobs.c.state == "planning") & (jobs.c.created_at >= since)))
            .order_by(jobs.c.id.desc()).limit(limit)
        ).scalars().all()]


def requeue_failed_items(catalog: "Catalog", job_id: int) -> int:
    """Failed items back to ``pending`` and their job ``active`` again; returns how many."""
    with catalog.write() as conn:
        count = conn.execute(
            update(t.restore_items).where(t.restore_items.c.job_id == job_id, t.restore_items.c.state == "failed")
            .values(state="pending", status=None, detail=None, run=None, finished_at=None)
        ).rowcount
        if count:
            conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id)
                         .values(state="active", finished_at=None))
    return int(count or 0)


# --- progress and reports ------------------------------------------------------------------

def job_with_item_counts(catalog: "Catalog", job_id: int) -> tuple[Any, list[Any]]:
    """(job row or None, ``(tier, state, count, bytes, transcoded)`` per tier and state), read
    in one transaction so the counts belong to that row."""
    items = t.restore_items
    with catalog.read() as conn:
        job = conn.execute(select(t.restore_jobs).where(t.restore_jobs.c.id == job_id)).first()
        if job is None:
            return None, []
        return job, conn.execute(
            select(items.c.tier, items.c.state, func.count(), func.coalesce(func.sum(items.c.size), 0),
                   func.sum(case((items.c.sent_syntax.is_not(None), 1), else_=0)))
            .where(items.c.job_id == job_id).group_by(items.c.tier, items.c.state)
        ).all()


def failed_items(catalog: "Catalog", job_id: int, limit: int | None = None) -> list[Any]:
    """The job's failed items in sending order (UIDs, syntax, the peer's status and the reason)."""
    items = t.restore_items
    query = (select(items.c.sop_instance_uid, items.c.study_uid, items.c.sop_class_uid, items.c.transfer_syntax_uid,
                    items.c.status, items.c.detail)
             .where(items.c.job_id == job_id, items.c.state == "failed").order_by(items.c.position))
    if limit is not None:
        query = query.limit(limit)
    with catalog.read() as conn:
        return conn.execute(query).all()


def transcoded_items(catalog: "Catalog", job_id: int, limit: int) -> list[Any]:
    """Items sent in another syntax than stored, in sending order."""
    items = t.restore_items
    with catalog.read() as conn:
        return conn.execute(select(items.c.sop_instance_uid, items.c.transfer_syntax_uid, items.c.sent_syntax)
                            .where(items.c.job_id == job_id, items.c.sent_syntax.is_not(None))
                            .order_by(items.c.position).limit(limit)).all()


# --- the runner ----------------------------------------------------------------------------

def pending_count(catalog: "Catalog", job_id: int) -> int:
    items = t.restore_items
    with catalog.read() as conn:
        return int(conn.execute(select(func.count()).select_from(items)
                                .where(items.c.job_id == job_id, items.c.state == "pending")).scalar() or 0)


def pending_pairs(catalog: "Catalog", job_id: int) -> list[tuple[str, str]]:
    """(SOP class, stored syntax) of the pending items, in the order each first comes: the
    presentation contexts to propose."""
    items = t.restore_items
    first = func.min(items.c.position)
    with catalog.read() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            select(items.c.sop_class_uid, items.c.transfer_syntax_uid, first)
            .where(items.c.job_id == job_id, items.c.state == "pending")
            .group_by(items.c.sop_class_uid, items.c.transfer_syntax_uid).order_by(first))]


def pending_page(catalog: "Catalog", job_id: int, after: int, limit: int) -> list[Any]:
    """Up to ``limit`` pending items after position ``after``, in sending order: a runner
    pages through a plan of millions instead of holding it."""
    items = t.restore_items
    with catalog.read() as conn:
        return conn.execute(
            select(items.c.id, items.c.position, items.c.tier, items.c.sop_instance_uid, items.c.sop_class_uid,
                   items.c.object_id, items.c.sha256, items.c.transfer_syntax_uid, items.c.size)
            .where(items.c.job_id == job_id, items.c.state == "pending", items.c.position > after)
            .order_by(items.c.position).limit(limit)).all()


def start_run(conn: Connection, job_id: int, run_number: int, started: float) -> None:
    """The job is ``active`` in run ``run_number`` (in the caller's transaction, which audits it)."""
    conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id).values(
        runs=run_number, started_at=started, heartbeat_at=started, state="active", last_error=None,
        finished_at=None))


def finish_run(conn: Connection, job_id: int, now: float, error: str | None) -> bool:
    """End a run (in the caller's transaction, which audits it): ``completed`` when no item is
    pending any more, else still ``active`` (resumable). Returns whether it completed."""
    still_pending = conn.execute(
        select(t.restore_items.c.id).where(t.restore_items.c.job_id == job_id,
                                           t.restore_items.c.state == "pending").limit(1)).first()
    finished = still_pending is None
    conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id).values(
        state="completed" if finished else "active", finished_at=now if finished else None,
        heartbeat_at=None, last_error=error))
    return finished


def record_outcomes(catalog: "Catalog", job_id: int, outcomes: list[ItemOutcome], now: float,
                    seconds_sending: float) -> None:
    """A batch of outcomes and the job's heartbeat (plus the sending time it took) in one
    write transaction: a kill loses at most one batch, which is then sent again."""
    with catalog.write() as conn:
        if outcomes:
            conn.execute(_RECORD_OUTCOME, [
                {"item_id": o.item_id, "new_state": o.state, "new_status": o.status, "new_detail": o.detail,
                 "new_syntax": o.sent_syntax, "new_run": o.run, "at": o.at} for o in outcomes])
        conn.execute(update(t.restore_jobs).where(t.restore_jobs.c.id == job_id).values(
            heartbeat_at=now, seconds_sending=t.restore_jobs.c.seconds_sending + seconds_sending))
