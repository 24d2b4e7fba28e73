"""Quarantine's SQL: the ``site_quarantine`` rows (one per quarantine, open until cleared).

Functions take the caller's connection so a quarantine and its audit row commit together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from . import schema as t

_q = t.site_quarantine


def active_quarantines(conn: Connection) -> list[Any]:
    """Quarantines not cleared yet: (site, since, reason)."""
    return conn.execute(select(_q.c.site, _q.c.since, _q.c.reason).where(_q.c.cleared_at.is_(None))).all()


def last_cleared_at(conn: Connection, site: str) -> float | None:
    """When an operator last cleared a quarantine of ``site``, or None if never."""
    return conn.execute(select(_q.c.cleared_at).where(_q.c.site == site, _q.c.cleared_at.is_not(None))
                        .order_by(_q.c.cleared_at.desc()).limit(1)).scalar()


def add_quarantine(conn: Connection, site: str, since: float, reason: str) -> None:
    conn.execute(insert(_q).values(site=site, since=since, reason=reason))


def clear_quarantine(conn: Connection, site: str, now: float, actor: str) -> int:
    """Close the open quarantine of ``site``, naming who cleared it; returns rows closed (0: none open)."""
    return int(conn.execute(update(_q).where(_q.c.site == site, _q.c.cleared_at.is_(None))
                            .values(cleared_at=now, cleared_by=actor)).rowcount or 0)
