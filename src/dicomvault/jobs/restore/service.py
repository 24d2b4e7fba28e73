"""Restore jobs started over the operations API and run inside ``serve``.

In a disaster the archive's daemon is already running with its catalog open and its
modules loaded; a dashboard or a script asks it to pour studies into the rebuilt PACS
(``POST /api/restores``) instead of starting a command on the host. The job is the same
persistent, resumable one ``dicomvault restore`` plans and runs (the same rows, the same
per-job flock, so the CLI and the daemon never run one job twice), the peer must be a
configured ``[peers.NAME]`` (a token cannot send images anywhere else), and every start
is audited under the token's name. ``serve`` stops its jobs cleanly on shutdown: they stay
resumable from either side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomvault.catalog.selection import Selection, SelectionError
from dicomvault.config import describe_peers, find_peer

from dicomvault.jobs.restore.job import RateLimit, RestoreRunner
from dicomvault.jobs.restore.plan import (
    JobBusy,
    JobLock,
    Plan,
    RestoreError,
    create_job,
    fill_job,
    job_progress,
    job_report,
    latest_job_for,
    load_job,
    lock_dir,
    planning_jobs,
    requeue_failed,
    status_lock_dir,
    supersede,
)

if TYPE_CHECKING:
    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

MAX_ASSOCIATIONS = 32
OTHER_RUNNER_POLL = 0.25  # seconds between looks at a job another process runs


class RequestError(ValueError):
    """The request cannot be run as asked; the message says what to change."""


class Conflict(RequestError):
    """The job is already running."""


def resolve_peer(settings: Any, name: str) -> Any:
    """A ``[peers.NAME]`` entry by name or AE title: the archive sends only to nodes it knows."""
    peer = find_peer(settings.peers, name)
    if peer is not None:
        if not peer.callable:
            raise RequestError(peer.not_callable_reason())
        return peer
    known = describe_peers(settings.peers) or "none configured"
    raise RequestError(f"{name!r} is not a configured DICOM peer (known: {known}); add a [peers.NAME] table with "
                       "ae_title, host and port to dicomvault.toml")


def plan_or_resume(archive: "Archive", kind: str, ordering: str, peer: Any, selection: Selection, fresh: bool,
                   retry_failed: bool, associations: int, rate: str | None, actor: str,
                   say: Callable[[str], None] = lambda _message: None) -> tuple[int, bool]:
    """The job to run for this request, planned completely: see ``choose_or_create``.
    Returns (job id, already done)."""
    job_id, done, plan = choose_or_create(archive, kind, ordering, peer, selection, fresh, retry_failed,
                                          associations, rate, actor, say)
    if plan is not None:
        with JobLock(lock_dir(archive.settings), job_id):
            fill_job(archive.catalog, job_id, selection, plan)
    return job_id, done


def choose_or_create(archive: "Archive", kind: str, ordering: str, peer: Any, selection: Selection, fresh: bool,
                     retry_failed: bool, associations: int, rate: str | None, actor: str,
                     say: Callable[[str], None] = lambda _message: None) -> tuple[int, bool, Plan | None]:
    """The job to run for this request: the same request's unfinished job is resumed, a
    finished one is shown (not resent) unless ``fresh`` or ``retry_failed``, otherwise a new
    job is created, still ``planning``: its study order is returned for ``fill_job`` to
    write out. The same request being planned right now (here or in another process) is
    refused with ``JobBusy``. Returns (job id, already done, plan or None)."""
    busy = planning_now(archive, kind, peer.name, selection)
    if busy is not None:
        raise JobBusy(f"{kind} job {busy} with this selection is being planned right now; follow it with "
                      f"`dicomvault status` or GET /api/restores/{busy}")
    previous = latest_job_for(archive.catalog, kind, peer.name, selection)
    if previous is not None and fresh:
        if previous.state != "completed":
            supersede(archive.catalog, previous.id)
        previous = None
    if previous is None:
        job_id, plan = create_job(archive.catalog, kind=kind, peer=peer, selection=selection, ordering=ordering,
                                  actor=actor, options={"associations": associations, "rate": rate or "unlimited"})
        say(f"{kind} job {job_id}: {selection.describe()} to {peer.name}")
        return job_id, False, plan
    if previous.state == "completed" and not retry_failed:
        say(f"{kind} job {previous.id} with this selection already completed; nothing sent "
            "(--retry-failed resends its refused instances, --fresh sends everything again)")
        return previous.id, True, None
    say(f"resuming {kind} job {previous.id} to {peer.name} (use --fresh to start over)")
    return previous.id, False, None


def planning_now(archive: "Archive", kind: str, peer: str, selection: Selection) -> int | None:
    """The id of a job for this same request whose planner is at work (not an abandoned one)."""
    locks = status_lock_dir(archive.settings)
    for job_id in planning_jobs(archive.catalog, kind, peer, selection):
        if job_progress(archive.catalog, job_id, lock_dir=locks)["state"] == "planning":
            return job_id
    return None


@dataclass
class _Running:
    runner: RestoreRunner
    thread: threading.Thread
    error: str | None = None


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(f"{key!r} must be a string or a list of strings")
    return value


class RestoreService:
    """The daemon's restore jobs: start (plan or resume), wait for, stop."""

    FIELDS = {"to", "since", "until", "patient", "modality", "study", "associations", "rate", "fresh",
              "retry_failed", "resume"}

    def __init__(self, archive: "Archive") -> None:
        self.archive = archive
        self._running: dict[int, _Running] = {}
        self._lock = threading.RLock()
        self._closed = False

    def start(self, body: dict[str, Any], actor: str) -> dict[str, Any]:
        """Plan (or resume) the job ``body`` describes and start sending; returns its progress.

        ``body``: ``to`` (a configured peer), optional ``since``/``until`` (YYYYMMDD),
        ``patient``/``modality``/``study`` (a string or a list), ``associations`` (1-32,
        default 4), ``rate`` ("20MB/s", "50/s"), ``fresh``, ``retry_failed``, or ``resume``
        (a job id, with no peer or filters)."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        unknown = sorted(set(body) - self.FIELDS)
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(self.FIELDS))}")
        associations = body.get("associations", 4)
        if isinstance(associations, bool) or not isinstance(associations, int) or not 1 <= associations <= MAX_ASSOCIATIONS:
            raise RequestError(f"'associations' must be a whole number from 1 to {MAX_ASSOCIATIONS}")
        flags = {key: body.get(key, False) for key in ("fresh", "retry_failed")}
        if not all(isinstance(value, bool) for value in flags.values()):
            raise RequestError("'fresh' and 'retry_failed' must be true or false")
        rate = body.get("rate")
        if rate is not None and not isinstance(rate, str):
            raise RequestError("'rate' must be a string such as \"20MB/s\" or \"50/s\"")
        try:
            limit = RateLimit.parse(rate)
            if body.get("resume") is not None:
                if any(body.get(key) for key in ("to", "since", "until", "patient", "modality", "study")):
                    raise RequestError("'resume' takes the job's own peer and selection; drop 'to' and the filters")
                resume = body["resume"]
                if isinstance(resume, bool) or not isinstance(resume, int):
                    raise RequestError("'resume' must be a job id")
                if not 1 <= resume < 2**63:  # beyond a catalog id column: the database would raise
                    raise RequestError(f"there is no restore job {resume}")
                job = load_job(self.archive.catalog, resume)
                peer, job_id, done = resolve_peer(self.archive.settings, job.peer), job.id, False
            else:
                if not isinstance(body.get("to"), str) or not body["to"]:
                    raise RequestError("say where to restore: 'to' (a [peers.NAME] entry), or 'resume' (a job id)")
                peer = resolve_peer(self.archive.settings, body["to"])
                since, until = body.get("since"), body.get("until")
                if not all(value is None or isinstance(value, str) for value in (since, until)):
                    raise RequestError("'since' and 'until' must be YYYYMMDD strings")
                selection = Selection.build(since, until, _strings(body, "patient"), _strings(body, "modality"),
                                            _strings(body, "study"))
                # Two identical requests at once must not plan two jobs: the lock is held until
                # the new job's runner holds the job's flock (from then on it shows as planning).
                with self._lock:
                    job_id, done, plan = choose_or_create(
                        self.archive, "restore", "urgency", peer, selection, flags["fresh"], flags["retry_failed"],
                        associations, rate, actor)
                    if plan is not None:  # written by the job's thread: the request answers at once
                        try:
                            self._launch(job_id, peer, associations, limit, actor, (selection, plan))
                        except BaseException:
                            supersede(self.archive.catalog, job_id)  # created, never to be planned
                            raise
                        return job_report(self.archive, job_id)
            if flags["retry_failed"]:
                requeue_failed(self.archive.catalog, job_id)
                done = False
            if not done:
                self._launch(job_id, peer, associations, limit, actor)
        except JobBusy as exc:
            raise Conflict(str(exc)) from exc
        except (RestoreError, SelectionError) as exc:
            raise RequestError(str(exc)) from exc
        return job_report(self.archive, job_id)

    def _launch(self, job_id: int, peer: Any, associations: int, limit: RateLimit, actor: str,
                plan: tuple[Selection, Plan] | None = None) -> None:
        with self._lock:
            if self._closed:
                raise RequestError("the archive is shutting down; start the restore again once it is back")
            current = self._running.get(job_id)
            if current is not None and current.thread.is_alive():
                raise Conflict(f"restore job {job_id} is already running here; watch GET /api/restores/{job_id}")
            for finished in [key for key, entry in self._running.items() if not entry.thread.is_alive()]:
                del self._running[finished]  # their rows hold the outcome; waiting on them returns at once
            runner = RestoreRunner(self.archive, job_id, peer, associations, limit, actor, plan=plan)
            entry = _Running(runner, threading.Thread(target=lambda: self._run(job_id), name=f"restore-{job_id}",
                                                      daemon=True))
            self._running[job_id] = entry
            locked = threading.Event()
            runner.on_locked = locked.set
            entry.thread.start()
        # Answer once the job holds its lock (it then shows as running) or has ended already
        # (another process runs it: the error is on the entry).
        while not locked.wait(0.05) and entry.thread.is_alive():
            pass
        if entry.error and not locked.is_set():
            raise Conflict(entry.error)

    def _run(self, job_id: int) -> None:
        entry = self._running[job_id]
        try:
            entry.runner.run()
        except RestoreError as exc:  # stopped, or the PACS went away: recorded on the job, resumable
            entry.error = str(exc)
            log.warning("restore job %d ended early: %s", job_id, exc)
        except Exception as exc:  # noqa: BLE001 - recorded on the job by the runner; keep serving
            entry.error = f"{type(exc).__name__}: {exc}"
            log.exception("restore job %d failed", job_id)

    def running(self, job_id: int) -> bool:
        entry = self._running.get(job_id)
        return entry is not None and entry.thread.is_alive()

    def wait(self, job_id: int, timeout: float) -> None:
        """Until the job ends, or ``timeout``. A job this daemon runs is joined; one another
        process runs (``dicomvault restore`` in a terminal, or a daemon on another host with a
        shared catalog) is watched the way ``status`` judges it: its flock on this host, its
        heartbeat otherwise, looked at every quarter second."""
        entry = self._running.get(job_id)
        if entry is not None:
            entry.thread.join(timeout)
            return
        deadline = time.monotonic() + timeout
        locks = status_lock_dir(self.archive.settings)
        while time.monotonic() < deadline:
            try:
                if job_progress(self.archive.catalog, job_id, lock_dir=locks)["state"] not in ("running", "planning"):
                    return
            except RestoreError:
                return  # no such job: the report says so
            time.sleep(min(OTHER_RUNNER_POLL, max(0.0, deadline - time.monotonic())))

    def stop(self, job_id: int) -> bool:
        """Ask a running job to stop after the instances in flight; False when none runs here."""
        entry = self._running.get(job_id)
        if entry is None or not entry.thread.is_alive():
            return False
        entry.runner.stop()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop every job (they stay resumable) and wait for their senders to let go."""
        with self._lock:
            self._closed = True
            entries = list(self._running.values())
        for entry in entries:
            entry.runner.stop()
        for entry in entries:
            entry.thread.join(timeout)
