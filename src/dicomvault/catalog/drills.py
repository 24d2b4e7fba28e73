"""Restore drills in the catalog: the ``drill_runs`` rows (one per site per drill) and the
questions a drill asks when it picks the studies to restore from a site.

The run states belong to ``jobs/drill``, which passes them in. A function that takes
``conn`` runs in the caller's transaction (each change of a run is audited in it); one that
takes ``catalog`` is a transaction by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, update

from . import schema as t
from .chunks import in_chunks

if TYPE_CHECKING:
    from .db import Catalog



# --- the drill_runs rows -------------------------------------------------------------------

def add_run(catalog: "Catalog", *, site: str, actor: str, target: str, started_at: float, state: str) -> int:
    """Insert a site's drill row; returns its id."""
    with catalog.write() as conn:
        key = conn.execute(insert(t.drill_runs).values(
            site=site, actor=actor, started_at=started_at, state=state, target=target)).inserted_primary_key
    assert key is not None
    return int(key[0])


def record_outcome(conn: Connection, run_id: int, *, state: str, finished_at: float, studies: int, instances: int,
                   bytes_: int, seconds: float, picks: str, failures: str) -> None:
    """The drill's verdict and what it restored (``picks`` and ``failures`` as JSON)."""
    conn.execute(update(t.drill_runs).where(t.drill_runs.c.id == run_id).values(
        state=state, finished_at=finished_at, studies=studies, instances=instances, bytes=bytes_,
        seconds=seconds, picks=picks, failures=failures))


def runs_in_state(conn: Connection, state: str) -> list[Any]:
    """(id, site) of every run in ``state``."""
    runs = t.drill_runs
    return conn.execute(select(runs.c.id, runs.c.site).where(runs.c.state == state)).all()


def set_run_state(conn: Connection, run_id: int, state: str, finished_at: float) -> None:
    runs = t.drill_runs
    conn.execute(update(runs).where(runs.c.id == run_id).values(state=state, finished_at=finished_at))


def last_started_per_site(catalog: "Catalog", states: Sequence[str]) -> dict[str, float]:
    """Per site, when its latest run in one of ``states`` started."""
    runs = t.drill_runs
    with catalog.read() as conn:
        return {row.site: float(row.last) for row in conn.execute(
            select(runs.c.site, func.max(runs.c.started_at).label("last"))
            .where(runs.c.state.in_(states)).group_by(runs.c.site))}


def recent_runs(catalog: "Catalog", limit: int) -> list[Any]:
    """The latest ``limit`` run rows of every site, newest first."""
    with catalog.read() as conn:
        return conn.execute(select(t.drill_runs).order_by(t.drill_runs.c.id.desc()).limit(limit)).all()


def latest_run_per_site(catalog: "Catalog", *, state: str | None = None,
                        states: Sequence[str] | None = None) -> dict[str, Any]:
    """Per site, its newest run row in ``state`` (or in one of ``states``)."""
    if (state is None) == (states is None):
        raise ValueError("give exactly one of state and states")
    runs = t.drill_runs
    where = runs.c.state == state if state is not None else runs.c.state.in_(states)
    newest = select(func.max(runs.c.id)).where(where).group_by(runs.c.site)
    with catalog.read() as conn:
        return {row.site: row for row in conn.execute(select(runs).where(runs.c.id.in_(newest)))}


# --- picking studies -----------------------------------------------------------------------

def count_studies_dated(catalog: "Catalog", date: str) -> int:
    """How many studies carry this Study Date."""
    with catalog.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.studies)
                                .where(t.studies.c.study_date == date)).scalar() or 0)


def has_studies(catalog: "Catalog") -> bool:
    with catalog.read() as conn:
        return conn.execute(select(t.studies.c.id).limit(1)).first() is not None


def _studies(catalog: "Catalog", order: Any, date: str | None, limit: int) -> list[tuple[str, str]]:
    query = select(t.studies.c.study_uid, t.studies.c.study_date).order_by(order).limit(limit)
    if date is not None:
        query = query.where(t.studies.c.study_date == date)
    with catalog.read() as conn:
        return [(row.study_uid, row.study_date or "") for row in conn.execute(query)]


def newest_studies(catalog: "Catalog", limit: int, date: str | None = None) -> list[tuple[str, str]]:
    """(Study Instance UID, Study Date) of the latest arrived studies (of ``date`` if given)."""
    return _studies(catalog, t.studies.c.created_at.desc(), date, limit)


def random_studies(catalog: "Catalog", limit: int) -> list[tuple[str, str]]:
    """(Study Instance UID, Study Date) of ``limit`` studies at random."""
    return _studies(catalog, func.random(), None, limit)


def verified_on_site(catalog: "Catalog", site: str, object_ids: Iterable[str]) -> set[str]:
    """Which of ``object_ids`` ``site`` holds a verified copy of (one read transaction)."""
    wanted = list(object_ids)
    held: set[str] = set()
    with catalog.read() as conn:
        for chunk in in_chunks(wanted):
            held.update(conn.execute(select(t.copies.c.object_id).where(
                t.copies.c.site == site, t.copies.c.state == "verified",
                t.copies.c.object_id.in_(chunk))).scalars())
    return held
