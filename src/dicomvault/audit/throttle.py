"""How often a repeated event is written to the audit log.

A client retrying with a bad token, a dashboard polling the API every few seconds, or a
scanner probing the DICOM port must not turn the hash-chained audit log (and the ATNA export
behind it) into a flood; who did what from where still shows, at one-minute resolution.
The HTTP front door and the DICOM access gate use the same rule.
"""

from __future__ import annotations

import threading
import time


class AuditThrottle:
    """At most one audit row per key per interval.

    A client retrying with a bad token, or a dashboard polling the API every few seconds,
    must not turn the hash-chained audit log into a flood; who did what from where still
    shows, at one-minute resolution."""

    def __init__(self, interval: float = 60.0, capacity: int = 10_000) -> None:
        self.interval = interval
        self.capacity = capacity
        self._last: dict[object, float] = {}
        self._lock = threading.Lock()

    def due(self, key: object) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, now - self.interval) < self.interval:
                return False
            if len(self._last) >= self.capacity:
                self._last.clear()
            self._last[key] = now
            return True
