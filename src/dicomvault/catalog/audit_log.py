"""The audit log's SQL: ``audit_log`` rows read and appended.

The hash chain itself (what a row's hash covers, how the chain is verified) is
``audit/chain.py``; it appends through these functions inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, insert, select, update

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


# --- the ATNA export's place in the log (audit/forward.py) ---------------------------------------

_EXPORT = t.audit_export


def rows_after(conn: Connection, last_id: int, limit: int) -> list[Any]:
    """Up to ``limit`` rows with an id above ``last_id``, oldest first: the next to export.
    Ids follow commit order because every write transaction is serialised (``Catalog.write``)."""
    return list(conn.execute(select(t.audit_log).where(t.audit_log.c.id > last_id)
                             .order_by(t.audit_log.c.id).limit(limit)))


def export_state(conn: Connection, name: str) -> Any:
    """The export's row (last_id, sent_at, error, error_at), or None before its first delivery."""
    return conn.execute(select(_EXPORT.c.last_id, _EXPORT.c.sent_at, _EXPORT.c.error, _EXPORT.c.error_at)
                        .where(_EXPORT.c.name == name)).first()


def _upsert_export(conn: Connection, name: str, values: dict[str, Any]) -> None:
    if conn.execute(update(_EXPORT).where(_EXPORT.c.name == name).values(**values)).rowcount == 0:
        conn.execute(insert(_EXPORT).values(name=name, **values))


def export_delivered(conn: Connection, name: str, last_id: int, now: float) -> None:
    """Rows up to ``last_id`` are delivered; the cursor never moves back (two ``serve``
    processes on one PostgreSQL catalog may both export)."""
    state = export_state(conn, name)
    _upsert_export(conn, name, {"last_id": max(last_id, state.last_id if state else 0), "sent_at": now,
                                "error": None, "error_at": None})


def export_failed(conn: Connection, name: str, error: str, now: float) -> None:
    """Remember why the export is stuck (shown by ``status``); the cursor stays."""
    _upsert_export(conn, name, {"error": error[:1000], "error_at": now})


def oldest_ts_after(conn: Connection, last_id: int) -> float | None:
    """When the oldest row not yet exported was written (how far behind the export is)."""
    return conn.execute(select(t.audit_log.c.ts).where(t.audit_log.c.id > last_id)
                        .order_by(t.audit_log.c.id).limit(1)).scalar()
