"""Reconcile the vault with a PACS: what does the PACS hold that the vault does not (and back)?

Nobody should have to trust that "the backup is running". ``dicomvault reconcile --pacs PEER
--since DATE`` (and the ``[reconcile]`` schedule inside ``dicomvault serve``) compares the two
study by study and says what is missing; ``--backfill`` asks the PACS to send it.

How a run compares (``Reconciler.run``)
---------------------------------------
1. **Study level, one date chunk at a time.** The range ``--since``..``--until`` is cut into
   chunks of ``--chunk-days`` days, newest first. Per chunk: one Study Root C-FIND at STUDY
   level on the PACS (``StudyDate=A-B``; return keys StudyInstanceUID, StudyDate, StudyTime,
   PatientID, PatientName, AccessionNumber, ModalitiesInStudy, NumberOfStudyRelatedSeries,
   NumberOfStudyRelatedInstances) and the same query on the vault's catalog through the
   C-FIND/QIDO engine (``catalog.query.run_query``). One association serves the whole run.
2. **Strays by UID.** A study one side listed and the other did not is looked up by its
   Study Instance UID on the other side before it is called missing (UID lists, in batches):
   that catches a study whose StudyDate differs between the two (corrected in the PACS after
   the vault received it) or a PACS that returns undated studies for a range. Such studies
   count as present on both sides; a differing date is listed in ``dates_differ``.
3. **Counts.** A study on both sides whose NumberOfStudyRelatedSeries/Instances differ, or
   whose counts the PACS did not return, is compared at SERIES level on both sides
   (SeriesInstanceUID, Modality, SeriesNumber, NumberOfSeriesRelatedInstances); a PACS that
   does not fill the series count either is counted at IMAGE level (one C-FIND per series).
   The differing series say which side has more.

Undated studies (empty StudyDate) are outside every date range: the vault's query engine never
matches an empty date against a range, and most PACS (Orthanc among them) do not either for a
closed range ``A-B``. They are therefore not reconciled by date; a PACS that does return them
gets them compared by UID like any stray. Series have no date of their own: they are always
compared within their study.

The result (:class:`ReconcileReport`)
-------------------------------------
- ``only_in_pacs``: studies the vault lacks entirely (patient, date, modalities, counts);
- ``only_in_vault``: studies the PACS no longer has (it may have purged them on purpose, so
  this is reported, never alerted);
- ``differing``: studies on both sides whose counts differ, with the differing series;
- totals (``missing_in_vault`` = studies wholly or partly missing in the vault, with
  ``missing_instances``; ``missing_in_pacs`` = studies wholly or partly only in the vault),
  chunks queried, C-FINDs sent, duration.

Backfill
--------
``--backfill`` asks the PACS to C-MOVE to our AE title (``[dicom] ae_title``) every study it
alone has (STUDY level) and every series the vault lacks or holds fewer instances of
(SERIES level; the vault de-duplicates instances it already has), one move at a time, newest
study first. The PACS must know the vault as a DICOM node and ``dicomvault serve`` must be
running (checked first: nothing listening on our DICOM port fails the backfill at once). The
vault acknowledges instances once durable and indexes them a moment later (group commit), so
the run then polls the catalog until the moved instances show up (it gives up after
``settle_timeout`` seconds without a newly indexed instance), re-compares the moved studies
and reports what was backfilled and what is still missing. Seeding a new vault from an
existing PACS archive is the same operation over a long range.

Persistence and audit
---------------------
Each run is a ``reconcile_runs`` row: inserted as ``running``, finished as ``completed``
(the comparison ran; ``error`` holds a backfill failure if any) or ``failed`` (could not
run: PACS unreachable, association rejected, a query refused, interrupted). The summary counts
are columns (``missing_in_vault`` is what the vault still lacks after any backfill), the report
is JSON (each list capped at ``REPORT_LIST_LIMIT`` entries; the CLI's ``--json`` has them all).
Every run is audited (action ``reconcile``, subject the peer) in the transaction that
finishes its row. Bad input (unknown peer, bad dates) is refused before a run starts.

Status
------
``reconcile_status`` gives the latest run per peer for ``dicomvault status`` and alerts when
the vault lacks something, when the latest run failed, or when the schedule has stopped
running. Studies only in the vault are not an alert.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog
from dicomvault.catalog import schema as t
from dicomvault.catalog.query import Query, run_query
from dicomvault.config import PeerSettings, Settings
from dicomvault.jobs.reconcile_pacs import MoveResult, PacsClient, PacsError, count, text

log = logging.getLogger(__name__)

REPORT_LIST_LIMIT = 1000  # entries per list in the persisted report (the CLI's --json has all)
SCHEDULER_ACTOR = "dicomvault:reconcile-scheduler"
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"
_PACS_UID_BATCH = 50  # Study Instance UIDs per UID-list C-FIND (strays)
_VAULT_UID_BATCH = 500
_MAX_CONSECUTIVE_MOVE_FAILURES = 3

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total)


class ReconcileError(Exception):
    """The reconcile cannot start as asked (unknown peer, bad dates): the message says why."""


# --- input --------------------------------------------------------------------------------


def parse_date(label: str, value: str) -> _dt.date:
    raw = (value or "").strip()
    if len(raw) != 8 or not raw.isdigit():
        raise ReconcileError(f"{label} must be a date as YYYYMMDD, got {value!r}")
    try:
        return _dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        raise ReconcileError(f"{label} {value!r} is not a valid calendar date") from None


def dicom_date(day: _dt.date) -> str:
    return day.strftime("%Y%m%d")


def date_chunks(since: _dt.date, until: _dt.date, days: int) -> list[tuple[str, str]]:
    """(from, to) DICOM dates covering since..until inclusive, ``days`` per chunk, newest first."""
    chunks = []
    end = until
    while end >= since:
        start = max(since, end - _dt.timedelta(days=days - 1))
        chunks.append((dicom_date(start), dicom_date(end)))
        end = start - _dt.timedelta(days=1)
    return chunks


def resolve_peer(settings: Settings, name: str) -> PeerSettings:
    """A ``[peers.NAME]`` entry by name or AE title (exact first, then ignoring case)."""
    wanted = (name or "").strip()
    for exact in (True, False):
        for peer in settings.peers:
            candidates = (peer.name, peer.ae_title)
            if (wanted in candidates) if exact else (wanted.lower() in (c.lower() for c in candidates)):
                return peer
    if not settings.peers:
        raise ReconcileError(f"unknown PACS {wanted!r}: no [peers.NAME] is configured; add one with ae_title, host "
                             "and port to the config")
    known = ", ".join(f"{p.name} ({p.ae_title}@{p.host}:{p.port})" for p in settings.peers)
    raise ReconcileError(f"unknown PACS {wanted!r}: configured peers are {known}")


# --- the report ---------------------------------------------------------------------------


@dataclass
class StudyInfo:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    modalities: str = ""  # backslash-separated
    series: int | None = None  # None: the side did not say
    instances: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid, "patient_id": self.patient_id, "patient_name": self.patient_name,
            "study_date": self.study_date, "study_time": self.study_time, "accession_number": self.accession_number,
            "modalities": [m for m in self.modalities.split("\\") if m], "series": self.series,
            "instances": self.instances,
        }


@dataclass
class SeriesInfo:
    series_uid: str
    modality: str = ""
    series_number: str = ""
    instances: int | None = None


@dataclass
class SeriesDiff:
    series_uid: str
    modality: str
    series_number: str
    pacs_instances: int | None  # None: the series is not in the PACS
    vault_instances: int | None  # None: the series is not in the vault

    @property
    def more(self) -> str:
        if self.vault_instances is None:
            return "pacs"
        if self.pacs_instances is None:
            return "vault"
        return "pacs" if self.pacs_instances > self.vault_instances else "vault"

    @property
    def missing_in_vault(self) -> int:
        return max(0, (self.pacs_instances or 0) - (self.vault_instances or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "modality": self.modality, "series_number": self.series_number,
                "pacs_instances": self.pacs_instances, "vault_instances": self.vault_instances, "more": self.more,
                "missing_in_vault": self.missing_in_vault}


@dataclass
class StudyDiff:
    """A study on both sides whose series or instance counts differ."""

    study: StudyInfo  # as the PACS describes it
    pacs_series: int | None
    pacs_instances: int | None
    vault_series: int
    vault_instances: int
    series: list[SeriesDiff] = field(default_factory=list)

    @property
    def more_in_pacs(self) -> bool:
        if self.series:
            return any(s.more == "pacs" for s in self.series)
        return (self.pacs_instances or 0) > self.vault_instances

    @property
    def more_in_vault(self) -> bool:
        if self.series:
            return any(s.more == "vault" for s in self.series)
        return self.pacs_instances is not None and self.pacs_instances < self.vault_instances

    @property
    def missing_instances(self) -> int:
        if self.series:
            return sum(s.missing_in_vault for s in self.series)
        return max(0, (self.pacs_instances or 0) - self.vault_instances)

    @property
    def more(self) -> str:
        return "both" if self.more_in_pacs and self.more_in_vault else ("pacs" if self.more_in_pacs else "vault")

    def to_dict(self) -> dict[str, Any]:
        return {**self.study.to_dict(), "pacs_series": self.pacs_series, "pacs_instances": self.pacs_instances,
                "vault_series": self.vault_series, "vault_instances": self.vault_instances, "more": self.more,
                "missing_instances": self.missing_instances, "series_detail": [s.to_dict() for s in self.series]}


@dataclass
class BackfillReport:
    destination: str
    studies: int = 0  # studies asked for (wholly or partly)
    moves_planned: int = 0
    moves: list[MoveResult] = field(default_factory=list)
    backfilled_instances: int = 0  # newly indexed in the vault for the moved studies
    studies_complete: int = 0  # moved studies that now match the PACS
    still_missing: int = 0  # moved studies still (partly) missing
    not_indexed: list[str] = field(default_factory=list)  # studies the wait for indexing gave up on
    index_wait_seconds: float = 0.0
    error: str | None = None

    @property
    def moved_instances(self) -> int:
        return sum(m.completed + m.warning for m in self.moves)

    @property
    def failed_suboperations(self) -> int:
        return sum(m.failed for m in self.moves)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        moves = self.moves if limit is None else self.moves[:limit]
        return {
            "destination": self.destination, "studies": self.studies, "moves_planned": self.moves_planned,
            "moves_done": len(self.moves), "moves_failed": sum(1 for m in self.moves if not m.ok),
            "moved_instances": self.moved_instances, "failed_suboperations": self.failed_suboperations,
            "backfilled_instances": self.backfilled_instances, "studies_complete": self.studies_complete,
            "still_missing": self.still_missing, "not_indexed": self.not_indexed[: limit or None],
            "index_wait_seconds": round(self.index_wait_seconds, 3), "error": self.error,
            "moves": [m.to_dict() for m in moves], "moves_truncated": len(self.moves) - len(moves),
        }


@dataclass
class ReconcileReport:
    peer: str
    peer_ae_title: str
    peer_address: str
    our_ae_title: str
    date_from: str
    date_to: str
    chunk_days: int
    backfill_requested: bool
    actor: str
    run_id: int | None = None
    state: str = RUNNING
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    chunks: int = 0  # date chunks queried (one STUDY C-FIND on each side per chunk)
    chunks_planned: int = 0
    pacs_queries: dict[str, int] = field(default_factory=lambda: {"study_chunks": 0, "study_by_uid": 0,
                                                                  "series": 0, "image": 0})
    pacs_studies: int = 0  # studies the PACS listed for the range
    vault_studies: int = 0  # studies the vault listed for the range
    in_both: int = 0
    only_in_pacs: list[StudyInfo] = field(default_factory=list)
    only_in_vault: list[StudyInfo] = field(default_factory=list)
    differing: list[StudyDiff] = field(default_factory=list)
    dates_differ: list[dict[str, str]] = field(default_factory=list)
    backfill: BackfillReport | None = None

    @property
    def duration_seconds(self) -> float:
        return round((self.finished_at or time.time()) - self.started_at, 3)

    @property
    def missing_in_vault(self) -> int:
        """Studies wholly or partly missing in the vault."""
        return len(self.only_in_pacs) + sum(1 for d in self.differing if d.more_in_pacs)

    @property
    def missing_instances(self) -> int:
        """Instances missing in the vault, as far as the PACS's counts tell."""
        return sum(s.instances or 0 for s in self.only_in_pacs) + sum(d.missing_instances for d in self.differing)

    @property
    def missing_in_pacs(self) -> int:
        return len(self.only_in_vault) + sum(1 for d in self.differing if d.more_in_vault)

    @property
    def backfilled_instances(self) -> int:
        return self.backfill.backfilled_instances if self.backfill else 0

    def totals(self) -> dict[str, int]:
        return {
            "pacs_studies": self.pacs_studies, "vault_studies": self.vault_studies, "in_both": self.in_both,
            "matching": self.in_both - len(self.differing), "only_in_pacs": len(self.only_in_pacs),
            "only_in_vault": len(self.only_in_vault), "differing": len(self.differing),
            "missing_in_vault": self.missing_in_vault, "missing_instances": self.missing_instances,
            "missing_in_pacs": self.missing_in_pacs, "backfilled_instances": self.backfilled_instances,
        }

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        def capped(items: list[Any]) -> list[Any]:
            return items if limit is None else items[:limit]

        result = {
            "run_id": self.run_id, "state": self.state, "error": self.error, "peer": self.peer,
            "peer_ae_title": self.peer_ae_title, "peer_address": self.peer_address,
            "our_ae_title": self.our_ae_title, "date_from": self.date_from, "date_to": self.date_to,
            "chunk_days": self.chunk_days, "chunks": self.chunks, "chunks_planned": self.chunks_planned,
            "pacs_queries": dict(self.pacs_queries), "backfill_requested": self.backfill_requested,
            "actor": self.actor, "started_at": self.started_at, "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds, "totals": self.totals(),
            "only_in_pacs": [s.to_dict() for s in capped(self.only_in_pacs)],
            "only_in_vault": [s.to_dict() for s in capped(self.only_in_vault)],
            "differing": [d.to_dict() for d in capped(self.differing)],
            "dates_differ": capped(self.dates_differ),
            "backfill": self.backfill.to_dict(limit) if self.backfill else None,
        }
        if limit is not None:
            result["truncated"] = {name: max(0, len(items) - limit) for name, items in (
                ("only_in_pacs", self.only_in_pacs), ("only_in_vault", self.only_in_vault),
                ("differing", self.differing), ("dates_differ", self.dates_differ))}
        return result


