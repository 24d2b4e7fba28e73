"""The ``[drill]`` schedule inside ``dicomvault serve``: a thread that runs a restore drill
(``drill.py``) from every readable site whose last drill is older than ``every``.

The clock is the catalog (``drill_runs``), so a restart neither repeats a drill early nor
forgets one that is due. The first look is a few minutes after start (``STARTUP_DELAY``,
or ``every`` when shorter): the listener, replication and crash recovery come first. A site
with nothing to drill yet (no complete study on it) is tried again one period later.
``stop()`` interrupts a drill in progress between two instances (recorded ``interrupted``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from dicomvault.config import parse_duration

from dicomvault.jobs.drill import runs as drill_runs
from dicomvault.archive import quarantine
from dicomvault.jobs.drill.job import DrillError, DrillInterrupted, drill
from dicomvault.jobs.verify.job import readable_site_names

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

DRILL_ACTOR = "drill-scheduler"
STARTUP_DELAY = 300.0
LONGEST_WAIT = 3600.0  # look again at least hourly (sites added, a drill run by hand)


class DrillScheduler:
    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self.settings = archive.settings.drill
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tried: dict[str, float] = {}  # site -> when a drill found nothing to drill there

    def start(self) -> None:
        if not self.settings.enabled:
            log.warning("[drill] enabled = false: no restore drills in the background; run `dicomvault drill`")
            return
        self._thread = threading.Thread(target=self._run, name="drill", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def due(self, now: float) -> tuple[list[str], float]:
        """(sites due for a drill now, seconds until the next one is due)."""
        every = parse_duration(self.settings.every)
        last = drill_runs.last_started(self.archive.catalog)
        out_of_service = quarantine.active(self.archive.catalog)
        next_at: dict[str, float] = {}
        for name in readable_site_names(self.archive.settings):
            if name not in out_of_service:
                next_at[name] = max(last.get(name, 0.0), self._tried.get(name, 0.0)) + every
        due = [name for name, at in next_at.items() if at <= now]
        later = [at - now for at in next_at.values() if at > now]
        return due, min([LONGEST_WAIT, *later])

    def _run(self) -> None:
        if self._stop.wait(min(STARTUP_DELAY, parse_duration(self.settings.every))):
            return
        while not self._stop.is_set():
            wait = LONGEST_WAIT
            try:
                sites, wait = self.due(time.time())
                if sites:
                    self.run_once(sites)
                    sites, wait = self.due(time.time())
            except Exception:  # noqa: BLE001 - a drill must never take `serve` down
                log.exception("scheduled restore drill failed; trying again in %s", self.settings.every)
                wait = parse_duration(self.settings.every)
            self._stop.wait(max(1.0, wait))

    def run_once(self, sites: list[str]) -> None:
        started = time.time()
        try:
            report = drill(self.archive, DRILL_ACTOR, only_sites=sites, random_count=self.settings.random,
                           cancelled=self._stop)
        except DrillInterrupted:
            return  # `serve` is stopping; the site's run is recorded as interrupted
        except DrillError as exc:  # another drill running, an empty archive: try again a period later
            log.info("scheduled restore drill not run: %s", exc)
            self._tried.update({name: started for name in sites})
            return
        for result in report.sites:
            if result.skipped:
                log.info("scheduled restore drill of site %s: %s", result.site, result.skipped)
                self._tried[result.site] = started
