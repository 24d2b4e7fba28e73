"""Workers that drain the outbox of one replica site or PACS target (``targets.py``).

Each site gets its own small pool of threads, a shared rate limiter and a circuit breaker:
when the site itself is unreachable (its health probe fails), the pool pauses and probes
with backoff instead of burning every object's retry budget, then makes everything it is
owed due at once when the site comes back. Failures of a single object (the site is fine)
back off exponentially with jitter and dead-letter after ``max_attempts``, with an alert.

Copies are verified before they count: the target's ``deliver`` returns only once it has
proved the copy (a site by checksum or read-back, a PACS by its C-STORE status).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from dicomvault.sites import SiteError

from .outbox import CopyTask, Outbox
from .targets import CopyTarget

log = logging.getLogger(__name__)

COPIES = Counter("dicomvault_replication_copies_total", "Copies verified on replica sites", ["site"])
COPY_BYTES = Counter("dicomvault_replication_bytes_total", "Bytes copied to replica sites", ["site"])
FAILURES = Counter("dicomvault_replication_failures_total", "Failed copy attempts", ["site", "kind"])
DEAD = Counter("dicomvault_replication_dead_letters_total", "Copies given up after max attempts (alert!)", ["site"])
SITE_REACHABLE = Gauge("dicomvault_replication_site_reachable", "1 when the replica site answers", ["site"])
LAG_SECONDS = Gauge("dicomvault_replication_lag_seconds", "Acknowledgement to verified copy, last copy", ["site"])

BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
PROBE_CAP = 10.0


class Limiter(Protocol):
    def acquire(self, nbytes: int) -> None: ...


class _Unlimited:
    def acquire(self, nbytes: int) -> None:
        return None


def backoff_delay(attempts: int, rng: random.Random) -> float:
    """Exponential backoff with jitter (half to full of the exponential step)."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, attempts - 1)))
    return step * (0.5 + rng.random() / 2)


class SealedSource(Protocol):
    """Where a replicator reads the sealed bytes it copies: the primary site, or
    ``Repository.sealed`` (the primary, else a verified replica copy)."""

    def get(self, name: str) -> bytes: ...


