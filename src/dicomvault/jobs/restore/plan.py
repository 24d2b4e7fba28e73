"""Restore jobs as rows: planning (which instances, in which order), finding a job to resume,
and the progress and report every surface shows (CLI, ``status --json``, ``/api/restores``).

A job is planned once: every selected instance becomes a ``restore_items`` row with its
position in the sending order, written a batch of studies per transaction so that planning
millions of instances neither holds them all in memory nor blocks ingest's commits.
Resuming a killed job sends only the rows still pending, so what the PACS acknowledged is
not sent again, and counts add up across runs because they are counted from the rows, not
kept in memory.

Urgency order (a rebuilt, empty PACS needs today's work first): studies acquired in the last
24 hours, then in the last 7 days, then everything else, newest first within each tier; a
study keeps its instances together, in series and instance number order. "Acquired" is the
Study Date and Time; a study without a usable date counts from when the vault received it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dicomvault.catalog import restores
from dicomvault.catalog.selection import (
    SelectedInstance,
    SelectedStudy,
    Selection,
    number_key,
    rejected_in,
    select_instances,
    select_studies,
)

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog
    from dicomvault.config import PeerSettings

TIER_NAMES = ("last 24 h", "last 7 days", "older")
TIER_LIMITS = (24 * 3600.0, 7 * 24 * 3600.0)
HEARTBEAT_STALE = 30.0  # seconds without a heartbeat before an active job counts as interrupted
_PLAN_INSTANCES_PER_BATCH = 5000  # per read and write transaction: ~10 MB and ~0.1 s each


class RestoreError(Exception):
    """The job cannot be planned or run; the message says what to do."""


class JobBusy(RestoreError):
    """The same request is being planned right now."""


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    peer: str
    destination: str
    selection: Selection
    ordering: str
    options: dict[str, Any]
    state: str
    runs: int
    total: int


def study_moment(row: SelectedStudy | SelectedInstance) -> float:
    """When the study was acquired (local time), from StudyDate/StudyTime; arrival time if unusable."""
    date = row.study_date.strip()
    if len(date) == 8 and date.isdigit():
        digits = "".join(c for c in row.study_time.split(".")[0] if c.isdigit())[:6].ljust(6, "0")
        try:
            return datetime.strptime(date + digits, "%Y%m%d%H%M%S").timestamp()
        except ValueError:
            pass
    return row.received_at


def urgency_tier(moment: float, now: float) -> int:
    age = now - moment  # a study dated in the future (clock skew) is as urgent as today's
    for tier, limit in enumerate(TIER_LIMITS):
        if age <= limit:
            return tier
    return len(TIER_LIMITS)


def order_studies(studies: Sequence[SelectedStudy], ordering: str, now: float) -> list[tuple[int, SelectedStudy]]:
    """(tier, study) in sending order. ``study`` keeps the selection's patient/study order;
    ``urgency`` puts the last 24 h first, then the last 7 days, then the rest, newest first."""
    tiered = [(urgency_tier(study_moment(s), now), s) for s in studies]
    if ordering == "study":
        return tiered
    return sorted(tiered, key=lambda pair: (pair[0], -study_moment(pair[1]), pair[1].study_uid))


def _instance_order(row: SelectedInstance) -> tuple[Any, ...]:
    return number_key(row.series_number), row.series_uid, number_key(row.instance_number), row.sop_instance_uid


Plan = list[tuple[int, SelectedStudy]]  # (tier, study) in sending order: what fill_job writes out


def plan_job(catalog: "Catalog", *, kind: str, peer: "PeerSettings", selection: Selection, ordering: str,
             options: dict[str, Any], actor: str, now: float | None = None, locks: Path | None = None) -> int:
    """Create the job and its items; returns the job id.

    Memory and lock time stay flat however large the selection: the studies are ordered
    first (thousands of rows, not millions), then their instances are read and written about
    ``_PLAN_INSTANCES_PER_BATCH`` at a time, one short transaction each, so ingest keeps
    committing between them. The job is ``planning`` until its last item is written; a
    planner that dies leaves a job nobody resumes (the same request plans anew and
    supersedes it), never a half plan sent as whole. ``locks``: the archive's lock folder,
    so that on this host the planner's liveness is its flock, as a runner's is (without it,
    only the heartbeat tells: for benchmarks and tests)."""
    job_id, plan = create_job(catalog, kind=kind, peer=peer, selection=selection, ordering=ordering,
                              options=options, actor=actor, now=now)
    with JobLock(locks, job_id) if locks is not None else contextlib.nullcontext():
        fill_job(catalog, job_id, selection, plan)
    return job_id


def create_job(catalog: "Catalog", *, kind: str, peer: "PeerSettings", selection: Selection, ordering: str,
               options: dict[str, Any], actor: str, now: float | None = None) -> tuple[int, Plan]:
    """The job row, ``planning``, and its studies in sending order (one grouped query: fast
    even on a large vault, so a server can answer before the items are written)."""
    now = time.time() if now is None else now
    studies = select_studies(catalog, selection)
    if not studies:
        rejected = len(rejected_in(catalog, selection))
        raise RestoreError(f"nothing in the vault matches the selection ({selection.describe()})"
                           + (f"; {rejected} instance(s) skipped as rejected (IOCM)" if rejected else ""))
    plan = order_studies(studies, ordering, now)
    job_id = restores.create_planning_job(
        catalog, kind=kind, peer=peer.name, destination=f"{peer.ae_title}@{peer.host}:{peer.port}",
        selection=selection.to_json(), ordering=ordering, options=json.dumps(options, sort_keys=True), actor=actor,
        total=sum(s.instances for s in studies), total_bytes=sum(s.size_original for s in studies), now=now)
    return job_id, plan


def fill_job(catalog: "Catalog", job_id: int, selection: Selection, plan: Plan,
             should_stop: Callable[[], bool] = lambda: False) -> None:
    """Write a ``planning`` job's items and make it ``active``; on any failure (or
    ``should_stop``) the job is superseded, so nobody resumes a half-written plan."""
    try:
        planned, planned_bytes = _plan_items(catalog, job_id, selection, plan, should_stop)
        if not restores.activate_planned_job(catalog, job_id, planned, planned_bytes):
            raise RestoreError(f"job {job_id} was superseded while it was being planned (the same restore was "
                               "started again elsewhere); follow that one in `dicomvault status`")
    except BaseException:
        with contextlib.suppress(Exception):  # nobody may resume a half plan
            restores.supersede_unfinished_plan(catalog, job_id)
        raise


def _batches(ordered: Plan) -> Iterator[Plan]:
    """Consecutive studies of about ``_PLAN_INSTANCES_PER_BATCH`` instances (a larger study alone)."""
    batch: list[tuple[int, SelectedStudy]] = []
    count = 0
    for pair in ordered:
        if batch and count + pair[1].instances > _PLAN_INSTANCES_PER_BATCH:
            yield batch
            batch, count = [], 0
        batch.append(pair)
        count += pair[1].instances
    if batch:
        yield batch


def _plan_items(catalog: "Catalog", job_id: int, selection: Selection, ordered: Plan,
                should_stop: Callable[[], bool]) -> tuple[int, int]:
    """Write the items, a batch of studies per transaction; returns (instances, bytes)."""
    position = size = 0
    for chunk in _batches(ordered):
        if should_stop():
            raise RestoreError(f"job {job_id} was stopped while it was being planned; nothing was sent. "
                               "Start the restore again to plan it anew")
        rank = {study.pk: (index, tier) for index, (tier, study) in enumerate(chunk)}
        rows = select_instances(catalog, selection, study_pks=rank)
        rows.sort(key=lambda r: (rank[r.study_pk][0], *_instance_order(r)))
        restores.add_planned_items(catalog, job_id, (
            (position + offset, rank[row.study_pk][1], row) for offset, row in enumerate(rows)))
        position += len(rows)
        size += sum(r.size_original for r in rows)
    return position, size


def load_job(catalog: "Catalog", job_id: int) -> JobRow:
    row = restores.job_row(catalog, job_id)
    if row is None:
        raise RestoreError(f"there is no restore job {job_id}; `dicomvault status --json` lists the jobs")
    return JobRow(row.id, row.kind, row.peer, row.destination, Selection.from_json(row.selection), row.ordering,
                  json.loads(row.options or "{}"), row.state, row.runs, row.total)


def latest_job_for(catalog: "Catalog", kind: str, peer: str, selection: Selection) -> JobRow | None:
    """The newest job of this kind to this peer with exactly this selection (not superseded)."""
    job_id = restores.latest_job_id(catalog, kind, peer, selection.to_json())
    return load_job(catalog, job_id) if job_id is not None else None


def planning_jobs(catalog: "Catalog", kind: str, peer: str, selection: Selection) -> list[int]:
    """Jobs of this same request still ``planning`` (at work, or abandoned by a dead planner)."""
    return restores.planning_job_ids(catalog, kind, peer, selection.to_json())


def supersede(catalog: "Catalog", job_id: int) -> None:
    restores.supersede_job(catalog, job_id)


def requeue_failed(catalog: "Catalog", job_id: int) -> int:
    """Put a job's failed instances back in the queue (after fixing the PACS side); returns how many."""
    return restores.requeue_failed_items(catalog, job_id)