# --- the vault side -----------------------------------------------------------------------

_STUDY_FILTERS = {k: "" for k in ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientID", "PatientName",
                                  "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                  "NumberOfStudyRelatedInstances")}


def _vault_study(row: dict[str, str]) -> StudyInfo:
    return StudyInfo(
        study_uid=row["StudyInstanceUID"], patient_id=row["PatientID"], patient_name=row["PatientName"],
        study_date=row["StudyDate"], study_time=row["StudyTime"], accession_number=row["AccessionNumber"],
        modalities=row["ModalitiesInStudy"], series=count(row, "NumberOfStudyRelatedSeries") or 0,
        instances=count(row, "NumberOfStudyRelatedInstances") or 0,
    )


def vault_studies(catalog: Catalog, **match: str) -> dict[str, StudyInfo]:
    """The vault's studies matching ``match`` (C-FIND matching rules), by Study Instance UID."""
    rows = run_query(catalog, Query(level="STUDY", filters={**_STUDY_FILTERS, **match}))
    return {row["StudyInstanceUID"]: _vault_study(row) for row in rows}


def vault_studies_by_uid(catalog: Catalog, uids: Iterable[str]) -> dict[str, StudyInfo]:
    uids = sorted(set(uids))
    found: dict[str, StudyInfo] = {}
    for i in range(0, len(uids), _VAULT_UID_BATCH):
        found.update(vault_studies(catalog, StudyInstanceUID="\\".join(uids[i:i + _VAULT_UID_BATCH])))
    return found


def vault_series(catalog: Catalog, study_uid: str) -> dict[str, SeriesInfo]:
    rows = run_query(catalog, Query(level="SERIES", filters={
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
        "NumberOfSeriesRelatedInstances": ""}))
    return {r["SeriesInstanceUID"]: SeriesInfo(r["SeriesInstanceUID"], r["Modality"], r["SeriesNumber"],
                                               count(r, "NumberOfSeriesRelatedInstances") or 0) for r in rows}


def _pacs_study(ds: Any) -> StudyInfo:
    return StudyInfo(
        study_uid=text(ds, "StudyInstanceUID"), patient_id=text(ds, "PatientID"),
        patient_name=text(ds, "PatientName"), study_date=text(ds, "StudyDate"), study_time=text(ds, "StudyTime"),
        accession_number=text(ds, "AccessionNumber"), modalities=text(ds, "ModalitiesInStudy"),
        series=count(ds, "NumberOfStudyRelatedSeries"), instances=count(ds, "NumberOfStudyRelatedInstances"),
    )


def _newest_first(study: StudyInfo) -> tuple[int, str, str, str]:
    return (1 if study.study_date else 0, study.study_date, study.study_time, study.study_uid)


# --- the run ------------------------------------------------------------------------------


class Reconciler:
    """One reconcile run. Build it with :meth:`create` (validates the input), then :meth:`run`."""

    def __init__(self, catalog: Catalog, settings: Settings, peer: PeerSettings, since: _dt.date,
                 until: _dt.date, chunk_days: int = 1, backfill: bool = False, actor: str = "",
                 progress: Progress | None = None, cancelled: threading.Event | None = None,
                 settle_timeout: float = 30.0) -> None:
        self.catalog = catalog
        self.settings = settings
        self.peer = peer
        self.since, self.until = since, until
        self.chunk_days = chunk_days
        self.do_backfill = backfill
        self.actor = actor
        self.progress = progress or (lambda _stage, _done, _total: None)
        self.cancelled = cancelled or threading.Event()
        self.settle_timeout = settle_timeout
        self.our_ae = settings.dicom.ae_title
        self.timeout = float(getattr(settings.dicom, "network_timeout", 60.0) or 60.0)
        self.client: PacsClient | None = None
        self.report = ReconcileReport(
            peer=peer.name, peer_ae_title=peer.ae_title, peer_address=f"{peer.host}:{peer.port}",
            our_ae_title=self.our_ae, date_from=dicom_date(since), date_to=dicom_date(until),
            chunk_days=chunk_days, backfill_requested=backfill, actor=actor,
        )
        self._pacs: dict[str, StudyInfo] = {}  # every study the PACS described, by UID
        self._vault: dict[str, StudyInfo] = {}

    @classmethod
    def create(cls, catalog: Catalog, settings: Settings, peer: str, since: str, until: str | None = None,
               chunk_days: int = 1, backfill: bool = False, actor: str = "", **kwargs: Any) -> "Reconciler":
        """Validate the request (ReconcileError with a one-line reason) and build the run."""
        first = parse_date("--since", since)
        last = parse_date("--until", until) if until else _dt.date.today()
        if last < first:
            raise ReconcileError(f"--until {dicom_date(last)} is before --since {dicom_date(first)}")
        if isinstance(chunk_days, bool) or not isinstance(chunk_days, int) or not 1 <= chunk_days <= 3660:
            raise ReconcileError(f"--chunk-days must be a whole number of days from 1 to 3660, got {chunk_days!r}")
        return cls(catalog, settings, resolve_peer(settings, peer), first, last, chunk_days, backfill, actor, **kwargs)

    def abort(self) -> None:
        """From another thread: stop the run soon (between operations, or by aborting the association)."""
        self.cancelled.set()
        client = self.client
        if client is not None:
            client.abort()

    def abandon(self, reason: str) -> None:
        """From another thread, when the run does not stop in time: record it as failed, so
        ``status`` does not show it running forever (if it finishes after all, it records its
        own outcome over this one)."""
        r = self.report
        if r.run_id is None or r.state != RUNNING:
            return
        with self.catalog.write() as conn:
            changed = conn.execute(update(t.reconcile_runs).where(
                t.reconcile_runs.c.id == r.run_id, t.reconcile_runs.c.state == RUNNING,
            ).values(state=FAILED, finished_at=time.time(), error=reason)).rowcount
            if changed:
                append(conn, AuditEvent(actor=r.actor or "dicomvault", action="reconcile", subject=r.peer,
                                        outcome="failure", detail={"run_id": r.run_id, "date_from": r.date_from,
                                                                   "date_to": r.date_to, "error": reason}))

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> ReconcileReport:
        """Run, persist and audit; never raises for a PACS problem (the report's state says
        ``failed`` and ``error`` why). Interrupts (KeyboardInterrupt) are recorded, then re-raised."""
        report = self.report
        self._start()
        try:
            self.client = PacsClient(self.peer, self.our_ae, self.timeout, self.cancelled)
            with self.client:
                self._compare_range()
                if self.do_backfill:
                    self._backfill()
            report.state = COMPLETED
        except PacsError as exc:
            report.state, report.error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed run, not a crash of `serve`
            log.exception("reconcile with %s failed", self.peer.name)
            report.state, report.error = FAILED, f"{type(exc).__name__}: {exc}"
        except BaseException:
            report.state, report.error = FAILED, "interrupted"
            self._finish()
            raise
        finally:
            self.client = None
        if report.state == COMPLETED and report.backfill and report.backfill.error:
            report.error = f"backfill: {report.backfill.error}"
        self._finish()
        return report

    def _start(self) -> None:
        r = self.report
        with self.catalog.write() as conn:
            r.run_id = int(conn.execute(insert(t.reconcile_runs).values(
                peer=r.peer, date_from=r.date_from, date_to=r.date_to, backfill=int(r.backfill_requested),
                state=RUNNING, actor=r.actor, started_at=r.started_at, report="{}",
            )).inserted_primary_key[0])

    def _finish(self) -> None:
        r = self.report
        r.finished_at = time.time()
        report_json = json.dumps(r.to_dict(REPORT_LIST_LIMIT), separators=(",", ":"), default=str)
        detail = {
            "run_id": r.run_id, "peer_ae_title": r.peer_ae_title, "peer_address": r.peer_address,
            "date_from": r.date_from, "date_to": r.date_to, "chunk_days": r.chunk_days, "chunks": r.chunks,
            "backfill": r.backfill_requested, "state": r.state, **r.totals(),
            "duration_seconds": r.duration_seconds,
        }
        if r.error:
            detail["error"] = r.error
        with self.catalog.write() as conn:
            conn.execute(update(t.reconcile_runs).where(t.reconcile_runs.c.id == r.run_id).values(
                state=r.state, finished_at=r.finished_at, pacs_studies=r.pacs_studies, vault_studies=r.vault_studies,
                missing_in_vault=r.missing_in_vault, missing_in_pacs=r.missing_in_pacs,
                backfilled_instances=r.backfilled_instances, report=report_json, error=r.error,
            ))
            append(conn, AuditEvent(actor=r.actor or "dicomvault", action="reconcile", subject=r.peer,
                                    outcome="success" if r.state == COMPLETED and not r.error else "failure",
                                    detail=detail))

    # --- comparing ------------------------------------------------------------------------

    def _compare_range(self) -> None:
        r, client = self.report, self.client
        assert client is not None
        chunks = date_chunks(self.since, self.until, self.chunk_days)
        r.chunks_planned = len(chunks)
        self.progress("querying by date", 0, len(chunks))
        pacs: dict[str, StudyInfo] = {}
        vault: dict[str, StudyInfo] = {}
        for i, (low, high) in enumerate(chunks):
            found = client.studies({"StudyDate": f"{low}-{high}"})
            r.pacs_queries["study_chunks"] += 1
            for ds in found:
                study = _pacs_study(ds)
                if study.study_uid:
                    pacs[study.study_uid] = study
            vault.update(vault_studies(self.catalog, StudyDate=f"{low}-{high}"))
            r.chunks += 1
            self.progress("querying by date", i + 1, len(chunks))
        r.pacs_studies, r.vault_studies = len(pacs), len(vault)
        self._pacs.update(pacs)

        # Strays: listed by one side only; look them up by UID on the other before calling them missing.
        pacs_only = sorted(set(pacs) - set(vault))
        if pacs_only:
            vault.update(vault_studies_by_uid(self.catalog, pacs_only))
        vault_only = sorted(set(vault) - set(pacs))
        if vault_only:
            found_in_pacs = self._pacs_by_uid(vault_only)
            pacs.update(found_in_pacs)
            self._pacs.update(found_in_pacs)
        self._vault = vault

        both = sorted(set(pacs) & set(vault))
        r.in_both = len(both)
        for uid in both:
            if pacs[uid].study_date != vault[uid].study_date:
                r.dates_differ.append({"study_uid": uid, "pacs": pacs[uid].study_date, "vault": vault[uid].study_date})
        r.only_in_pacs = sorted((pacs[u] for u in set(pacs) - set(vault)), key=_newest_first, reverse=True)
        r.only_in_vault = sorted((vault[u] for u in set(vault) - set(pacs)), key=_newest_first, reverse=True)
        to_check = [u for u in both if not self._counts_agree(pacs[u], vault[u])]
        self.progress("comparing series", 0, len(to_check))
        for i, uid in enumerate(to_check):
            diff = self._compare_study(pacs[uid], vault[uid])
            if diff is not None:
                r.differing.append(diff)
            self.progress("comparing series", i + 1, len(to_check))
        r.differing.sort(key=lambda d: _newest_first(d.study), reverse=True)

    def _pacs_by_uid(self, uids: list[str]) -> dict[str, StudyInfo]:
        client = self.client
        assert client is not None
        found: dict[str, StudyInfo] = {}
        for i in range(0, len(uids), _PACS_UID_BATCH):
            batch = uids[i:i + _PACS_UID_BATCH]
            try:
                answers = client.studies({"StudyInstanceUID": "\\".join(batch)})
                self.report.pacs_queries["study_by_uid"] += 1
            except PacsError:
                if len(batch) == 1 or self.cancelled.is_set():
                    raise
                answers = []  # a PACS without UID-list matching: one query per UID
                for uid in batch:
                    answers += client.studies({"StudyInstanceUID": uid})
                    self.report.pacs_queries["study_by_uid"] += 1
            for ds in answers:
                study = _pacs_study(ds)
                if study.study_uid in batch:  # a PACS ignoring the key would list everything
                    found[study.study_uid] = study
        return found

    @staticmethod
    def _counts_agree(pacs: StudyInfo, vault: StudyInfo) -> bool:
        return (pacs.instances is not None and pacs.series is not None
                and pacs.instances == vault.instances and pacs.series == vault.series)

    def _pacs_series(self, study_uid: str) -> dict[str, SeriesInfo]:
        client = self.client
        assert client is not None
        result: dict[str, SeriesInfo] = {}
        self.report.pacs_queries["series"] += 1
        for ds in client.series(study_uid):
            uid = text(ds, "SeriesInstanceUID")
            if uid:
                result[uid] = SeriesInfo(uid, text(ds, "Modality"), text(ds, "SeriesNumber"),
                                         count(ds, "NumberOfSeriesRelatedInstances"))
        for info in result.values():
            if info.instances is None:  # the PACS does not fill the series count: count its instances
                self.report.pacs_queries["image"] += 1
                info.instances = client.instance_count(study_uid, info.series_uid)
        return result

    def _compare_study(self, pacs: StudyInfo, vault: StudyInfo) -> StudyDiff | None:
        """Series-level comparison of one study on both sides; None when they agree."""
        pacs_series = self._pacs_series(pacs.study_uid)
        mine = vault_series(self.catalog, pacs.study_uid)
        diffs: list[SeriesDiff] = []
        for uid in sorted(set(pacs_series) | set(mine)):
            p, v = pacs_series.get(uid), mine.get(uid)
            if p is not None and v is not None and p.instances == v.instances:
                continue
            described = p or v
            assert described is not None
            diffs.append(SeriesDiff(uid, described.modality, described.series_number,
                                    None if p is None else p.instances, None if v is None else v.instances))
        pacs_instances = pacs.instances if pacs.instances is not None else sum(
            s.instances or 0 for s in pacs_series.values())
        pacs_count = pacs.series if pacs.series is not None else len(pacs_series)
        vault_instances = sum(s.instances or 0 for s in mine.values())
        if not diffs and pacs_instances == vault_instances:
            return None  # the study-level counts were missing, or off while every series agrees
        diffs.sort(key=lambda d: (len(d.series_number), d.series_number, d.series_uid))
        return StudyDiff(pacs, pacs_count, pacs_instances, len(mine), vault_instances, diffs)

    # --- backfill -------------------------------------------------------------------------

    def _vault_listening(self) -> str | None:
        """None when something accepts connections on our DICOM port, else why not."""
        bind = self.settings.dicom.bind
        host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind
        try:
            with socket.create_connection((host, self.settings.dicom.port), timeout=5):
                return None
        except OSError as exc:
            return (f"the vault's DICOM listener ({self.our_ae} on {host}:{self.settings.dicom.port}) is not running "
                    f"({exc.strerror or exc}): start `dicomvault serve` so the PACS can send the missing instances")

    def _backfill(self) -> None:
        r, client = self.report, self.client
        assert client is not None
        result = r.backfill = BackfillReport(destination=self.our_ae)
        # (study, series or None) to move, newest study first.
        targets: list[tuple[StudyInfo, str | None]] = [(s, None) for s in r.only_in_pacs]
        for diff in r.differing:
            if not diff.more_in_pacs:
                continue
            short = [s.series_uid for s in diff.series if s.more == "pacs"]
            targets += [(diff.study, uid) for uid in short] if short else [(diff.study, None)]
        targets.sort(key=lambda target: _newest_first(target[0]), reverse=True)
        studies = {study.study_uid for study, _ in targets}
        result.studies, result.moves_planned = len(studies), len(targets)
        if not targets:
            return
        reason = self._vault_listening()
        if reason:
            result.error = reason
            return
        before = {uid: (self._vault[uid].instances or 0) if uid in self._vault else 0 for uid in studies}
        delivered: dict[str, int] = dict.fromkeys(studies, 0)
        failures_in_a_row = 0
        hint = (f"check that the PACS has our AE title {self.our_ae} at this host and the vault's DICOM port "
                f"{self.settings.dicom.port}, and that `dicomvault serve` is running")
        self.progress("backfill", 0, len(targets))
        for i, (study, series_uid) in enumerate(targets):
            try:
                move = client.move(self.our_ae, study.study_uid, series_uid, hint=hint)
            except PacsError as exc:
                result.error = f"stopped after {i} of {len(targets)} moves: {exc}"
                break
            result.moves.append(move)
            delivered[study.study_uid] += move.completed + move.warning
            self.progress("backfill", i + 1, len(targets))
            if move.error:
                failures_in_a_row = 0 if move.completed else failures_in_a_row + 1
                fatal = move.status == 0xA801 or not client.can_move
                if fatal or failures_in_a_row >= _MAX_CONSECUTIVE_MOVE_FAILURES:
                    result.error = move.error if fatal or i + 1 == len(targets) else (
                        f"stopped after {i + 1} of {len(targets)} moves, the last {failures_in_a_row} failed: "
                        f"{move.error}")
                    break
            else:
                failures_in_a_row = 0
        if result.error is None and result.moves and all(m.error for m in result.moves):
            result.error = result.moves[-1].error
        self._await_indexing(result, before, delivered)
        self._recompare(result, studies, before)

    def _await_indexing(self, result: BackfillReport, before: dict[str, int], delivered: dict[str, int]) -> None:
        """Poll the catalog until the moved instances are indexed (or nothing new shows up for
        ``settle_timeout`` seconds): the vault indexes a moment after acknowledging."""
        expected: dict[str, int] = {}
        for uid, sent in delivered.items():
            if not sent:
                continue
            pacs_count = self._pacs[uid].instances if uid in self._pacs else None
            target = before[uid] + sent
            expected[uid] = min(target, pacs_count) if pacs_count is not None else target
        if not expected:
            return
        total = sum(expected[u] - before[u] for u in expected)
        started = last_change = time.monotonic()
        last_seen = -1
        while True:
            seen = vault_studies_by_uid(self.catalog, expected)
            waiting = [u for u in expected if (seen[u].instances if u in seen else 0) < expected[u]]
            indexed = sum(min(expected[u], seen[u].instances or 0) - before[u] for u in expected if u in seen)
            self.progress("indexing", max(0, indexed), total)
            if not waiting:
                break
            now = time.monotonic()
            if indexed != last_seen:
                last_seen, last_change = indexed, now
            elif now - last_change >= self.settle_timeout:
                result.not_indexed = waiting
                break
            if self.cancelled.wait(0.05):
                raise PacsError("reconcile interrupted (stopping)")
        result.index_wait_seconds = time.monotonic() - started

    def _recompare(self, result: BackfillReport, studies: set[str], before: dict[str, int]) -> None:
        r = self.report
        now = vault_studies_by_uid(self.catalog, studies)
        result.backfilled_instances = sum(max(0, (now[u].instances or 0) - before[u]) for u in now)
        r.only_in_pacs = [s for s in r.only_in_pacs if s.study_uid not in studies]
        r.differing = [d for d in r.differing if d.study.study_uid not in studies]
        for uid in sorted(studies):
            pacs = self._pacs[uid]
            if uid not in now:
                r.only_in_pacs.append(pacs)
                result.still_missing += 1
                continue
            if uid not in self._vault:  # was only in the PACS: now on both sides
                r.in_both += 1
                r.vault_studies += 1
            self._vault[uid] = now[uid]
            diff = None if self._counts_agree(pacs, now[uid]) else self._compare_study(pacs, now[uid])
            if diff is None:
                result.studies_complete += 1
                continue
            r.differing.append(diff)
            if diff.more_in_pacs:
                result.still_missing += 1
            else:
                result.studies_complete += 1
        r.only_in_pacs.sort(key=_newest_first, reverse=True)
        r.differing.sort(key=lambda d: _newest_first(d.study), reverse=True)


# --- status -------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _run_summary(row: Any, now: float) -> dict[str, Any]:
    try:
        totals = json.loads(row.report or "{}").get("totals") or {}
    except (ValueError, AttributeError):
        totals = {}
    when = row.finished_at or row.started_at
    return {
        "run_id": row.id, "state": row.state, "actor": row.actor, "started_at": row.started_at,
        "finished_at": row.finished_at, "age_seconds": round(now - when, 1), "date_from": row.date_from,
        "date_to": row.date_to, "backfill": bool(row.backfill), "pacs_studies": row.pacs_studies,
        "vault_studies": row.vault_studies, "missing_in_vault": row.missing_in_vault,
        "missing_instances": totals.get("missing_instances"), "missing_in_pacs": row.missing_in_pacs,
        "backfilled_instances": row.backfilled_instances, "error": row.error,
    }


def _span(run: dict[str, Any]) -> str:
    return run["date_from"] if run["date_from"] == run["date_to"] else f"{run['date_from']}-{run['date_to']}"


def reconcile_status(catalog: Catalog, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The latest finished reconcile run per peer for ``status`` (a run in progress is shown
    under ``running``; when the latest finished run failed, the last completed one is under
    ``last_completed``), the schedule, and alert lines.

    Alerts: the vault lacks studies (or parts of studies) the PACS has, as the last completed
    run found them, with the command that backfills them; the latest run failed (PACS
    unreachable, association rejected, backfill failed, interrupted...); the ``[reconcile]``
    schedule's last run is more than two periods old (is ``dicomvault serve`` running?).
    Studies only in the vault are reported (``missing_in_pacs``) but never alerted: the PACS
    may have purged them on purpose, and keeping them is the vault's job.
    """
    now = time.time() if now is None else now
    runs = t.reconcile_runs
    cfg = settings.reconcile

    def latest(*where: Any) -> Any:
        return select(runs).where(runs.c.id.in_(select(func.max(runs.c.id)).where(*where).group_by(runs.c.peer)))

    with catalog.read() as conn:
        finished = {row.peer: row for row in conn.execute(latest(runs.c.state != RUNNING))}
        completed = {row.peer: row for row in conn.execute(latest(runs.c.state == COMPLETED))}
        running = {row.peer: row for row in conn.execute(latest(runs.c.state == RUNNING))}
        scheduled_last = None
        if cfg.peer:
            peer_names = {p.name for p in settings.peers if cfg.peer in (p.name, p.ae_title)} or {cfg.peer}
            scheduled_last = conn.execute(select(func.max(runs.c.started_at)).where(
                runs.c.actor == SCHEDULER_ACTOR, runs.c.peer.in_(sorted(peer_names)))).scalar()
    peers: dict[str, Any] = {}
    alerts: list[str] = []
    today = dicom_date(_dt.date.today())
    for peer in sorted(set(finished) | set(running)):
        row, done, live = finished.get(peer), completed.get(peer), running.get(peer)
        entry: dict[str, Any] = _run_summary(row, now) if row is not None else {"run_id": None, "state": RUNNING}
        entry["running"] = None
        if live is not None and (row is None or live.id > row.id):
            entry["running"] = {"run_id": live.id, "actor": live.actor, "started_at": live.started_at,
                                "age_seconds": round(now - live.started_at, 1), "date_from": live.date_from,
                                "date_to": live.date_to, "backfill": bool(live.backfill)}
        last_ok = _run_summary(done, now) if done is not None else None
        if row is not None and last_ok is not None and done.id != row.id:
            entry["last_completed"] = last_ok
        peers[peer] = entry
        if row is not None and row.error:
            alerts.append(f"reconcile with PACS {peer} ({_span(entry)}) failed {_ago(entry['age_seconds'])} ago: "
                          f"{row.error}")
        if last_ok is not None and last_ok["missing_in_vault"]:
            instances = last_ok["missing_instances"]
            what = f"{instances} instances" if isinstance(instances, int) else "instance count unknown"
            until = "" if last_ok["date_to"] >= today else f" --until {last_ok['date_to']}"
            alerts.append(
                f"PACS {peer} has {_plural(last_ok['missing_in_vault'], 'study', 'studies')} ({what}) from "
                f"{_span(last_ok)} not in the vault (reconciled {_ago(last_ok['age_seconds'])} ago); run "
                f"`dicomvault reconcile --pacs {peer} --since {last_ok['date_from']}{until} --backfill`")
    schedule = None
    if cfg.peer:
        period = cfg.period_seconds
        schedule = {"peer": cfg.peer, "every": cfg.every, "period_seconds": period, "window_days": cfg.window_days,
                    "backfill": cfg.backfill, "last_run_at": scheduled_last}
        if scheduled_last is not None and now - scheduled_last > 2 * period + 300:
            alerts.append(f"scheduled reconcile with PACS {cfg.peer} (every {cfg.every}) last ran "
                          f"{_ago(now - scheduled_last)} ago: is `dicomvault serve` running?")
    return {"peers": peers, "schedule": schedule, "alerts": alerts}


# --- the schedule inside `dicomvault serve` -----------------------------------------------


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
        self.last_report: ReconcileReport | None = None

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
        with self.catalog.read() as conn:
            last = conn.execute(select(func.max(t.reconcile_runs.c.started_at)).where(
                t.reconcile_runs.c.actor == SCHEDULER_ACTOR, t.reconcile_runs.c.peer == self.peer.name)).scalar()
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
        self.last_report = report
        if report.state == FAILED:
            log.warning("scheduled reconcile with %s failed: %s", self.peer.name, report.error)
        else:
            log.info("scheduled reconcile with %s (%s-%s): %d missing in the vault (%d instances), %d only in the "
                     "vault%s", self.peer.name, report.date_from, report.date_to, report.missing_in_vault,
                     report.missing_instances, report.missing_in_pacs,
                     f", {report.backfilled_instances} instances backfilled" if report.backfill else "")
        return report
