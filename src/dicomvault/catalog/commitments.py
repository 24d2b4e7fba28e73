"""Storage commitment's SQL: ``commitment_requests`` and their ``commitment_items``, and the
catalog facts an evaluation reads (which version of an instance is stored; which sites hold
a verified copy of it is ``catalog/copies.py``).

Every function takes the caller's connection, so the service keeps its transactions: a
request and its audit row are written together, decisions and the request's state too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from . import schema as t
from .chunks import in_chunks

# Request states (commitment_requests.state) and item states (commitment_items.state).
PENDING, DECIDED, DELIVERED = "pending", "decided", "delivered"
COMMITTED, FAILED = "committed", "failed"

_REPORTS_PER_ROUND = 50
_UNDELIVERABLE_PER_ROUND = 1000

_r, _i = t.commitment_requests, t.commitment_items


# --- receiving a request ----------------------------------------------------------------------


def find_request(conn: Connection, transaction_uid: str) -> Any:
    """The request already filed under ``transaction_uid`` (id, calling_ae), or None: a
    retransmitted N-ACTION must not be processed twice."""
    return conn.execute(select(_r.c.id, _r.c.calling_ae).where(_r.c.transaction_uid == transaction_uid)).first()


def request_references(conn: Connection, request_pk: int) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every item of a request, in request order."""
    return [(row.sop_class_uid, row.sop_instance_uid) for row in conn.execute(
        select(_i.c.sop_class_uid, _i.c.sop_instance_uid).where(_i.c.request_pk == request_pk).order_by(_i.c.position))]


def add_request(conn: Connection, transaction_uid: str, calling_ae: str, called_ae: str, address: str,
                items: Sequence[tuple[str, str]], now: float) -> int:
    """File a pending request and its pending items; returns the request's id."""
    pk = conn.execute(insert(_r).values(
        transaction_uid=transaction_uid, calling_ae=calling_ae, called_ae=called_ae, peer_address=address,
        state=PENDING, received_at=now, attempts=0, next_attempt_at=0.0,
    )).inserted_primary_key[0]
    conn.execute(insert(_i), [
        {"request_pk": pk, "position": i, "sop_class_uid": sop_class, "sop_instance_uid": sop_instance,
         "state": PENDING}
        for i, (sop_class, sop_instance) in enumerate(items)
    ])
    return int(pk)


# --- evaluating -------------------------------------------------------------------------------


def oldest_pending_received_at(conn: Connection) -> float | None:
    """When the oldest undecided request arrived (its timeout falls due first), or None."""
    return conn.execute(select(func.min(_r.c.received_at)).where(_r.c.state == PENDING)).scalar()


def evaluation_inputs(conn: Connection, sites: Iterable[str]) -> tuple[Any, ...]:
    """What decisions depend on: the newest version (an instance arrived), the newest request
    and the newest verification per counted site (a copy became verified). If none moved,
    evaluating again cannot decide more."""
    newest_version = conn.execute(select(func.max(t.versions.c.id))).scalar()
    newest_request = conn.execute(select(func.max(_r.c.id))).scalar()
    verified = tuple(conn.execute(select(func.max(t.copies.c.verified_at)).where(t.copies.c.site == site)).scalar()
                     for site in sites)
    return (newest_version, newest_request, verified)


def pending_requests(conn: Connection) -> list[Any]:
    """Undecided requests (id, transaction_uid, received_at), in arrival order."""
    return list(conn.execute(select(_r.c.id, _r.c.transaction_uid, _r.c.received_at)
                             .where(_r.c.state == PENDING).order_by(_r.c.id)))


def pending_items(conn: Connection, request_pk: int) -> list[Any]:
    """Undecided items (id, sop_class_uid, sop_instance_uid) of one request."""
    return list(conn.execute(select(_i.c.id, _i.c.sop_class_uid, _i.c.sop_instance_uid)
                             .where(_i.c.request_pk == request_pk, _i.c.state == PENDING)))


