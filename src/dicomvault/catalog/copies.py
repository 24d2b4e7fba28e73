"""Facts about copies (the ``copies`` table): which sites hold a verified copy of an object,
which copies are due to be proven again, and when each was last proven.

What those facts mean for the copy policy is decided in ``archive/copies.py``; the outbox's
own rows (owed, retried, dead) are ``catalog/outbox.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from . import schema as t
from .chunks import in_chunks

def verified_sites(conn: Connection, object_ids: Sequence[str]) -> dict[str, list[str]]:
    """Object id -> sites holding a verified copy of it (what the copy policy counts)."""
    result: dict[str, list[str]] = {}
    for chunk in in_chunks(sorted(set(object_ids))):
        for row in conn.execute(select(t.copies.c.object_id, t.copies.c.site).where(
                t.copies.c.object_id.in_(chunk), t.copies.c.state == "verified")):
            result.setdefault(row.object_id, []).append(row.site)
    return result


def copies_to_prove(conn: Connection, site: str, due_before: float | None = None,
                    limit: int | None = None) -> list[tuple[str, str, int]]:
    """(object id, SHA-256, original size) of the copies ``site`` is said to hold: all, or
    (for the scrub) the ``limit`` least recently proven ones not proven since ``due_before``,
    never-proven first."""
    query = (select(t.copies.c.object_id, t.versions.c.sha256, t.versions.c.size_original)
             .select_from(t.copies.join(t.versions, t.versions.c.object_id == t.copies.c.object_id))
             .where(t.copies.c.site == site, t.copies.c.state == "verified"))
    if due_before is not None:
        query = (query.where(or_(t.copies.c.verified_at.is_(None), t.copies.c.verified_at < due_before))
                 .order_by(t.copies.c.verified_at.is_not(None), t.copies.c.verified_at))
    if limit is not None:
        query = query.limit(limit)
    return [(r.object_id, r.sha256, int(r.size_original)) for r in conn.execute(query)]


def mark_copies_proven(conn: Connection, site: str, object_ids: Sequence[str], now: float) -> None:
    """These copies were just read back and authenticated: the scrub need not look again for a period."""
    conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.object_id.in_(object_ids))
                 .values(verified_at=now))


def proof_summary(conn: Connection, site: str, fresh_since: float, overdue_before: float) -> dict[str, Any]:
    """Verified copies of ``site``: how many, how many proven since ``fresh_since``, how many
    not proven since ``overdue_before``, and the oldest proof (None when there is none)."""
    copies = t.copies
    verified = (copies.c.site == site, copies.c.state == "verified")

    def count(*where: Any) -> int:
        return int(conn.execute(select(func.count()).where(*verified, *where)).scalar_one())

    def older_than(when: float) -> int:  # ranges of ix_copies_site_state_verified_size: short when scrubbed
        return count(copies.c.verified_at.is_(None)) + count(copies.c.verified_at < when)

    # The total is one pass over the covering index; the rest are short ranges of it (0019).
    total = count()
    oldest = conn.execute(select(func.min(copies.c.verified_at)).where(*verified)).scalar()
    return {"copies": total, "fresh": total - older_than(fresh_since), "overdue": older_than(overdue_before),
            "oldest": oldest}
