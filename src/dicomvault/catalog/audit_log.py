"""The audit log's SQL: ``audit_log`` rows read and appended.

The hash chain itself (what a row's hash covers, how the chain is verified) is
``audit/chain.py``; it appends through these functions inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, insert, select

from . import schema as t

_LAST_HASH = select(t.audit_log.c.hash).order_by(t.audit_log.c.id.desc()).limit(1)
_INSERT_ROW = insert(t.audit_log)


def last_hash(conn: Connection) -> str | None:
    """The newest row's hash (the next row links to it), or None for an empty log."""
    return conn.execute(_LAST_HASH).scalar()


def insert_row(conn: Connection, row: dict[str, Any]) -> None:
    """Append one row (ts, actor, action, subject, outcome, detail, prev_hash, hash)."""
    conn.execute(_INSERT_ROW, row)


def rows_in_order(conn: Connection) -> Iterator[Any]:
    """Every row, oldest first (streamed: a chain is walked once, start to end)."""
    return iter(conn.execute(select(t.audit_log).order_by(t.audit_log.c.id)))


def last_row_id(conn: Connection) -> int:
    """The newest row's id (0 for an empty log): how many events ``status`` reports."""
    return conn.execute(select(t.audit_log.c.id).order_by(t.audit_log.c.id.desc()).limit(1)).scalar() or 0


def last_event(conn: Connection, action: str) -> Any:
    """The newest row of ``action`` (ts, actor, outcome, detail), or None."""
    return conn.execute(select(t.audit_log.c.ts, t.audit_log.c.actor, t.audit_log.c.outcome, t.audit_log.c.detail)
                        .where(t.audit_log.c.action == action)
                        .order_by(t.audit_log.c.id.desc()).limit(1)).first()


def count_since(conn: Connection, action: str, since: float) -> int:
    """How many ``action`` rows were written at or after ``since`` (``status``: recent refusals)."""
    from sqlalchemy import func

    return conn.execute(select(func.count()).select_from(t.audit_log)
                        .where(t.audit_log.c.action == action, t.audit_log.c.ts >= since)).scalar() or 0
