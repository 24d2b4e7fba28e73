"""Pouring the archive back into a PACS: C-STORE over parallel associations, most urgent first.

What leaves is the stored data set, byte for byte, in its stored transfer syntax (verified
against its SHA-256 when opened). Only when the PACS refuses that syntax at negotiation is an
uncompressed instance re-encoded losslessly (``dicom/transcode.py``), and the item records
what it was sent as. Compressed instances are never decompressed here: they fail with the
reason, and the report names them.

Each association is one sender thread with its own ``peers/sender.py`` StoreSender (one
status rule: ``peers/status.py``; a warning is stored, with its code recorded); they take instances from one shared decrypt-ahead queue, so four
associations still send in urgency order. A rate limit (bytes or instances per second) is
shared by all of them. Outcomes are recorded by the calling thread in small batches, and the
job's heartbeat with them, so a killed job resends at most the instances acknowledged in the
last fraction of a second. Losing the PACS mid-way stops the job (items stay pending, the
job resumable) rather than failing thousands of instances one by one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import restores
from dicomvault.archive.coercion import Coercer, CoercionError
from dicomvault.peers.sender import PeerLost, StoreSender
from dicomvault.replicate.throttle import RateLimiter, Schedule, ThrottleConfigError, parse_rate

from dicomvault.archive.prefetch import Prefetcher
from dicomvault.jobs.restore.plan import JobLock, JobRow, Plan, RestoreError, fill_job, job_report, load_job, lock_dir

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive
    from dicomvault.catalog.selection import Selection
    from dicomvault.config import PeerSettings

log = logging.getLogger(__name__)

RECORD_EVERY = 0.25  # seconds between batched outcome writes (and heartbeats)
INSTANCE_UNIT = 1_000_000  # an instances/s limit runs the byte limiter with one instance = 1 MB
PENDING_PAGE = 2000  # items read from the plan per query while sending


@dataclass(frozen=True)
class RateLimit:
    """``--rate``: ``20MB/s`` (bytes) or ``50/s`` (instances)."""

    bytes_per_second: float | None = None
    instances_per_second: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "RateLimit":
        if not text or text.strip().lower() == "unlimited":
            return cls()
        stripped = text.strip()
        if stripped.endswith("/s") and stripped[:-2].replace(".", "", 1).isdigit():
            value = float(stripped[:-2])
            if value <= 0:
                raise RestoreError(f"--rate {text!r}: the rate must be above zero")
            return cls(instances_per_second=value)
        try:
            rate = parse_rate(stripped)
        except ThrottleConfigError as exc:
            raise RestoreError(f"--rate: {exc}, or e.g. 50/s for instances per second") from exc
        if rate is not None and rate <= 0:
            raise RestoreError(f"--rate {text!r}: the rate must be above zero")
        return cls(bytes_per_second=rate)

    def limiters(self) -> list[tuple[RateLimiter, Callable[[int], int]]]:
        """(limiter, cost of one instance of n bytes) pairs to acquire before each send."""
        result: list[tuple[RateLimiter, Callable[[int], int]]] = []
        if self.bytes_per_second:
            result.append((RateLimiter(Schedule(self.bytes_per_second)), lambda n: n))
        if self.instances_per_second:
            result.append((RateLimiter(Schedule(self.instances_per_second * INSTANCE_UNIT)),
                           lambda _n: INSTANCE_UNIT))
        return result


@dataclass(frozen=True)
class PlannedItem:
    id: int
    tier: int
    sop_instance_uid: str
    sop_class_uid: str
    object_id: str
    sha256: str
    transfer_syntax_uid: str
    size: int


@dataclass(frozen=True)
class Outcome:
    item: PlannedItem
    state: str  # sent | failed
    status: int | None
    detail: str | None
    sent_syntax: str | None
    at: float


class RestoreRunner:
    """Runs one planned job's pending items to the peer; ``stop()`` ends it cleanly (resumable)."""

    def __init__(self, archive: "Archive", job_id: int, peer: "PeerSettings", associations: int = 4,
                 rate: RateLimit | None = None, actor: str = "",
                 on_progress: Callable[[dict[str, int]], None] | None = None,
                 plan: "tuple[Selection, Plan] | None" = None, coerce: bool = False) -> None:
        """``plan``: the selection and study order of a job still ``planning`` (create_job's),
        whose items this runner writes under the job's lock before sending: a server answers
        the request at once and the job shows as planning, then running. ``coerce`` (or the
        peer's ``coerce_demographics``): send the current demographics (archive/coercion.py)."""
        if associations < 1 or associations > 32:
            raise RestoreError(f"--associations must be between 1 and 32, got {associations}")
        self.archive = archive
        self.catalog = archive.catalog
        self.job: JobRow = load_job(archive.catalog, job_id)
        self.peer = peer
        self.associations = associations
        self.rate = rate or RateLimit()
        self.actor = actor
        self.on_progress = on_progress
        self.on_locked: Callable[[], None] | None = None
        self._plan = plan
        self._stop = threading.Event()
        self._outcomes: queue.Queue[Outcome | None] = queue.Queue()  # None: a sender finished
        self._lost: list[str] = []
        self._counts = {"sent": 0, "failed": 0, "bytes": 0, "transcoded": 0}
        self.coercer = Coercer(archive.catalog) if coerce or peer.coerce_demographics else None

    def stop(self) -> None:
        self._stop.set()

    # --- the job ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Send what is pending; returns the job report (totals over every run of the job)."""
        with JobLock(lock_dir(self.archive.settings), self.job.id):
            if self.on_locked is not None:
                self.on_locked()  # the job shows as planning or running from here on
            if self._plan is not None:
                fill_job(self.catalog, self.job.id, *self._plan, should_stop=self._stop.is_set)
                self.job = load_job(self.catalog, self.job.id)
            return self._run_locked()

    def _pending_count(self) -> int:
        return restores.pending_count(self.catalog, self.job.id)

    def _pending_pairs(self) -> list[tuple[str, str]]:
        """The (SOP class, stored syntax) pairs still to send, in the order they first come."""
        return restores.pending_pairs(self.catalog, self.job.id)

    def _pending(self) -> Iterator[PlannedItem]:
        """The pending items in sending order, read a page at a time: a restore of millions of
        instances holds a page in memory, not the whole plan."""
        after = -1
        while True:
            page = restores.pending_page(self.catalog, self.job.id, after, PENDING_PAGE)
            if not page:
                return
            for r in page:
                yield PlannedItem(r.id, r.tier, r.sop_instance_uid, r.sop_class_uid, r.object_id, r.sha256,
                                  r.transfer_syntax_uid, int(r.size))
            after = page[-1].position

    def _run_locked(self) -> dict[str, Any]:
        if self.job.state == "superseded":
            raise RestoreError(f"job {self.job.id} was superseded by a newer job; it cannot be resumed")
        if self.job.state == "planning":
            raise RestoreError(f"job {self.job.id} was never completely planned (its planner is still at work or "
                               "died); run the same restore again without --resume to plan it anew")
        pending = self._pending_count()
        run_number = self.job.runs + 1
        started = time.time()
        with self.catalog.write() as conn:
            restores.start_run(conn, self.job.id, run_number, started)
            append(conn, AuditEvent(actor=self.actor, action=self.job.kind, subject=self.peer.name, outcome="started",
                                    detail={"job": self.job.id, "run": run_number, "destination": self.job.destination,
                                            "selection": self.job.selection.describe(), "pending": pending}))
        error = None
        try:
            if pending:
                self._send_all(run_number)
        except Exception as exc:  # noqa: BLE001 - recorded on the job, then re-raised
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if self._lost and error is None:
                error = self._lost[0]
            self._finish(run_number, started, error)
        report = self.report()
        if self._lost or report["pending"]:
            reason = self._lost[0] if self._lost else "stopped on request"
            raise RestoreError(f"{reason}; {report['sent']}/{report['total']} sent so far. "
                               + ("Fix the cause and r" if self._lost else "R")
                               + f"un the same command again (or `dicomvault restore --resume {self.job.id}`): "
                               "acknowledged instances are not sent again")
        return report

    def _finish(self, run_number: int, started: float, error: str | None) -> None:
        now = time.time()
        with self.catalog.write() as conn:
            finished = restores.finish_run(conn, self.job.id, now, error)
            append(conn, AuditEvent(
                actor=self.actor, action=self.job.kind, subject=self.peer.name,
                outcome=("failure" if error else "partial" if self._counts["failed"] else "success") if finished
                else "interrupted",
                detail={"job": self.job.id, "run": run_number, "destination": self.job.destination,
                        "sent": self._counts["sent"], "failed": self._counts["failed"], "bytes": self._counts["bytes"],
                        "transcoded": self._counts["transcoded"], "seconds": round(now - started, 3),
                        **({"coerced": self.coercer.coerced[:1000]} if self.coercer else {}),
                        **({"error": error} if error else {})}))

    def report(self) -> dict[str, Any]:
        coerced = {"coerced": list(self.coercer.coerced)} if self.coercer else {}
        return {**job_report(self.archive, self.job.id), "this_run": dict(self._counts), **coerced}

    # --- sending ----------------------------------------------------------------------------

    def _load(self, item: PlannedItem) -> bytes:
        data = self.archive.repository.load_dataset(item.object_id, item.sha256)
        if self.coercer is None:
            return data
        return self.coercer.dataset(item.sop_instance_uid, item.sha256, data, item.transfer_syntax_uid)

    def _send_all(self, run_number: int) -> None:
        pairs = self._pending_pairs()
        limiters = self.rate.limiters()
        # One loader thread while one or two associations send: an object opens in about a
        # millisecond against ~5 ms for the PACS to take it, and a second loader only competes
        # with the senders for the GIL (measured into Orthanc over one association: 10-25 %
        # faster with one). More associations get a second one to overlap slow reads.
        loader_threads = 1 if self.associations <= 2 else 2
        with ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="restore-load") as loaders:
            feed: Prefetcher[PlannedItem, bytes] = Prefetcher(self._pending(), self._load, loaders,
                                                              2 * self.associations + 2)
            senders = [threading.Thread(target=self._sender, args=(feed, pairs, limiters), daemon=True,
                                        name=f"restore-send-{n}") for n in range(self.associations)]
            for sender in senders:
                sender.start()
            last_beat = time.monotonic()
            batch: list[Outcome] = []
            while any(s.is_alive() for s in senders) or not self._outcomes.empty():
                batch += self._drain(timeout=max(0.0, last_beat + RECORD_EVERY - time.monotonic()))
                now = time.monotonic()
                if now - last_beat >= RECORD_EVERY or len(batch) >= 500:
                    self._record(batch, run_number, now - last_beat)  # one transaction per quarter second
                    batch, last_beat = [], now
            self._record(batch, run_number, time.monotonic() - last_beat)
            for sender in senders:
                sender.join()
            self._stop.set()  # drop what is still prefetched

    def _drain(self, timeout: float) -> list[Outcome]:
        """Outcomes that arrive within ``timeout`` (returns early on a sender's sentinel)."""
        batch: list[Outcome] = []
        deadline = time.monotonic() + timeout
        try:
            while len(batch) < 500:
                outcome = self._outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
                if outcome is None:  # a sender finished: look at the senders again
                    break
                batch.append(outcome)
        except queue.Empty:
            pass
        return batch

    def _record(self, batch: list[Outcome], run_number: int, elapsed: float) -> None:
        restores.record_outcomes(self.catalog, self.job.id, [
            restores.ItemOutcome(o.item.id, o.state, o.status, o.detail, o.sent_syntax, run_number, o.at)
            for o in batch], time.time(), elapsed)
        for outcome in batch:
            self._counts[outcome.state] += 1
            if outcome.state == "sent":
                self._counts["bytes"] += outcome.item.size
                self._counts["transcoded"] += outcome.sent_syntax is not None
        if self.on_progress is not None and batch:
            self.on_progress(dict(self._counts))

    def _sender(self, feed: Prefetcher[PlannedItem, bytes], pairs: list[tuple[str, str]],
                limiters: list[tuple[RateLimiter, Callable[[int], int]]]) -> None:
        sender = StoreSender.to_peer(self.archive.settings, self.peer)

        def pace(nbytes: int) -> None:
            for limiter, cost in limiters:
                limiter.acquire(cost(nbytes))

        try:
            sender.open(pairs)
            while not self._stop.is_set():
                entry = feed.next_item()
                if entry is None:
                    return
                item, loading = entry
                try:
                    dataset = loading.result()
                except CoercionError as exc:  # the stored copy is fine; its rewrite is not possible
                    self._outcomes.put(Outcome(item, "failed", None, str(exc), None, time.time()))
                    continue
                except Exception as exc:  # noqa: BLE001 - damaged, missing or unreadable stored copy
                    log.error("ALERT: the stored copy of %s (object %s) cannot be read back: %s",
                              item.sop_instance_uid, item.object_id, exc)
                    self._outcomes.put(Outcome(item, "failed", None, f"stored copy unreadable: {exc}", None,
                                               time.time()))
                    continue
                self._outcomes.put(self._send_one(sender, item, dataset, pace))
        except PeerLost as exc:
            self._lost.append(f"cannot send to {self.peer.name} ({self.job.destination}): {exc}")
            self._stop.set()
        except Exception as exc:  # noqa: BLE001 - a bug must stop the job loudly, not leave it hanging
            log.exception("restore sender failed")
            self._lost.append(f"internal error while sending: {type(exc).__name__}: {exc}")
            self._stop.set()
        finally:
            sender.close()
            self._outcomes.put(None)

    def _send_one(self, sender: StoreSender, item: PlannedItem, dataset: bytes,
                  pace: Callable[[int], None]) -> Outcome:
        """One instance, judged by ``peers/status.py``: a warning is stored (its code and comment
        recorded as the item's detail), a failure keeps its status and the receiver's reason."""
        sent = sender.send(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid, dataset, pace=pace)
        result = sent.outcome
        return Outcome(item, "sent" if result.stored else "failed", result.status, result.detail(),
                       sent.converted_to, time.time())