class SiteReplicator:
    """Drains one site's outbox with ``workers`` threads."""

    def __init__(self, name: str, target: CopyTarget, primary: "SealedSource", outbox: Outbox, *, workers: int = 2,
                 max_attempts: int = 8, limiter: Limiter | None = None, batch: int = 64,
                 seed: int | None = None, on_dead: Callable[[str, CopyTask, str], None] | None = None) -> None:
        self.name = name
        self.target = target
        self.primary = primary
        self.outbox = outbox
        self.workers = workers
        self.max_attempts = max_attempts
        self.limiter: Limiter = limiter or _Unlimited()
        self.batch = batch
        self.on_dead = on_dead
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: list[CopyTask] = []
        self._in_flight: set[str] = set()
        self._verified: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reachable = True
        self.last_error: str | None = None
        self._probe_delay = 1.0
        self._next_probe = 0.0
        self.copied_objects = 0
        self.copied_bytes = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"replicate-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        flusher = threading.Thread(target=self._flush_loop, name=f"replicate-{self.name}-commit", daemon=True)
        flusher.start()
        self._threads.append(flusher)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._commit_verified()
        self.target.close()

    def notify(self) -> None:
        """New copies are owed (an ingest committed): wake an idle worker now."""
        self._wake.set()

    def state(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "last_error": self.last_error, "in_flight": len(self._in_flight),
                "copied_objects_since_start": self.copied_objects, "copied_bytes_since_start": self.copied_bytes}

    # --- work ---------------------------------------------------------------------------

    def _next_task(self) -> CopyTask | None:
        with self._lock:
            while not self._queue:
                due = self.outbox.due(self.name, self.batch)
                fresh = [task for task in due if task.object_id not in self._in_flight]
                if not fresh:
                    return None
                self._queue.extend(fresh)
            task = self._queue.pop(0)
            self._in_flight.add(task.object_id)
            return task

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.reachable and not self._probe():
                self._stop.wait(0.2)
                continue
            try:
                task = self._next_task()
            except Exception as exc:  # noqa: BLE001 - catalog busy or gone: retry shortly
                log.warning("replication to %s cannot read the outbox: %s", self.name, exc)
                self._stop.wait(1.0)
                continue
            if task is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            verified = False
            try:
                verified = self._copy(task)
            finally:
                if not verified:  # verified ones stay claimed until their row is committed
                    with self._lock:
                        self._in_flight.discard(task.object_id)

    def _copy(self, task: CopyTask) -> bool:
        """One attempt; True once the copy is verified (its row is committed in a batch)."""
        try:
            blob = self.primary.get(task.object_id)
        except (KeyError, SiteError) as exc:
            self._fail(task, f"cannot read the object from the primary site: {exc}", site_fault=False)
            return False
        try:
            self.limiter.acquire(len(blob))
            self.target.deliver(task.object_id, blob)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
            health = self._health()
            self._fail(task, f"{type(exc).__name__}: {exc}", site_fault=not health.get("ok", False),
                       health_error=str(health.get("error") or ""))
            return False
        with self._lock:
            self._verified.append(task.object_id)
            self.copied_objects += 1
            self.copied_bytes += len(blob)
        COPIES.labels(self.name).inc()
        COPY_BYTES.labels(self.name).inc(len(blob))
        LAG_SECONDS.labels(self.name).set(max(0.0, time.time() - task.owed_since))
        return True

    def _health(self) -> dict[str, object]:
        try:
            return self.target.health()
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "error": str(exc)}

    def _fail(self, task: CopyTask, error: str, site_fault: bool, health_error: str = "") -> None:
        now = time.time()
        if site_fault:
            FAILURES.labels(self.name, "site").inc()
            self._mark_unreachable(health_error or error)
            next_at, dead, counted = now, False, False  # the site's fault: the object keeps its budget
        else:
            FAILURES.labels(self.name, "object").inc()
            attempts = task.attempts + 1
            dead = attempts >= self.max_attempts
            next_at = now + backoff_delay(attempts, self._rng)
            counted = True
            log.warning("copy of %s to %s failed (attempt %d/%d): %s", task.object_id, self.name, attempts,
                        self.max_attempts, error)
        try:
            self.outbox.mark_failed(self.name, task, error, next_at, dead, counted, f"dicomvault:replicate:{self.name}")
        except Exception as exc:  # noqa: BLE001
            log.error("cannot record a failed copy to %s: %s", self.name, exc)
        if dead:
            DEAD.labels(self.name).inc()
            log.error("ALERT: copy of %s to site %s dead-lettered after %d attempts: %s", task.object_id,
                      self.name, task.attempts + 1, error)
            if self.on_dead:
                self.on_dead(self.name, task, error)

    def _mark_unreachable(self, error: str) -> None:
        with self._lock:
            transition = self.reachable
            if transition:
                log.error("replica site %s is unreachable, pausing its copies: %s", self.name, error)
                self._probe_delay = 1.0
                self._next_probe = time.monotonic() + self._probe_delay
            self.reachable = False
            self.last_error = error
            self._queue.clear()
        SITE_REACHABLE.labels(self.name).set(0)
        if transition:
            self._record_state(False, error)

    def _record_state(self, reachable: bool, error: str | None) -> None:
        try:
            self.outbox.set_site_state(self.name, reachable, error)
        except Exception as exc:  # noqa: BLE001 - the catalog may be the thing that is down
            log.warning("cannot record the state of site %s: %s", self.name, exc)

    def _probe(self) -> bool:
        """While paused: probe the site's health with backoff; resume when it answers."""
        with self._lock:
            if self.reachable:
                return True
            if time.monotonic() < self._next_probe:
                return False
            self._next_probe = time.monotonic() + 3600  # one prober at a time
        health = self._health()
        with self._lock:
            if health.get("ok"):
                self.reachable = True
                self.last_error = None
            else:
                self.last_error = str(health.get("error") or "unreachable")
                self._probe_delay = min(PROBE_CAP, self._probe_delay * 2)
                self._next_probe = time.monotonic() + self._probe_delay
                return False
        log.warning("replica site %s is reachable again; resuming", self.name)
        SITE_REACHABLE.labels(self.name).set(1)
        self._record_state(True, None)
        try:
            self.outbox.reschedule_now(self.name)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot reschedule copies for %s: %s", self.name, exc)
        return True

    # --- batching the catalog updates ---------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(0.2):
            self._commit_verified()

    def _commit_verified(self) -> None:
        with self._lock:
            done, self._verified = self._verified, []
        if not done:
            return
        try:
            self.outbox.mark_verified(self.name, done, f"dicomvault:replicate:{self.name}")
        except Exception as exc:  # noqa: BLE001 - keep them; a later flush records them
            log.warning("cannot record %d verified copies to %s yet: %s", len(done), self.name, exc)
            with self._lock:
                self._verified[:0] = done
            return
        with self._lock:
            self._in_flight.difference_update(done)
