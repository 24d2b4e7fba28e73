"""Refilling the primary site from the replicas after a rebuild on a new host.

After ``rebuild-index`` on a new machine the catalog is whole but the primary's object
folder is empty: its copy rows are ``owed``. Reads already work (``Repository.load`` falls
back to the replicas), so nothing waits for this; it just brings the on-site copy back,
object by object: read from the first replica in service where the object verifies, write
with the primary's durable put, read back, then mark the copy verified. ``serve`` runs it in
the background; ``rebuild-index --refill`` runs it to the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from dicomvault.catalog import schema as t
from dicomvault.sites import SiteError

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

PRIMARY = "primary"
BATCH = 500


@dataclass
class RefillReport:
    copied: int = 0
    bytes: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "bytes": self.bytes, "failed": self.failed}


def owed_to_primary(archive: "Archive") -> int:
    with archive.catalog.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.copies)
                                .where(t.copies.c.site == PRIMARY, t.copies.c.state == "owed")).scalar() or 0)


def _copy_one(archive: "Archive", object_id: str, sha256: str) -> int:
    try:
        blob = archive.repository.sealed(object_id, expected_sha256=sha256)
    except KeyError:
        raise SiteError("no replica holds a copy that verifies") from None
    site = archive.site
    site.put_if_absent(object_id, blob)
    return len(blob)


def refill_primary(archive: "Archive", *, stop: threading.Event | None = None, workers: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> RefillReport:
    """Copy every object owed to the primary from the replicas; returns when none is left
    (or ``stop`` is set). Failures stay owed and are reported."""
    report = RefillReport()
    total = owed_to_primary(archive)
    query = (select(t.copies.c.object_id, t.versions.c.sha256)
             .select_from(t.copies.join(t.versions, t.versions.c.object_id == t.copies.c.object_id))
             .where(t.copies.c.site == PRIMARY, t.copies.c.state == "owed", t.copies.c.attempts == 0)
             .limit(BATCH))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refill") as pool:
        while not (stop is not None and stop.is_set()):
            with archive.catalog.read() as conn:
                batch = [(r.object_id, r.sha256) for r in conn.execute(query)]
            if not batch:
                break

            def attempt(item: tuple[str, str]) -> tuple[str, int | str]:
                try:
                    return item[0], _copy_one(archive, *item)
                except (SiteError, OSError) as exc:
                    return item[0], str(exc)

            outcomes = list(pool.map(attempt, batch))
            archive.site.flush()  # the new directory entries are durable before they count
            done = [object_id for object_id, outcome in outcomes if isinstance(outcome, int)]
            archive.site.release_intents(done)
            now = time.time()
            with archive.catalog.write() as conn:
                if done:
                    conn.execute(update(t.copies).where(t.copies.c.site == PRIMARY, t.copies.c.object_id.in_(done))
                                 .values(state="verified", copied_at=now, verified_at=now, last_error=None))
                for object_id, outcome in outcomes:
                    if isinstance(outcome, str):
                        # attempts > 0 keeps it out of this run; `serve` retries it at its next start
                        conn.execute(update(t.copies).where(t.copies.c.site == PRIMARY,
                                                            t.copies.c.object_id == object_id)
                                     .values(attempts=t.copies.c.attempts + 1, last_error=outcome))
                        report.failed.append({"object": object_id, "reason": outcome})
            report.copied += len(done)
            report.bytes += sum(o for _, o in outcomes if isinstance(o, int))
            if progress:
                progress(report.copied + len(report.failed), total)
    if report.failed:
        log.error("ALERT: %d object(s) could not be copied back to the primary; see `dicomvault status`",
                  len(report.failed))
    return report


class PrimaryRefill:
    """Runs ``refill_primary`` in the background of ``serve`` while copies are owed to the
    primary; what failed (a replica unreachable, say) is tried again every ``RETRY`` seconds."""

    RETRY = 600.0

    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not owed_to_primary(self.archive):
            return
        self._thread = threading.Thread(target=self._run, name="refill", daemon=True)
        self._thread.start()

    def _retry_all(self) -> None:
        with self.archive.catalog.write() as conn:
            conn.execute(update(t.copies).where(t.copies.c.site == PRIMARY, t.copies.c.state == "owed")
                         .values(attempts=0))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._retry_all()
                report = refill_primary(self.archive, stop=self._stop, workers=2)
                log.warning("primary refilled from the replicas: %d object(s), %d failed", report.copied,
                            len(report.failed))
                if not report.failed:
                    return
            except Exception:  # noqa: BLE001 - must never take `serve` down
                log.exception("refilling the primary failed; trying again in %.0f s", self.RETRY)
            self._stop.wait(self.RETRY)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