# --- progress and reports ------------------------------------------------------------------------

def job_lock_path(lock_dir: Path, job_id: int) -> Path:
    return lock_dir / f"restore-{job_id}.lock"


def lock_held(path: Path) -> bool:
    """Whether a live process holds the job's flock (the kernel drops it when the runner dies)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class JobLock:
    """One runner per job, across processes: an flock the kernel drops if the runner dies."""

    def __init__(self, directory: Path, job_id: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = job_lock_path(directory, job_id)
        self._file: IO[str] | None = None

    def __enter__(self) -> "JobLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise RestoreError(f"job {self.path.stem.split('-')[-1]} is already being run by another process; "
                               "watch it with `dicomvault status`") from exc
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _display_state(job: Any, failed: int, now: float, lock_dir: Path | None) -> str:
    if job.state == "superseded":
        return "superseded"
    if job.state == "planning":  # its planner holds the job's lock, and beats after every batch
        if lock_dir is not None:
            return "planning" if lock_held(job_lock_path(lock_dir, job.id)) else "abandoned"
        return "planning" if job.heartbeat_at and now - job.heartbeat_at <= HEARTBEAT_STALE else "abandoned"
    if job.state == "completed":
        return "completed with failures" if failed else "completed"
    if lock_dir is not None:  # same host: the runner's lock is the truth, at once
        running = lock_held(job_lock_path(lock_dir, job.id))
    else:  # another host (a shared PostgreSQL catalog): a recent heartbeat
        running = bool(job.heartbeat_at and now - job.heartbeat_at <= HEARTBEAT_STALE)
    if running:
        return "running"
    return "interrupted" if job.runs else "planned"


def job_progress(catalog: "Catalog", job_id: int, now: float | None = None,
                 lock_dir: Path | None = None) -> dict[str, Any]:
    """Counts from the item rows, the derived state, throughput and an ETA. ``lock_dir``
    (the archive's ``locks`` folder) tells a killed runner from a live one at once."""
    now = time.time() if now is None else now
    job, tiers = restores.job_with_item_counts(catalog, job_id)
    if job is None:
        raise RestoreError(f"there is no restore job {job_id}")
    by_state = {"pending": 0, "sent": 0, "failed": 0}
    bytes_sent, transcoded = 0, 0
    tier_rows: dict[int, dict[str, Any]] = {}
    for tier, state, count, size, converted in tiers:
        by_state[state] = by_state.get(state, 0) + count
        entry = tier_rows.setdefault(tier, {"tier": TIER_NAMES[tier], "total": 0, "sent": 0, "failed": 0})
        entry["total"] += count
        if state in ("sent", "failed"):
            entry[state] += count
        if state == "sent":
            bytes_sent += int(size)
            transcoded += int(converted or 0)
    done = by_state["sent"] + by_state["failed"]
    rate = bytes_sent / job.seconds_sending if job.seconds_sending else None
    instances_rate = by_state["sent"] / job.seconds_sending if job.seconds_sending else None
    pending_bytes = max(0, int(job.total_bytes) - bytes_sent)
    return {
        "id": job.id, "kind": job.kind, "peer": job.peer, "destination": job.destination,
        "selection": json.loads(job.selection), "ordering": job.ordering, "options": json.loads(job.options or "{}"),
        "state": _display_state(job, by_state["failed"], now, lock_dir),
        "total": job.total, "sent": by_state["sent"], "failed": by_state["failed"], "pending": by_state["pending"],
        "transcoded": transcoded,
        "percent": round(100.0 * done / job.total, 1) if job.total else 100.0,
        "bytes_total": int(job.total_bytes), "bytes_sent": bytes_sent,
        "tiers": [tier_rows[k] for k in sorted(tier_rows)],
        "runs": job.runs, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "heartbeat_at": job.heartbeat_at,
        "seconds_sending": round(job.seconds_sending, 3),
        "instances_per_second": round(instances_rate, 1) if instances_rate else None,
        "megabytes_per_second": round(rate / 1e6, 2) if rate else None,
        "eta_seconds": round(pending_bytes / rate, 1) if rate and by_state["pending"] else None,
        "last_error": job.last_error, "actor": job.actor,
    }


def job_failures(catalog: "Catalog", job_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Every failed instance with the DICOM status the peer gave (None: never got that far) and why."""
    return [{"sop_instance_uid": r.sop_instance_uid, "study_uid": r.study_uid, "sop_class_uid": r.sop_class_uid,
             "transfer_syntax_uid": r.transfer_syntax_uid,
             "status": f"0x{r.status:04X}" if r.status is not None else None, "reason": r.detail or ""}
            for r in restores.failed_items(catalog, job_id, limit)]


def job_transcoded(catalog: "Catalog", job_id: int, limit: int = 1000) -> list[dict[str, str]]:
    return [{"sop_instance_uid": r.sop_instance_uid, "stored": r.transfer_syntax_uid, "sent": r.sent_syntax}
            for r in restores.transcoded_items(catalog, job_id, limit)]


def recent_jobs(catalog: "Catalog", within_seconds: float = 7 * 24 * 3600, limit: int = 10,
                now: float | None = None, lock_dir: Path | None = None) -> list[dict[str, Any]]:
    """Unfinished jobs and those finished recently, newest first (for status and the API)."""
    now = time.time() if now is None else now
    ids = restores.recent_job_ids(catalog, now - within_seconds, limit)
    return [job_progress(catalog, job_id, now, lock_dir) for job_id in ids]


def lock_dir(settings: Any) -> Path:
    """Where job runners hold their locks: the archive's data directory."""
    return Path(settings.base_dir) / "locks"


def status_lock_dir(settings: Any) -> Path | None:
    """The lock folder to judge liveness by, when every runner shares this host (an embedded
    SQLite catalog); with a shared PostgreSQL catalog a runner may be elsewhere: heartbeats."""
    return lock_dir(settings) if str(settings.catalog_url).startswith("sqlite") else None


def job_report(archive: Any, job_id: int) -> dict[str, Any]:
    """Progress plus every failure and transcoding: the final report, the API's job view."""
    catalog = archive.catalog
    progress = job_progress(catalog, job_id, lock_dir=status_lock_dir(archive.settings))
    return {**progress, "failures": job_failures(catalog, job_id),
            "transcoded_instances": job_transcoded(catalog, job_id),
            "skipped": skipped_rejected(catalog, Selection.from_json(json.dumps(progress["selection"])))}


def skipped_rejected(catalog: "Catalog", selection: Selection) -> list[dict[str, str]]:
    """What the selection matches but a restore or export never sends: rejected instances (IOCM)."""
    return [{"sop_instance_uid": sop, "study_uid": study, "reason": why}
            for study, sop, why in rejected_in(catalog, selection)]


def restore_alerts(jobs: list[dict[str, Any]], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    alerts = []
    for job in jobs:
        if job["state"] == "abandoned":
            alerts.append(f"{job['kind']} job {job['id']} to {job['peer']}: its planning stopped before the plan was "
                          "complete (the process died); nothing of it will be sent. Run the same restore again "
                          "to plan it anew")
        elif job["state"] == "interrupted":
            alerts.append(f"{job['kind']} job {job['id']} to {job['peer']} interrupted at {job['sent']}/{job['total']}"
                          + (f" ({job['last_error']})" if job["last_error"] else "")
                          + f"; resume it with `dicomvault restore --resume {job['id']}`")
        elif job["failed"] and job["finished_at"] and now - job["finished_at"] < 24 * 3600:
            alerts.append(f"{job['kind']} job {job['id']} to {job['peer']}: {job['failed']} instance(s) refused or "
                          f"unreadable; `dicomvault restore --report {job['id']}` lists them")
    return alerts
