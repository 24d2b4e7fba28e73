"""The audit hash chain.

Each row's hash is SHA-256 over the previous row's hash and this row's canonical JSON, so a
row changed, inserted or removed anywhere breaks every hash after it. ``append`` must run
inside the caller's catalog write transaction: the audit row then commits or vanishes
together with the change it records, and the catalog's write lock keeps the chain linear.
The rows are read and written by ``catalog/audit_log.py``; what they hash is decided here.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from dicomvault.catalog import audit_log

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str
    subject: str = ""
    outcome: str = "success"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows: int
    first_bad_id: int | None = None
    reason: str = ""


def _row_hash(prev_hash: str, ts: float, actor: str, action: str, subject: str, outcome: str, detail: str) -> str:
    canonical = json.dumps([prev_hash, repr(ts), actor, action, subject, outcome, detail], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(conn: Connection, event: AuditEvent, ts: float | None = None) -> str:
    """Append one event in the caller's transaction; returns its hash."""
    ts = time.time() if ts is None else ts
    prev = audit_log.last_hash(conn) or GENESIS
    detail = json.dumps(event.detail, separators=(",", ":"), sort_keys=True, default=str)
    digest = _row_hash(prev, ts, event.actor, event.action, event.subject, event.outcome, detail)
    audit_log.insert_row(conn, {
        "ts": ts, "actor": event.actor, "action": event.action, "subject": event.subject,
        "outcome": event.outcome, "detail": detail, "prev_hash": prev, "hash": digest,
    })
    return digest


def verify_chain(conn: Connection) -> ChainReport:
    """Walk the whole chain; report the first row whose link or hash does not hold."""
    prev = GENESIS
    count = 0
    for row in audit_log.rows_in_order(conn):
        count += 1
        if row.prev_hash != prev:
            return ChainReport(False, count, row.id, "link to the previous row is broken (row removed or inserted)")
        expected = _row_hash(prev, row.ts, row.actor, row.action, row.subject, row.outcome, row.detail)
        if expected != row.hash:
            return ChainReport(False, count, row.id, "row content does not match its hash (row altered)")
        prev = row.hash
    return ChainReport(True, count)
