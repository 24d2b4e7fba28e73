"""Alerts in the catalog: the ``alerts`` rows (one per occurrence of a condition) and the
``alert_channels`` delivery state. The engine (jobs/alerts/engine.py) owns what they mean.

A function that takes ``conn`` runs in the caller's transaction (the caller audits in it); one
that takes ``catalog`` is a transaction by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update

from . import schema as t

if TYPE_CHECKING:
    from .db import Catalog

FIELDS = ("id", "key", "severity", "text", "raised_at", "last_sent_at", "reminders", "acknowledged_by",
          "acknowledged_at", "ack_note", "resolved_at")


def _row(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in FIELDS}


def open_alerts(conn: Connection) -> list[dict[str, Any]]:
    """Every unresolved alert, oldest first."""
    a = t.alerts
    return [_row(r) for r in conn.execute(select(a).where(a.c.resolved_at.is_(None)).order_by(a.c.id))]


def list_alerts(catalog: "Catalog", include_resolved: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
    """Open alerts (oldest first), or with ``include_resolved`` the newest ``limit`` of all."""
    a = t.alerts
    with catalog.read() as conn:
        if not include_resolved:
            return open_alerts(conn)
        rows = conn.execute(select(a).order_by(a.c.id.desc()).limit(limit)).all()
    return [_row(r) for r in reversed(rows)]


def get_alert(conn: Connection, alert_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(t.alerts).where(t.alerts.c.id == alert_id)).first()
    return _row(row) if row is not None else None


def add_alert(conn: Connection, *, key: str, severity: str, text: str, raised_at: float) -> int:
    result = conn.execute(insert(t.alerts).values(key=key, severity=severity, text=text, raised_at=raised_at))
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def update_alert(conn: Connection, alert_id: int, **values: Any) -> None:
    """Set columns of one alert (severity/text as the condition changes, last_sent_at, reminders,
    acknowledged_by/at, ack_note, resolved_at)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"no such alert column(s): {', '.join(sorted(unknown))}")
    conn.execute(update(t.alerts).where(t.alerts.c.id == alert_id).values(**values))


def set_channel_states(catalog: "Catalog", states: dict[str, dict[str, Any]], now: float) -> None:
    """Replace the ``alert_channels`` rows with ``states`` (name -> ok, error, failing_since,
    last_ok_at, pending): the channels configured now, nothing else."""
    c = t.alert_channels
    with catalog.write() as conn:
        conn.execute(delete(c))
        if states:
            conn.execute(insert(c), [{"name": name, "ok": bool(s["ok"]), "error": s.get("error"),
                                      "failing_since": s.get("failing_since"), "last_ok_at": s.get("last_ok_at"),
                                      "pending": int(s.get("pending", 0)), "updated_at": now}
                                     for name, s in states.items()])


def channel_states(conn: Connection) -> dict[str, dict[str, Any]]:
    c = t.alert_channels
    return {r.name: {"ok": bool(r.ok), "error": r.error, "failing_since": r.failing_since,
                     "last_ok_at": r.last_ok_at, "pending": r.pending, "updated_at": r.updated_at}
            for r in conn.execute(select(c).order_by(c.c.name))}
