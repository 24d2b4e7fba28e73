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

from dicomvault.catalog import rebuild
from dicomvault.sites import SiteError

if TYPE_CHECKING:
    from dicomvault.archive.repository import Repository
    from dicomvault.catalog import Catalog
    from dicomvault.sites.base import Site

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


def owed_to_primary(catalog: "Catalog") -> int:
    return rebuild.count_owed(catalog, PRIMARY)


def _copy_one(repository: "Repository", primary: "Site", object_id: str, sha256: str) -> int:
    try:
        blob = repository.sealed(object_id, expected_sha256=sha256)
    except KeyError:
        raise SiteError("no replica holds a copy that verifies") from None
    primary.put_if_absent(object_id, blob)
    return len(blob)


def refill_primary(catalog: "Catalog", repository: "Repository", primary: "Site", *,
                   stop: threading.Event | None = None, workers: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> RefillReport:
    """Copy every object owed to the ``primary`` site from the replicas (``repository``
    reads them, verified); returns when none is left (or ``stop`` is set). Failures stay
    owed and are reported."""
    report = RefillReport()
    total = owed_to_primary(catalog)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refill") as pool:
        while not (stop is not None and stop.is_set()):
            batch = rebuild.owed_untried(catalog, PRIMARY, BATCH)
            if not batch:
                break

            def attempt(item: tuple[str, str]) -> tuple[str, int | str]:
                try:
                    return item[0], _copy_one(repository, primary, *item)
                except (SiteError, OSError) as exc:
                    return item[0], str(exc)

            outcomes = list(pool.map(attempt, batch))
            primary.flush()  # the new directory entries are durable before they count
            done = [object_id for object_id, outcome in outcomes if isinstance(outcome, int)]
            primary.release_intents(done)
            # attempts > 0 keeps a failure out of this run; `serve` retries it at its next start
            failed = [(object_id, outcome) for object_id, outcome in outcomes if isinstance(outcome, str)]
            rebuild.record_copied_back(catalog, PRIMARY, done, failed, time.time())
            report.failed += [{"object": object_id, "reason": reason} for object_id, reason in failed]
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

    def __init__(self, catalog: "Catalog", repository: "Repository", primary: "Site") -> None:
        self.catalog, self.repository, self.primary = catalog, repository, primary
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not owed_to_primary(self.catalog):
            return
        self._thread = threading.Thread(target=self._run, name="refill", daemon=True)
        self._thread.start()

    def _retry_all(self) -> None:
        rebuild.retry_owed(self.catalog, PRIMARY)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._retry_all()
                report = refill_primary(self.catalog, self.repository, self.primary, stop=self._stop, workers=2)
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
