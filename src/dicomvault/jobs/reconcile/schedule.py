"""The ``[reconcile]`` schedule inside ``dicomvault serve``: a background thread that runs a
reconcile with the configured PACS every ``every`` over the last ``window_days`` days.

Kept apart from the run (``reconcile``) because only ``serve`` needs a thread, a timer and a
clean stop; ``dicomvault reconcile`` runs the same :class:`Reconciler` in the foreground.
Its runs are recorded with the actor ``SCHEDULER_ACTOR`` (``reconcile_runs``), which is how
``status`` tells when the schedule has stopped running.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable

from dicomvault.catalog import Catalog
from dicomvault.config import Settings
from dicomvault.jobs.reconcile.job import Reconciler, resolve_peer
from dicomvault.jobs.reconcile.report import FAILED, ReconcileReport
from dicomvault.jobs.reconcile.runs import SCHEDULER_ACTOR, last_scheduled_run

log = logging.getLogger(__name__)


class ReconcileScheduler:
    """Runs the ``[reconcile]`` comparison every ``every`` in a background thread of ``serve``.

    The first run is due one period after the previous scheduled run recorded in the catalog
    (so a restart does not re-run early), or shortly after start when none is recorded or it
    is overdue. ``stop()`` never hangs: the wait is an Event, and a run in progress is
    interrupted (its association aborted; the run is recorded as failed "interrupted").
    """

    STARTUP_DELAY = 30.0  # seconds after start before an overdue run (the listener comes up first)

    def __init__(self, catalog: Catalog, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.settings = settings
        self.config = settings.reconcile
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Reconciler | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.peer)

    def start(self) -> None:
        if not self.enabled:
            log.info("scheduled reconcile off ([reconcile] peer is empty)")
            return
        self.peer = resolve_peer(self.settings, self.config.peer)
        self._thread = threading.Thread(target=self._loop, name="reconcile-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduled reconcile with PACS %s every %s over the last %d day(s)%s", self.peer.name,
                 self.config.every, self.config.window_days, " with backfill" if self.config.backfill else "")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        current = self._current
        if current is not None:
            current.abort()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive() and current is not None:
                log.warning("scheduled reconcile did not stop within %gs; recording it as interrupted", timeout)
                current.abandon("interrupted: the server stopped")
            self._thread = None

    def _first_due(self, period: float) -> float:
        now = self.clock()
        last = last_scheduled_run(self.catalog, self.peer.name)
        soon = now + min(period, self.STARTUP_DELAY)
        return soon if last is None else max(soon, last + period)

    def _loop(self) -> None:
        period = self.config.period_seconds
        try:
            due = self._first_due(period)
        except Exception:  # noqa: BLE001 - a catalog hiccup must not kill the schedule
            log.exception("scheduled reconcile: cannot read the last run; running one period from now")
            due = self.clock() + period
        while not self._stop.wait(max(0.0, due - self.clock())):
            started = self.clock()
            self.run_once()
            due = started + period

    def run_once(self) -> ReconcileReport | None:
        today = _dt.date.today()
        since = today - _dt.timedelta(days=self.config.window_days - 1)
        try:
            run = Reconciler(self.catalog, self.settings, self.peer, since, today, chunk_days=1,
                             backfill=self.config.backfill, actor=SCHEDULER_ACTOR, cancelled=self._stop)
            self._current = run
            report = run.run()
        except Exception:  # noqa: BLE001 - logged; the next period tries again
            log.exception("scheduled reconcile with %s could not run", self.peer.name)
            return None
        finally:
            self._current = None
        if report.state == FAILED:
            log.warning("scheduled reconcile with %s failed: %s", self.peer.name, report.error)
        else:
            log.info("scheduled reconcile with %s (%s-%s): %d missing in the vault (%d instances), %d only in the "
                     "vault%s", self.peer.name, report.date_from, report.date_to, report.missing_in_vault,
                     report.missing_instances, report.missing_in_pacs,
                     f", {report.backfilled_instances} instances backfilled" if report.backfill else "")
        return report
