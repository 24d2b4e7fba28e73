"""The first screen's figures, gathered at most once at a time and reused for a few seconds.

``archive_status()`` scans the catalog (counts, per-site copy sums): about 4 s with 1,000,000
instances (benchmarks/dashboard_scale.py). A wall screen reloading every 30 s must not pay that
on every load, nor may two browsers run it twice at once. So: figures younger than ``FRESH``
are shown as they are; older ones up to ``STALE`` are shown while one background thread gathers
new ones (the page says how old they are); older still, or ``?fresh=1``, the request waits for
new figures. Nothing here decides what the figures are (sources.py, serve/status.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FRESH, STALE = 5.0, 60.0


class Figures:
    def __init__(self, gather: Callable[[], dict[str, Any]], fresh: float = FRESH, stale: float = STALE) -> None:
        self.gather = gather
        self.fresh, self.stale = fresh, stale
        self._value: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = threading.Lock()  # one gathering at a time
        self._refreshing = False

    def _run(self) -> dict[str, Any]:
        with self._lock:
            started = time.monotonic()
            if self._value is not None and started - self._at < self.fresh:
                return self._value  # another request gathered them while this one waited
            value = self.gather()
            self._value, self._at = value, time.monotonic()
            return value

    def _background(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001 - the next request gathers them itself and shows the error
            log.exception("dashboard figures could not be gathered")
        finally:
            self._refreshing = False

    def get(self, force: bool = False) -> tuple[dict[str, Any], float]:
        """(figures, their age in seconds); blocks only when there are none young enough."""
        value, age = self._value, time.monotonic() - self._at
        if force or value is None or age >= self.stale:
            if force:
                self._at = 0.0
            value = self._run()
            return value, time.monotonic() - self._at
        if age >= self.fresh and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._background, name="dashboard-figures", daemon=True).start()
        return value, age
