"""What ``rebuild-index`` and the primary's refill ask of the catalog after a snapshot is
loaded (``catalog/snapshots.py`` loads it): how much it indexes, and the copy rows squared
with what the sites really hold, then marked as objects are copied back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from . import schema as t
from .chunks import in_chunks

if TYPE_CHECKING:
    from .db import Catalog

_IDS_PER_UPDATE = 2000  # copy ids per UPDATE ... IN (...): under every database's parameter limit


def count_versions(catalog: "Catalog") -> int:
    """Stored versions indexed: a rebuild refuses to overwrite a catalog that has any."""
    with catalog.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.versions)).scalar() or 0)


def count_instances_and_studies(catalog: "Catalog") -> tuple[int, int]:
    with catalog.read() as conn:
        instances = int(conn.execute(select(func.count()).select_from(t.instances)).scalar() or 0)
        studies = int(conn.execute(select(func.count()).select_from(t.studies)).scalar() or 0)
    return instances, studies


def copies_on_site(catalog: "Catalog", site: str) -> list[Any]:
    """(id, object_id, state) of every copy row the catalog keeps for ``site``."""
    with catalog.read() as conn:
        return conn.execute(select(t.copies.c.id, t.copies.c.object_id, t.copies.c.state)
                            .where(t.copies.c.site == site)).all()


def square_copies(catalog: "Catalog", owed: list[int], held: list[int], now: float) -> None:
    """In one write transaction: copies the site lacks are owed again (retried at once), and
    copies it holds count as held, because the snapshot said what the sites held then, not now."""
    with catalog.write() as conn:
        for chunk in in_chunks(owed, _IDS_PER_UPDATE):
            conn.execute(update(t.copies).where(t.copies.c.id.in_(chunk))
                         .values(state="owed", attempts=0, next_attempt_at=0.0, owed_since=now,
                                 verified_at=None, last_error="not on the site at rebuild-index"))
        for chunk in in_chunks(held, _IDS_PER_UPDATE):
            conn.execute(update(t.copies).where(t.copies.c.id.in_(chunk))
                         .values(state="verified", copied_at=now, verified_at=None, last_error=None))


# --- copying back to the primary ---------------------------------------------------------------

def count_owed(catalog: "Catalog", site: str) -> int:
    with catalog.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.copies)
                                .where(t.copies.c.site == site, t.copies.c.state == "owed")).scalar() or 0)


def owed_untried(catalog: "Catalog", site: str, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` (object id, SHA-256) owed to ``site`` and not yet tried in this refill
    (a failure raises ``attempts``, so a refill run does not spin on the same objects)."""
    query = (select(t.copies.c.object_id, t.versions.c.sha256)
             .select_from(t.copies.join(t.versions, t.versions.c.object_id == t.copies.c.object_id))
             .where(t.copies.c.site == site, t.copies.c.state == "owed", t.copies.c.attempts == 0)
             .limit(limit))
    with catalog.read() as conn:
        return [(r.object_id, r.sha256) for r in conn.execute(query)]


def record_copied_back(catalog: "Catalog", site: str, done: list[str], failed: list[tuple[str, str]],
                       now: float) -> None:
    """One write transaction per batch: copies made are verified (they were read back), each
    failure ``(object id, reason)`` counts one more attempt and keeps its reason."""
    with catalog.write() as conn:
        if done:
            conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.object_id.in_(done))
                         .values(state="verified", copied_at=now, verified_at=now, last_error=None))
        for object_id, reason in failed:
            conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.object_id == object_id)
                         .values(attempts=t.copies.c.attempts + 1, last_error=reason))


def retry_owed(catalog: "Catalog", site: str) -> None:
    """Every copy owed to ``site`` may be tried again (a new refill run)."""
    with catalog.write() as conn:
        conn.execute(update(t.copies).where(t.copies.c.site == site, t.copies.c.state == "owed")
                     .values(attempts=0))
