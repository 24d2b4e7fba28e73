"""The ``reconcile_runs`` rows: one per reconcile with a PACS, written as it starts and
finishes, read back by ``status`` and the schedule.

The run states (running, completed, failed) belong to ``jobs/reconcile``, which passes
them in. A function that takes ``conn`` runs in the caller's transaction (finishing a run
is audited in the same transaction); one that takes ``catalog`` is a transaction by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, update

from . import schema as t

if TYPE_CHECKING:
    from .db import Catalog


def add_run(catalog: "Catalog", *, peer: str, date_from: str, date_to: str, backfill: bool, state: str,
            actor: str, started_at: float) -> int:
    """Insert a run's row (with an empty report); returns its id."""
    with catalog.write() as conn:
        return int(conn.execute(insert(t.reconcile_runs).values(
            peer=peer, date_from=date_from, date_to=date_to, backfill=int(backfill),
            state=state, actor=actor, started_at=started_at, report="{}",
        )).inserted_primary_key[0])


def record_outcome(conn: Connection, run_id: int, *, state: str, finished_at: float, pacs_studies: int,
                   vault_studies: int, missing_in_vault: int, missing_in_pacs: int, backfilled_instances: int,
                   report: str, error: str | None) -> None:
    """The run's outcome, summary counts and JSON report."""
    conn.execute(update(t.reconcile_runs).where(t.reconcile_runs.c.id == run_id).values(
        state=state, finished_at=finished_at, pacs_studies=pacs_studies, vault_studies=vault_studies,
        missing_in_vault=missing_in_vault, missing_in_pacs=missing_in_pacs,
        backfilled_instances=backfilled_instances, report=report, error=error,
    ))


def fail_if_still(conn: Connection, run_id: int, running: str, failed: str, at: float, error: str) -> bool:
    """Mark the run ``failed`` only if its row is still ``running`` (a run that finished in
    the meantime keeps its outcome); returns whether it was marked."""
    return bool(conn.execute(update(t.reconcile_runs).where(
        t.reconcile_runs.c.id == run_id, t.reconcile_runs.c.state == running,
    ).values(state=failed, finished_at=at, error=error)).rowcount)


def last_started_by(catalog: "Catalog", actor: str, peer: str) -> float | None:
    """When ``actor`` last started a run with ``peer``, or None."""
    with catalog.read() as conn:
        return conn.execute(select(func.max(t.reconcile_runs.c.started_at)).where(
            t.reconcile_runs.c.actor == actor, t.reconcile_runs.c.peer == peer)).scalar()


def last_started_by_any(conn: Connection, actor: str, peers: list[str]) -> float | None:
    """When ``actor`` last started a run with any of ``peers``, or None."""
    runs = t.reconcile_runs
    return conn.execute(select(func.max(runs.c.started_at)).where(
        runs.c.actor == actor, runs.c.peer.in_(peers))).scalar()


def latest_run_per_peer(conn: Connection, *, state: str | None = None,
                        not_state: str | None = None) -> dict[str, Any]:
    """Per peer, its newest run row in ``state`` (or in any state but ``not_state``)."""
    if (state is None) == (not_state is None):
        raise ValueError("give exactly one of state and not_state")
    runs = t.reconcile_runs
    where = runs.c.state == state if state is not None else runs.c.state != not_state
    newest = select(func.max(runs.c.id)).where(where).group_by(runs.c.peer)
    return {row.peer: row for row in conn.execute(select(runs).where(runs.c.id.in_(newest)))}