def latest_stored(conn: Connection, sop_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (stored SOP Class UID, object id of its latest version); a
    commitment is about the instance as it is now, so older versions do not count."""
    result: dict[str, tuple[str, str, int]] = {}
    for chunk in in_chunks(sorted(set(sop_uids))):
        rows = conn.execute(
            select(t.instances.c.sop_instance_uid, t.instances.c.sop_class_uid, t.versions.c.object_id,
                   t.versions.c.version)
            .select_from(t.instances.join(t.versions, t.versions.c.instance_pk == t.instances.c.id))
            .where(t.instances.c.sop_instance_uid.in_(chunk))
        )
        for row in rows:
            current = result.get(row.sop_instance_uid)
            if current is None or row.version > current[2]:
                result[row.sop_instance_uid] = (row.sop_class_uid, row.object_id, row.version)
    return {uid: (cls, obj) for uid, (cls, obj, _v) in result.items()}


def record_decisions(conn: Connection, decisions: Sequence[dict[str, Any]]) -> None:
    """Decide items still pending; ``decisions`` are ``decision()`` dicts. An item already
    decided (by another evaluator) keeps its first decision."""
    conn.execute(
        update(_i).where(_i.c.id == bindparam("b_id"), _i.c.state == PENDING)
        .values(state=bindparam("b_state"), failure_reason=bindparam("b_reason"), reason=bindparam("b_text"),
                decided_at=bindparam("b_at")),
        decisions,
    )


def decision(item_id: int, state: str, now: float, reason: int | None = None,
             text: str | None = None) -> dict[str, Any]:
    """One item's decision, as ``record_decisions`` takes it."""
    return {"b_id": item_id, "b_state": state, "b_reason": reason, "b_text": text, "b_at": now}


def count_pending_items(conn: Connection, request_pk: int) -> int:
    return int(conn.execute(select(func.count()).select_from(_i).where(
        _i.c.request_pk == request_pk, _i.c.state == PENDING)).scalar_one())


def mark_request_decided(conn: Connection, request_pk: int, now: float) -> None:
    """Every item is decided: the report is due at once."""
    conn.execute(update(_r).where(_r.c.id == request_pk, _r.c.state == PENDING)
                 .values(state=DECIDED, decided_at=now, next_attempt_at=0.0))


# --- delivering -------------------------------------------------------------------------------


def due_reports(conn: Connection, now: float, calling_aes: Iterable[str]) -> list[Any]:
    """Decided requests whose next delivery attempt is due, from requesters we can reach
    (``calling_aes``: those with a [peers] entry): (id, transaction_uid, calling_ae, attempts)."""
    return list(conn.execute(
        select(_r.c.id, _r.c.transaction_uid, _r.c.calling_ae, _r.c.attempts)
        .where(_r.c.state == DECIDED, _r.c.next_attempt_at <= now, _r.c.calling_ae.in_(sorted(calling_aes)))
        .order_by(_r.c.next_attempt_at, _r.c.id)
        .limit(_REPORTS_PER_ROUND)
    ))


def report_items(conn: Connection, request_pk: int) -> list[Any]:
    """Every item of a request with its decision, in request order, for its N-EVENT-REPORT."""
    return list(conn.execute(
        select(_i.c.sop_class_uid, _i.c.sop_instance_uid, _i.c.state, _i.c.failure_reason)
        .where(_i.c.request_pk == request_pk).order_by(_i.c.position)
    ))


def undeliverable_requests(conn: Connection, calling_aes: Iterable[str]) -> list[Any]:
    """Decided requests from requesters without a [peers] entry: (id, transaction_uid, calling_ae)."""
    return list(conn.execute(
        select(_r.c.id, _r.c.transaction_uid, _r.c.calling_ae)
        .where(_r.c.state == DECIDED, _r.c.calling_ae.not_in(sorted(calling_aes)))
        .order_by(_r.c.id).limit(_UNDELIVERABLE_PER_ROUND)
    ))


def note_request_error(conn: Connection, request_pk: int, error: str) -> None:
    """Why a request's report is not going out (shown by ``status``)."""
    conn.execute(update(_r).where(_r.c.id == request_pk).values(last_error=error))


def record_delivery_failure(conn: Connection, request_pk: int, attempts: int, next_attempt_at: float,
                            error: str) -> None:
    conn.execute(update(_r).where(_r.c.id == request_pk)
                 .values(attempts=attempts, next_attempt_at=next_attempt_at, last_error=error))


def mark_request_delivered(conn: Connection, request_pk: int, attempts: int, now: float) -> None:
    """The requester answered the N-EVENT-REPORT with success: the request is done."""
    conn.execute(update(_r).where(_r.c.id == request_pk)
                 .values(state=DELIVERED, delivered_at=now, attempts=attempts, last_error=None))


# --- status -----------------------------------------------------------------------------------


def request_counts(conn: Connection) -> list[Any]:
    """(state, calling_ae, count, oldest received_at) per state and requester."""
    return list(conn.execute(
        select(_r.c.state, _r.c.calling_ae, func.count(), func.min(_r.c.received_at))
        .group_by(_r.c.state, _r.c.calling_ae)
    ))


def failing_deliveries(conn: Connection) -> int:
    """Decided requests whose report failed at least once."""
    return int(conn.execute(select(func.count()).select_from(_r).where(
        _r.c.state == DECIDED, _r.c.attempts > 0)).scalar_one())


def last_undelivered_error(conn: Connection) -> str | None:
    """The newest error recorded on a request not yet delivered."""
    return conn.execute(
        select(_r.c.last_error).where(_r.c.state != DELIVERED, _r.c.last_error.is_not(None))
        .order_by(_r.c.id.desc()).limit(1)
    ).scalar()

