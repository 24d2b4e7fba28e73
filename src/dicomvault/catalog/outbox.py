"""The replication outbox's SQL: ``copies`` rows owed to a replica site and ``site_state``.

Every function takes the caller's connection: the replicator decides the transaction (a
verified batch and its audit row commit together), the catalog only says how to ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update

from . import schema as t

_DUE = (
    select(t.copies.c.object_id, t.copies.c.size, t.copies.c.attempts, t.copies.c.owed_since)
    .where(
        t.copies.c.site == bindparam("site"), t.copies.c.state == "owed",
        t.copies.c.next_attempt_at <= bindparam("now"),
    )
    .order_by(t.copies.c.next_attempt_at, t.copies.c.id)
    .limit(bindparam("limit"))
)
_VERIFIED = (
    update(t.copies)
    .where(t.copies.c.site == bindparam("b_site"), t.copies.c.object_id == bindparam("b_object_id"))
    .values(state="verified", attempts=t.copies.c.attempts + 1, last_error=None,
            copied_at=bindparam("b_now"), verified_at=bindparam("b_now"))
)
_FAILED = (
    update(t.copies)
    .where(t.copies.c.site == bindparam("b_site"), t.copies.c.object_id == bindparam("b_object_id"))
    .values(state=bindparam("b_state"), attempts=bindparam("b_attempts"), last_error=bindparam("b_error"),
            next_attempt_at=bindparam("b_next"))
)


def due_copies(conn: Connection, site: str, now: float, limit: int) -> list[Any]:
    """Owed copies of ``site`` whose next attempt is due, oldest attempt first, so a backed-off
    failure does not starve fresh objects: rows of (object_id, size, attempts, owed_since)."""
    return list(conn.execute(_DUE, {"site": site, "now": now, "limit": limit}))


def mark_copies_verified(conn: Connection, site: str, object_ids: Sequence[str], now: float) -> None:
    """A batch of copies proven on ``site``: only now do they count towards the copy policy."""
    conn.execute(_VERIFIED, [{"b_site": site, "b_object_id": oid, "b_now": now} for oid in object_ids])


def record_copy_failure(conn: Connection, site: str, object_id: str, *, dead: bool, attempts: int, error: str,
                        next_attempt_at: float) -> None:
    """A failed attempt: the row stays owed (backed off until ``next_attempt_at``) or goes dead."""
    conn.execute(_FAILED, {"b_site": site, "b_object_id": object_id, "b_state": "dead" if dead else "owed",
                           "b_attempts": attempts, "b_error": error, "b_next": next_attempt_at})


def reowe_dead_copies(conn: Connection, site: str) -> int:
    """Dead-lettered copies of ``site`` owed again with a fresh retry budget; returns how many."""
    result = conn.execute(
        update(t.copies).where(t.copies.c.site == site, t.copies.c.state == "dead")
        .values(state="owed", attempts=0, next_attempt_at=0.0)
    )
    return int(result.rowcount or 0)


def make_owed_copies_due(conn: Connection, site: str) -> None:
    """Everything owed to ``site`` becomes due now (the site is back; its backoff was the site's fault)."""
    conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.state == "owed")
                 .values(next_attempt_at=0.0))


def set_site_state(conn: Connection, site: str, reachable: bool, error: str | None, now: float) -> None:
    """Replace the one ``site_state`` row of ``site`` (the last reachability transition)."""
    conn.execute(delete(t.site_state).where(t.site_state.c.site == site))
    conn.execute(insert(t.site_state).values(site=site, reachable=int(reachable), last_error=error, changed_at=now))


def site_state_row(conn: Connection, site: str) -> Any:
    """The last persisted reachability transition of ``site``, or None when it never failed."""
    return conn.execute(select(t.site_state).where(t.site_state.c.site == site)).first()


def copy_lag(conn: Connection, site: str, now: float, window: float) -> dict[str, Any]:
    """Raw backlog and throughput figures of ``site``: owed (count, bytes, oldest owed_since),
    verified (count, bytes, newest verified_at), verified within ``window`` (count, bytes),
    dead letters, failing copies and the most recent error."""
    owed = conn.execute(
        select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0), func.min(t.copies.c.owed_since))
        .where(t.copies.c.site == site, t.copies.c.state == "owed")
    ).one()
    verified = conn.execute(
        select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0), func.max(t.copies.c.verified_at))
        .where(t.copies.c.site == site, t.copies.c.state == "verified")
    ).one()
    recent = conn.execute(
        select(func.count(), func.coalesce(func.sum(t.copies.c.size), 0))
        .where(t.copies.c.site == site, t.copies.c.state == "verified", t.copies.c.verified_at >= now - window)
    ).one()
    dead = conn.execute(
        select(func.count()).where(t.copies.c.site == site, t.copies.c.state == "dead")
    ).scalar_one()
    failing = conn.execute(
        select(func.count()).where(t.copies.c.site == site, t.copies.c.state == "owed",
                                   t.copies.c.last_error.is_not(None))
    ).scalar_one()
    last_error = conn.execute(text(
        "SELECT last_error FROM copies WHERE site = :site AND last_error IS NOT NULL"
        " ORDER BY next_attempt_at DESC LIMIT 1"
    ), {"site": site}).scalar()
    return {"owed": owed, "verified": verified, "recent": recent, "dead": dead, "failing": failing,
            "last_error": last_error}
